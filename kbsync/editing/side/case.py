"""CASE ("Conflict-assessed Knowledge-sensitive Neuron Tuning for Lifelong Model Editing",
WWW 2026), RECONSTRUCTED: no paper text, arXiv id or code could be found, only press
summaries (reportify.ai/social-media/788238674014682, eu.36kr.com/en/p/3740793549979651).
What is built here follows the two named parts and the reported budget (< 1 MB of extra
parameters after 1,000 edits); every detail below is our design.

Memory at one layer's MLP out-projection, made of subspaces. A subspace s is a set of FFN
neurons N_s with new output columns C_s (k_s, d_out): a token routed to s gets
out += x[N_s] C_s, i.e. those neurons write somewhere new, nothing else changes.

  routing: each edit keeps a sketch of its key (the layer's input at the subject's last
           token, projected to `sketch_dim` by a seeded Gaussian matrix, float16) and a
           radius covering its key under the context templates; a token within an edit's
           radius goes through that edit's subspace. Radii of keys with different answers
           are split as in GRACE.
  KNT:     the few neurons tuned for an edit are those with the largest diagonal Fisher
           information of its target NLL with respect to the out-projection's columns,
           F_j = Σ_rows x_j² ‖∂L/∂out‖² (one backward pass); `neurons_per_edit` are added
           to the edit's subspace.
  CAA:     the edit's gradient on a subspace's columns, G = Σ_rows x[N_s] ⊗ ∂L/∂out, is
           scored against the change the subspace already holds (its columns, minus the
           gradients of this batch's edits already placed there): cos(−G, ref) below
           −`conflict` is a conflict. The edit shares the most aligned compatible subspace
           with room (`capacity` edits), else opens a new one.
  tuning:  the touched subspaces' columns are trained (Adam, model frozen) on the new
           edits' target NLL plus an activation-preservation term: on the stored prompts
           of the subspace's earlier edits, the memory's output must stay what it was.
Columns are stored as int8 with a float32 scale per column (symmetric absmax), and what
is measured is the quantised memory."""

from __future__ import annotations

import torch

from kbsync.editing.side.base import SideEditor
from kbsync.editing.side.grace import label_of
from kbsync.editing.side.memory import SideMemory
from kbsync.editing.side.router import nearest_within
from kbsync.editing.side.train import build_rows, fit, layer_states, memory_off
from kbsync.lm.tokens import encode, render

PAD = -1


def sketch_matrix(seed: int, dim: int, d_in: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(dim, d_in, generator=gen) / dim ** 0.5).to(device)


