"""WISE (Wang et al., NeurIPS 2024, arXiv 2405.14768): a side copy of one layer's MLP
out-projection W, W' = W + Δ, used for a token only when the router says so.

  route: a token uses W' where its activation score ‖x Δᵀ‖ exceeds ε, with
         ε = act_ratio × the lowest score any edit's key token had when it was made.
  edit:  Δ is trained (Adam, the model frozen) on the target NLL with WISE's margins:
         [β − score(edit key token)]₊ + [score(unrelated tokens) − α]₊
         + [γ − (score(edit) − score(unrelated))]₊.
         Unrelated rows are drawn from a fixed general-text set shipped with kbsync, so no
         user-supplied unrelated prompt is needed, and a whole batch trains at once (the
         reference refuses batches).
  shards: the edits of a shard change only a random share ρ of Δ's entries (its mask, from
         a seed); after `save_freq` edits the shard is closed and either TIES-merged (trim
         to `density`, elect signs, disjoint mean) with the earlier shards' merge
         (WISE-Merge), or, with `retrieve`, kept as a memory of its own with its own ε
         (WISE-Retrieve): a token goes through the memory it activates most among those it
         activates beyond their ε. A new shard's training then also keeps the closed
         memories' keys below α and its own keys γ above what the closed memories give them.

Added by kbsync (the reference has no such term, and it is what keeps earlier batches'
edits when a batch trains the same Δ): a preservation penalty `preserve` ×
‖K_old (Δ − Δ_before)ᵀ‖² / ‖K_old Δ_beforeᵀ‖² on the stored key inputs of earlier edits.
Training routes as storage will: the key token always, other tokens where their score
exceeds the current ε (`route: key`: the key token only). `general_alpha` (off by
default) adds a margin on the RMS side output over the statistics corpus, tr(ΔCΔᵀ)^½ ≤ A:
the 40 sampled texts alone leave general text scoring near the edits' keys (RESULTS.md).

kbsync's defaults (RESULTS.md, issue 8): the key is the subject's last token at an
early layer (the reference keys on the prompt's last token at a late layer), and shards
are small and kept apart (Retrieve). One linear map cannot separate many prompt-end keys
from general text at a small model's late layer: zsRE's (the question mark) are alike
(mean cosine 0.77 at the default model's layer 20), and even the least-energy Δ that gives
100 of them a side output of norm 50 gives general text a median score of 37 (for 10: 5).

The memory holds the merge of closed shards (dense, once there is one) or the closed
shards' values (Retrieve), the open shard's values at its mask positions and the edits'
key inputs; a patch holds the open shard's values (ρ·d_out·d_in floats), the batch's keys
and, when a shard closes, the new merge or the closed shard."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch

from kbsync.editing.side.base import SideEditor
from kbsync.editing.side.memory import SideMemory
from kbsync.editing.side.train import build_rows, fit, layer_inputs, memory_off
from kbsync.editing.stats import MomentCache
from kbsync.lm.tokens import render
from kbsync.lm import arch

UNRELATED = Path(__file__).resolve().parents[2] / "data" / "unrelated.txt"


def shard_mask(shape, seed: int, shard: int, ratio: float, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + shard)
    return (torch.rand(shape, generator=gen) < ratio).to(device)


def ties_merge(deltas: list[torch.Tensor], density: float) -> torch.Tensor:
    """TIES: keep each delta's top `density` entries by magnitude, elect each entry's sign
    by the sum, average the kept entries that agree with it."""
    trimmed = []
    for d in deltas:
        k = max(1, int(density * d.numel()))
        cut = d.abs().flatten().kthvalue(d.numel() - k + 1).values
        trimmed.append(torch.where(d.abs() >= cut, d, torch.zeros_like(d)))
    stack = torch.stack(trimmed)
    sign = torch.sign(stack.sum(0))
    agree = (torch.sign(stack) == sign) & (stack != 0)
    return (stack * agree).sum(0) / agree.sum(0).clamp_min(1)


class WiseMemory(SideMemory):
    """merged (d_out, d_in) [optional], shard (m,), shape/seed/shard_id/ratio (int64 and
    float scalars), min_score, act_ratio; with `retrieve`, the closed shards kept apart:
    bank (their values at their masks, concatenated), bank_shard (S,) and bank_min_score
    (S,)."""
    kind = "wise"

    def __init__(self, layer: int, tensors: dict[str, torch.Tensor] | None = None):
        self._built: dict[tuple, tuple] = {}     # closed shard -> (mask, values, Δ)
        super().__init__(layer, tensors)         # which refreshes, so _built comes first

    def refresh(self):
        t, self.delta, self.memories = self.tensors, None, []
        if "shard" not in t:
            return
        shape, act_ratio = tuple(int(v) for v in t["shape"]), float(t["act_ratio"])
        self.memories = [(delta, act_ratio * float(low)) for delta, low in self._closed()]
        delta = t["merged"].clone() if "merged" in t else torch.zeros(shape, device=t["shard"].device)
        delta[self.mask_of(int(t["shard_id"]))] += t["shard"]
        self.delta = delta
        self.memories.append((delta, act_ratio * float(t["min_score"])))

    def _closed(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(Δ, lowest key score) of each closed shard (Retrieve). A closed shard never
        changes, so its mask and dense Δ are built once, not after every batch's update (a
        restored memory whose shard holds other values gets its Δ built afresh)."""
        t, out, start = self.tensors, [], 0
        for shard, low in zip(t.get("bank_shard", []), t.get("bank_min_score", [])):
            key = (int(shard), int(t["seed"]), float(t["ratio"]), tuple(t["shape"].tolist()),
                   str(t["bank"].device))
            mask = self._built[key][0] if key in self._built else self.mask_of(int(shard))
            size = int(mask.sum())
            values = t["bank"][start: start + size]
            if key not in self._built or not torch.equal(self._built[key][1], values):
                delta = torch.zeros(mask.shape, device=values.device)
                delta[mask] = values
                self._built[key] = (mask, values, delta)
            out.append((self._built[key][2], low))
            start += size
        return out

    def mask_of(self, shard: int) -> torch.Tensor:
        t = self.tensors
        return shard_mask(tuple(int(v) for v in t["shape"]), int(t["seed"]), shard,
                          float(t["ratio"]), t["shard"].device)

    def route(self, x, out):
        """Each token goes through the memory it activates most among those it activates
        beyond their own threshold (WISE-Retrieve; one memory: WISE-Merge)."""
        return out + self.best(x)[0] if self.memories else out

    def best(self, x, upto: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(side output, score) of the memory each token goes through, among the first
        `upto` memories (all: None); zeros where it passes none's threshold. Needs a memory."""
        best_side = x.new_zeros(x.shape[:-1] + (self.memories[0][0].shape[0],))
        best_score = x.new_zeros(x.shape[:-1] + (1,))
        for delta, threshold in self.memories[:upto]:
            side = x @ delta.T
            score = side.norm(dim=-1, keepdim=True)
            better = (score > threshold) & (score > best_score)
            best_side = torch.where(better, side, best_side)
            best_score = torch.where(better, score, best_score)
        return best_side, best_score


class ShardObjective:
    """One batch's training problem for the open shard: Δ = base + the trained `values` at
    the shard's mask. `side` routes as storage will (tokens scoring above ε; the key tokens
    always, or only them with `route: key`); `margins` are WISE's, plus kbsync's general
    and closed-memory terms; each step's Δ and key scores are computed once in `side` and
    read by the margins and the penalty."""

    def __init__(self, x: dict, values, base, where, rows, other, old_low: float, *,
                 closed_keys=None, key_only: bool = False):
        self.x, self.values, self.base, self.where = x, values, base, where
        self.rows, self.other, self.old_low = rows, other, old_low
        self.closed_keys, self.key_only = closed_keys, key_only
        self.keys = rows.key_inputs()
        n_edit = rows.n_edit_rows
        self.key_tok = torch.zeros(rows.x.shape[:2] + (1,), dtype=torch.bool, device=base.device)
        self.key_tok[:n_edit, 0] = True
        # what the closed memories give a token (see rival_of); zero without them
        self.kept, self.rival, self.cov = torch.zeros_like(rows.out), None, None
        self.step: dict = {}

    def rival_of(self, memory, closed: int) -> None:
        # The suffix's input does not depend on Δ, so what the closed memories give it is
        # fixed: routed once here, not through every memory at every step (their number
        # grows with the edits); a token the new memory takes gets its side output instead.
        # Their score at the new keys is what the new memory must beat to keep them.
        with torch.no_grad():
            self.kept, score = memory.best(self.rows.x, upto=closed)
        self.rival = score[:self.rows.n_edit_rows, 0, 0]

    def delta(self) -> torch.Tensor:
        return self.base.index_put(self.where, self.values, accumulate=True)

    def side(self, xs, out):
        # routed as it will be once stored: tokens scoring above ε (the key tokens
        # always do; ε is at most act_ratio × their lowest score)
        d = self.step["delta"] = self.delta()
        key = self.step["key"] = (self.keys @ d.T).norm(dim=-1)
        s = xs @ d.T
        if self.key_only:
            return out + torch.where(self.key_tok, s, self.kept)
        with torch.no_grad():
            eps = self.x["act_ratio"] * min(self.old_low, float(key.min()))
            use = ((s.norm(dim=-1, keepdim=True) > eps) & self.rows.valid) | self.key_tok
        return out + torch.where(use, s, self.kept)

    def margins(self):
        x, d, key = self.x, self.step["delta"], self.step["key"]
        unrelated = (self.other @ d.T).norm(dim=-1)
        out = (torch.relu(x["beta"] - key).mean() + torch.relu(unrelated - x["alpha"]).mean()
               + torch.relu(x["gamma"] - (key.mean() - unrelated.mean())))
        if self.cov is not None:     # RMS side output over all of the statistics' text
            out = out + torch.relu(((d @ self.cov) * d).sum().clamp_min(1e-12).sqrt()
                                   - x["general_alpha"])
        if self.closed_keys is not None:      # leave the closed memories' keys to them
            out = out + torch.relu((self.closed_keys @ d.T).norm(dim=-1) - x["alpha"]).mean()
        if self.rival is not None:            # beat the closed memories where they claim a key
            out = out + (torch.relu(self.rival + x["gamma"] - key) * (self.rival > 0)).mean()
        return out

    def preserving(self, old_keys):
        """The penalty keeping earlier edits' key tokens at their side output (kbsync's
        term, module doc), measured against Δ before this batch's training."""
        before = old_keys @ self.delta().detach().T
        scale = before.pow(2).sum().clamp_min(1e-6)
        weight = self.x["preserve"]

        def preserve():
            return weight * (old_keys @ self.step["delta"].T - before).pow(2).sum() / scale
        return preserve

    def clamp(self) -> None:
        self.values.clamp_(-self.x["norm_constraint"], self.x["norm_constraint"])


class WISE(SideEditor):
    name = kind = "wise"

    def __init__(self, hparams):
        super().__init__(hparams)
        self._moments = MomentCache()

    def covariances(self, lm) -> dict:
        """With `general_alpha`: E[x xᵀ] of the memory layer's input over the statistics
        corpus (E‖Δx‖² = tr(Δ C Δᵀ), the mean squared side output on general text)."""
        return self._moments.get(lm, self.hp) if self.x.get("general_alpha") is not None else {}

    def update(self, lm, specs, memory):
        """Train the open shard on the batch (named steps below), then store it."""
        x, t = self.x, memory.tensors
        weight = arch.weight_of(lm.model, self.layer)
        update = self._first_put(weight) if "shard" not in t else {}
        shard_id, in_shard, start, merged, old_low = self._open_shard(t, memory, len(specs), update)
        device = weight.device
        mask = shard_mask(tuple(weight.shape), self.hp.seed, shard_id, x["mask_ratio"], device)
        values = (start if start is not None else torch.zeros(int(mask.sum()), device=device))
        base = merged.to(device) if merged is not None else torch.zeros(weight.shape, device=device)
        closed, old_keys, closed_keys = self._scope(t, memory, in_shard)
        rows, other = self._rows(lm, specs)
        goal = ShardObjective(x, values.clone().requires_grad_(True), base,
                              mask.nonzero(as_tuple=True), rows, other, old_low,
                              closed_keys=closed_keys, key_only=x.get("route") == "key")
        if closed:
            goal.rival_of(memory, closed)
        goal.cov = (self.covariances(lm)[self.layer].float().to(device)
                    if x.get("general_alpha") is not None else None)
        penalty = goal.preserving(old_keys) if old_keys is not None and x["preserve"] > 0 else None
        with memory_off(lm.model):
            self.last_stats = fit(rows, [goal.values], goal.side, steps=self.hp.steps,
                                  lr=self.hp.lr, margin=goal.margins, penalty=penalty,
                                  after_step=goal.clamp, optimizer=x.get("optimizer", "adam"))
        with torch.no_grad():
            low = min(old_low, float((goal.keys @ goal.delta().T).norm(dim=-1).min()))
        update.update({"append.keys": goal.keys[:: rows.n_contexts].detach(),
                       "put.shard": goal.values.detach(), "put.min_score": torch.tensor(low),
                       "put.shard_edits": torch.tensor(in_shard + len(specs))})
        return update

    def _first_put(self, weight) -> dict[str, torch.Tensor]:
        """The memory's constants, put by its first patch."""
        x = self.x
        return {"put.shape": torch.tensor(weight.shape), "put.seed": torch.tensor(self.hp.seed),
                "put.ratio": torch.tensor(x["mask_ratio"]), "put.shard_id": torch.tensor(0),
                "put.shard_edits": torch.tensor(0), "put.act_ratio": torch.tensor(x["act_ratio"]),
                "put.min_score": torch.tensor(float("inf"))}

    def _scope(self, t, memory, in_shard: int):
        """With retrieve: how many closed memories there are (the memories other than the
        open shard's; a shard closed just now is one of them), and the stored keys split
        into the open shard's (its last `in_shard`) and the closed memories' (out of this
        shard's scope: the new keys must score above what those memories give them)."""
        retrieve = bool(self.x.get("retrieve", False))
        closed = len(memory.memories) - (in_shard > 0) if retrieve else 0
        old_keys, closed_keys = t.get("keys"), None
        if retrieve and old_keys is not None:
            split = len(old_keys) - in_shard
            closed_keys = old_keys[:split] if split else None
            old_keys = old_keys[split:] if in_shard else None
        return closed, old_keys, closed_keys

    def _rows(self, lm, specs):
        """The batch's training rows, and the out-of-scope inputs: unrelated texts and the
        edit prompts' own tokens before the key (routed there, they would change what the
        key token reads)."""
        x = self.x
        with memory_off(lm.model):
            key_at = x.get("key", "prompt")
            rows = build_rows(lm, specs, self.contexts(lm), self.layer, key=key_at)
            upto_key = [s.text if key_at == "prompt" else s.text[: render("{}", s.prompt, s.subject)[1][1]]
                        for s in specs]
            other = torch.cat([
                layer_inputs(lm, self.rng.sample(unrelated_texts(), x["unrelated"]), self.layer),
                layer_inputs(lm, upto_key, self.layer, but_last=True)])
        if x.get("route") == "key":     # the edit rows' later tokens join the out-of-scope set
            n_edit = rows.n_edit_rows
            other = torch.cat([other, rows.x[:n_edit, 1:][rows.valid[:n_edit, 1:, 0]]])
        return rows, other

    def _open_shard(self, t, memory, n_new: int, update: dict):
        """The shard this batch trains: the open one, or a new one once `save_freq` would be
        passed (the closed one kept apart with Retrieve, TIES-merged without). Returns its
        id, edits so far, values so far (None: new), the merge and its lowest key score."""
        if "shard" not in t:
            return 0, 0, None, None, float("inf")
        shard_id, in_shard, merged = int(t["shard_id"]), int(t["shard_edits"]), t.get("merged")
        if in_shard + n_new <= self.x["save_freq"]:
            return shard_id, in_shard, t["shard"].clone(), merged, float(t["min_score"])
        if self.x.get("retrieve", False):
            update.update({"append.bank": t["shard"], "append.bank_shard": t["shard_id"][None],
                           "append.bank_min_score": t["min_score"][None],
                           "put.min_score": torch.tensor(float("inf"))})
            low = float("inf")
        else:
            closed = memory.delta.clone()
            merged = closed if merged is None else ties_merge([merged, closed - merged], self.x["density"])
            update["put.merged"], low = merged, float(t["min_score"])
        update.update({"put.shard_id": torch.tensor(shard_id + 1), "put.shard_edits": torch.tensor(0)})
        return shard_id + 1, 0, None, merged, low


@cache
def unrelated_texts() -> tuple[str, ...]:
    """The shipped general-text set, read once per process (it is sampled every batch)."""
    return tuple(line.strip() for line in UNRELATED.read_text().splitlines() if line.strip())