def quantise(cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = cols.abs().amax(dim=1).clamp_min(1e-12) / 127
    return torch.round(cols / scale[:, None]).clamp(-127, 127).to(torch.int8), scale


class CaseMemory(SideMemory):
    """Per edit: keys (N, r) f16, radius, label, edit_subspace, prompt_ids (N, T) int32,
    key_pos. Per column: column_neuron, column_subspace, columns (K, d_out) int8,
    column_scale. sketch_seed: the seed of the sketch matrix."""
    kind = "case"

    def refresh(self):
        t = self.tensors
        self.cols = t["columns"].float() * t["column_scale"][:, None] if "columns" in t else None
        self._sketch = None

    def sketch(self, d_in: int, device) -> torch.Tensor:
        if self._sketch is None:
            t = self.tensors
            self._sketch = sketch_matrix(int(t["sketch_seed"]), t["keys"].shape[1], d_in, device)
        return self._sketch

    def route(self, x, out):
        t = self.tensors
        if self.cols is None:
            return out
        flat, flat_out = x.reshape(-1, x.shape[-1]), out.reshape(-1, out.shape[-1])
        q = flat @ self.sketch(flat.shape[1], flat.device).T
        hit, entry, _ = nearest_within(q, t["keys"].float(), t["radius"])
        if not bool(hit.any()):
            return out
        idx = hit.nonzero().flatten()
        sub = t["edit_subspace"][entry[idx]]
        coeff = flat[idx][:, t["column_neuron"].long()]
        coeff = coeff * (t["column_subspace"][None, :] == sub[:, None])
        changed = flat_out.clone()
        changed[idx] += coeff @ self.cols
        return changed.view_as(out)


class ColumnTable:
    """CASE's columns as one table: column c writes FFN neuron `neuron[c]` for subspace
    `sub[c]`; the first `n_old` are the memory's, their values (scaled back) in `old_values`."""

    def __init__(self, neuron: list[int], sub: list[int], old_values: torch.Tensor):
        self.neuron, self.sub, self.old_values, self.n_old = neuron, sub, old_values, len(neuron)

    @classmethod
    def from_memory(cls, t: dict, empty: torch.Tensor) -> ColumnTable:
        if "columns" not in t:
            return cls([], [], empty)
        return cls(t["column_neuron"].long().tolist(), t["column_subspace"].long().tolist(),
                   t["columns"].float() * t["column_scale"][:, None])

    def of(self, s: int) -> list[int]:
        return [c for c in range(len(self.neuron)) if self.sub[c] == s]

    def neurons_of(self, s: int) -> set[int]:
        return {self.neuron[c] for c, sub in enumerate(self.sub) if sub == s}

    def add(self, neuron: int, s: int) -> None:
        self.neuron.append(neuron)
        self.sub.append(s)

    def reference(self, s: int, members: list[int], keys, grads):
        """Subspace s's columns and their direction: stored values, less one descent step
        of each of this batch's edits already placed there."""
        cols_s = self.of(s)
        ref = torch.zeros(len(cols_s), grads.shape[-1], device=keys.device)
        old = [c for c in cols_s if c < self.n_old]
        if old:
            ref[: len(old)] = self.old_values[old]
        for m in members:
            ref -= keys[m][:, [self.neuron[c] for c in cols_s]].T @ grads[m]
        return cols_s, ref


def _training_plan(t: dict, table: ColumnTable, edit_sub: list[int], d_out: int, dev) -> dict:
    """The columns of the subspaces this batch touches (old values first, new ones zero),
    and the earlier edits of those subspaces (trained again beside the batch)."""
    touched = sorted(set(edit_sub))
    train_cols = [c for c in range(len(table.neuron)) if table.sub[c] in touched]
    cols = torch.zeros(len(train_cols), d_out, device=dev)
    old_part = [k for k, c in enumerate(train_cols) if c < table.n_old]
    if old_part:
        cols[old_part] = table.old_values[[train_cols[k] for k in old_part]]
    old_edits = []
    if "edit_subspace" in t:
        subs = t["edit_subspace"].long()
        old_edits = [e for e in range(len(subs)) if int(subs[e]) in touched]
    return {"cols": cols, "columns": train_cols, "n_old_cols": table.n_old,
            "neuron": torch.tensor([table.neuron[c] for c in train_cols], device=dev,
                                   dtype=torch.long),
            "col_sub": torch.tensor([table.sub[c] for c in train_cols], device=dev),
            "edit_sub": torch.tensor(edit_sub, device=dev),
            "touched_old_edits": old_edits,
            "old_sub": t["edit_subspace"].long()[old_edits].to(dev) if old_edits else None}


class CASE(SideEditor):
    name = kind = "case"

    def update(self, lm, specs, memory):
        x, t = self.x, memory.tensors
        first = "keys" not in t
        with memory_off(lm.model):
            rows = build_rows(lm, specs, self.contexts(lm), self.layer, key="subject")
            grads = self._key_gradients(rows)
            n, per = len(specs), rows.n_contexts
            keys_in = rows.key_inputs()                                  # (n·C, d_in)
            seed = self.hp.seed if first else int(t["sketch_seed"])
            sketch = sketch_matrix(seed, x["sketch_dim"], keys_in.shape[1], keys_in.device)
            q = keys_in @ sketch.T
            labels = torch.tensor([label_of(s.target) for s in specs], device=q.device)
            radius, old_radius = self._radii(q.view(n, per, -1), labels, t)
            fisher = (keys_in ** 2 * (grads ** 2).sum(1, keepdim=True)).view(n, per, -1).sum(1)
            plan = self._allocate(t, keys_in.view(n, per, -1), grads.view(n, per, -1), fisher)
            old_x = self._old_inputs(lm, t, plan["touched_old_edits"])

        cols = plan["cols"].clone().requires_grad_(True)
        neuron, col_sub = plan["neuron"], plan["col_sub"]
        req_sub = plan["edit_sub"].repeat_interleave(per)                 # per edit row
        a_rows = keys_in[:, neuron] * (col_sub[None, :] == req_sub[:, None])
        at = torch.arange(len(a_rows), device=cols.device)

        def side(_xs, out):
            return out.index_put((at, torch.zeros_like(at)), a_rows @ cols, accumulate=True)

        penalty = None
        if old_x is not None:
            a_old = old_x[:, neuron] * (col_sub[None, :] == plan["old_sub"][:, None])
            before = a_old @ plan["cols"]
            norm = before.pow(2).sum().clamp_min(1e-6)

            def preserve():
                return x["preserve"] * (a_old @ cols - before).pow(2).sum() / norm
            penalty = preserve
        self.last_stats = fit(rows, [cols], side, steps=self.hp.steps, lr=self.hp.lr,
                              penalty=penalty, settle=x.get("settle", 1))
        update = self._as_update(lm, specs, t, plan, cols.detach(), q[::per], radius,
                                 old_radius, labels)
        if first:
            update["put.sketch_seed"] = torch.tensor(seed)
        return update

    # -- pieces ------------------------------------------------------------------------
    def _key_gradients(self, rows) -> torch.Tensor:
        """∂(target NLL)/∂(memory output at the key token), per edit row: (n·C, d_out)."""
        probe = torch.zeros(rows.n_edit_rows, rows.out.shape[-1], device=rows.x.device,
                            requires_grad=True)
        at = torch.arange(rows.n_edit_rows, device=probe.device)
        hidden = rows.run(lambda _x, out: out.index_put((at, torch.zeros_like(at)), probe,
                                                        accumulate=True))
        nll, _ = rows.score(hidden)
        nll.sum().backward()
        return probe.grad.detach()

    def _radii(self, q, labels, t):
        """New edits' radii (covering their context keys), split against the nearest key
        with another answer; and the old radii after those splits."""
        bare = q[:, 0]
        spread = (q - bare[:, None]).norm(dim=-1).amax(dim=1)
        radius = torch.maximum(spread * self.x["radius_scale"],
                               self.x["radius_min"] * bare.norm(dim=-1))
        old_keys = t["keys"].float() if "keys" in t else bare.new_zeros(0, bare.shape[1])
        old_radius = t["radius"].clone() if "radius" in t else bare.new_zeros(0)
        old_labels = t["label"] if "label" in t else labels.new_zeros(0)
        keys = torch.cat([old_keys, bare])
        all_labels = torch.cat([old_labels, labels])
        n_old = len(old_keys)
        dist = torch.cdist(bare, keys)                                   # (n, N_old + n)
        dist[torch.arange(len(bare)), n_old + torch.arange(len(bare))] = float("inf")
        dist[labels[:, None] == all_labels[None, :]] = float("inf")      # same answer: fine
        near, nearest = dist.min(dim=1)
        for i in range(len(bare)):
            d, k = float(near[i]), int(nearest[i])
            if d == float("inf"):
                continue
            other = old_radius[k] if k < n_old else radius[k - n_old]
            if float(radius[i] + other) >= d:        # balls of different answers overlap
                radius[i] = min(float(radius[i]), d / 2)
                if k < n_old:
                    old_radius[k] = min(float(old_radius[k]), d / 2 - 1e-5)
                else:
                    radius[k - n_old] = min(float(radius[k - n_old]), d / 2)
        return radius, old_radius

    def _allocate(self, t, keys, grads, fisher) -> dict:
        """CAA + KNT: each edit's subspace and the columns to train. Old subspaces and
        their columns come from the memory; `cols` holds the touched ones' columns, then
        the new ones (zeros)."""
        table = ColumnTable.from_memory(t, keys.new_zeros(0, grads.shape[-1]))
        count = torch.bincount(t["edit_subspace"].long()).tolist() if "columns" in t else []
        placed: dict[int, list[int]] = {}        # subspace -> this batch's edits placed there
        edit_sub = []
        for i in range(len(keys)):
            best = self._compatible_subspace(i, table, count, placed, keys, grads)
            if best is None:                     # conflicts with all: a subspace of its own
                best = len(count)
                count.append(0)
            count[best] += 1
            placed.setdefault(best, []).append(i)
            edit_sub.append(best)
            self._add_sensitive_neurons(table, best, fisher[i])
        return _training_plan(t, table, edit_sub, grads.shape[-1], keys.device)

    def _compatible_subspace(self, i: int, table: ColumnTable, count: list[int],
                             placed: dict[int, list[int]], keys, grads) -> int | None:
        """CAA: the subspace with room whose columns' direction (their values, less the
        descent steps of this batch's edits already placed there) agrees best with edit i's
        gradient, if that agreement is above −conflict; None if none is."""
        best, best_cos = None, -self.x["conflict"]
        for s in range(len(count)):
            if count[s] >= self.x["capacity"]:
                continue
            cols_s, ref = table.reference(s, placed.get(s, []), keys, grads)
            g = keys[i][:, [table.neuron[c] for c in cols_s]].T @ grads[i]    # (k_s, d_out)
            if float(ref.norm()) == 0:
                cos = 0.0
            else:
                cos = float((-g * ref).sum() / (g.norm() * ref.norm()).clamp_min(1e-12))
            if cos >= best_cos:
                best, best_cos = s, cos
        return best

    def _add_sensitive_neurons(self, table: ColumnTable, s: int, fisher_i) -> None:
        """KNT: the edit's most sensitive neurons (by Fisher) the subspace lacks become
        new columns of it, `neurons_per_edit` of them."""
        have, added = table.neurons_of(s), 0
        for j in fisher_i.argsort(descending=True).tolist():
            if added == self.x["neurons_per_edit"]:
                break
            if j not in have:
                table.add(j, s)
                have.add(j)
                added += 1

    def _old_inputs(self, lm, t, edits: list[int]) -> torch.Tensor | None:
        """The layer's input at the key token of earlier edits, from their stored prompts."""
        if not edits:
            return None
        ids = t["prompt_ids"][edits].long()
        states = layer_states(lm, ids.clamp_min(0), (ids != PAD).long(), self.layer)
        rows = torch.arange(len(edits), device=states.device)
        return states[rows, t["key_pos"][edits].long().to(states.device)]

    def _as_update(self, lm, specs, t, plan, cols, bare_q, radius, old_radius, labels):
        x = self.x
        bare = [render("{}", s.prompt, s.subject) for s in specs]
        enc = encode(lm.tokenizer, [text for text, _ in bare], [span for _, span in bare])
        width = x["prompt_tokens"]
        ids = torch.full((len(specs), width), PAD, dtype=torch.int32)
        key_pos = torch.zeros(len(specs), dtype=torch.int32)
        for i in range(len(specs)):
            row = enc.input_ids[i, : int(enc.attention_mask[i].sum())][-width:]
            cut = int(enc.attention_mask[i].sum()) - len(row)
            ids[i, : len(row)] = row.to(torch.int32)
            key_pos[i] = max(int(enc.subject_pos[i]) - cut, 0)
        n_old_edits = len(t["keys"]) if "keys" in t else 0
        update = {"append.keys": bare_q.half(), "append.radius": radius.float(),
                  "append.label": labels, "append.prompt_ids": ids, "append.key_pos": key_pos,
                  "append.edit_subspace": plan["edit_sub"].to(torch.int32)}
        if n_old_edits:
            changed = torch.nonzero(old_radius != t["radius"]).flatten()
            if len(changed):
                update["set.radius"], update["index.radius"] = old_radius[changed], changed
        q, scale = quantise(cols)
        cols_idx = torch.tensor(plan["columns"], dtype=torch.long)
        old = cols_idx < plan["n_old_cols"]
        if bool(old.any()):
            update["set.columns"], update["index.columns"] = q[old], cols_idx[old]
            update["set.column_scale"], update["index.column_scale"] = scale[old], cols_idx[old]
        new = ~old
        update.update({"append.columns": q[new], "append.column_scale": scale[new],
                       "append.column_neuron": plan["neuron"][new].to(torch.int32),
                       "append.column_subspace": plan["col_sub"][new].to(torch.int32)})
        return update
