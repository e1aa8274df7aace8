"""UltraEdit (arXiv 2505.14679): a closed-form lifelong editor from gradient features.

Per turn, for each edited MLP out-projection (editing/gradients.py gives K, G):

    [K̂, Ĝ] = standardise([K, G])       lifelong moments, this turn's rows included
    V       = −η ‖k̂ᵢ‖² ĝᵢ               one desired output change per supervised token
    Δ       = Vᵀ (K Kᵀ + λ I)⁻¹ K         ridge fit of V from the raw keys (dual form)

No target optimisation and no subject: a fact given as a free prompt edits as well. The
only memory is the running moments (editing/moments.py, `MomentsMemory`), carried whole in
each patch's state update, so the newest patch on a chain restores it exactly.
Options: StableEdit's whitening of the gradient half (arXiv 2605.11836, `whiten: true`)
and its warm-up, here of the statistics only (`warmup: N`): before the first turn the
moments take the features of N true facts the model already knows (kbsync/data/
knowns.json, ROME's known_1000), so no fact is written, and a first turn of one fact is
not standardised by its own single row (which makes every value zero). `iterations: k`
takes k gradient steps per turn, each from where the previous one left the model;
`positions` where the features are read (editing/gradients.py); `preserve: true` adds
MEMIT's λC prior to the ridge. Hyperparameters in hparams/ultraedit.yaml.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kbsync.editing.clock import PhaseClock
from kbsync.editing.gradients import gradient_features
from kbsync.editing.hparams import HParams
from kbsync.editing.moments import RunningMoments
from kbsync.editing.patch import WeightPatch, restore_layers, save_layers
from kbsync.editing.request import EditSpec
from kbsync.editing.state import EditorState, Tensors
from kbsync.editing.stats import MomentCache
from kbsync.errors import EditorError
from kbsync.lm import arch


KNOWNS = Path(__file__).resolve().parents[1] / "data" / "knowns.json"


def known_facts(n: int) -> list[EditSpec]:
    """The first n true facts of kbsync/data/knowns.json as edit requests."""
    rows = json.loads(KNOWNS.read_text(encoding="utf-8"))[:n]
    return [EditSpec(r["prompt"].replace(r["subject"], "{subject}", 1), r["subject"], r["target"])
            for r in rows]


def pseudo_values(standardised: torch.Tensor, d_in: int, eta: float) -> torch.Tensor:
    """(N, d_in + d_out) standardised [k̂, ĝ] -> (N, d_out) values −η ‖k̂‖² ĝ."""
    k_hat, g_hat = standardised[:, :d_in], standardised[:, d_in:]
    return -eta * (k_hat ** 2).sum(1, keepdim=True) * g_hat


def ridge_factors(keys: torch.Tensor, values: torch.Tensor,
                  ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """keys (N, d_in), values (N, d_out), float64 -> U (d_out, N), V (d_in, N) with
    U Vᵀ = Vᵀ(KKᵀ + λI)⁻¹K = ((KᵀK + λI)⁻¹KᵀV)ᵀ: the N×N system, N ≤ d_in here."""
    gram = keys @ keys.T + ridge * torch.eye(keys.shape[0], dtype=keys.dtype, device=keys.device)
    return values.T, torch.linalg.solve(gram, keys).T


def prior_factors(keys: torch.Tensor, values: torch.Tensor, prior: torch.Tensor,
                  ridge: float) -> tuple[torch.Tensor, torch.Tensor]:
    """As ridge_factors with a preservation prior P (d_in, d_in), MEMIT's λC:
    Δ = VᵀK(KᵀK + P + λI)⁻¹, the least change that also keeps outputs on P's keys."""
    d_in = keys.shape[1]
    system = keys.T @ keys + prior + ridge * torch.eye(d_in, dtype=keys.dtype, device=keys.device)
    return values.T, torch.linalg.solve(system, keys.T)


@dataclass
class MomentsMemory(EditorState):
    """UltraEdit's lifelong moments per layer; each patch carries them whole
    after its turn, so folding replaces."""

    TAG = "moments"
    moments: dict[int, RunningMoments] = field(default_factory=dict)

    def fold(self, patch) -> None:
        self.moments.update(self.from_entries(patch.state_update).moments)

    def entries(self) -> Tensors:
        out: Tensors = {}
        for layer, m in sorted(self.moments.items()):
            out.update(m.to_tensors(f"moments.{layer}."))
        return out

    @classmethod
    def from_entries(cls, tensors: Tensors) -> "MomentsMemory":
        layers = {int(n.split(".")[1]) for n in tensors
                  if n.startswith("moments.") and n.endswith(".n")}
        return cls({l: RunningMoments.from_tensors(tensors, f"moments.{l}.") for l in sorted(layers)})


class UltraEdit:
    name = "ultraedit"
    needs_subject = False
    # a turn standardises its rows with the lifelong moments: small turns are noisy, and
    # the 10,000-edit stream (benchmarks/RESULTS.md) was measured in turns of 100
    default_batch_size = 100

    def __init__(self, hparams: HParams):
        self.hp = hparams
        x = hparams.extra
        self.eta = float(x.get("eta", 1e-6))
        self.ridge = float(x.get("ridge", 1.0))
        self.whiten = bool(x.get("whiten", False))
        self.chunk = int(x.get("chunk", 16))
        self.iterations = int(x.get("iterations", 1))
        self.positions = str(x.get("positions", "answer"))
        self.preserve = bool(x.get("preserve", False))
        self.warmup = int(x.get("warmup", 0))
        self.stop_solved = bool(x.get("stop_solved", False))
        self._stats = MomentCache()
        self._warm: dict[int, RunningMoments] | None = None   # _initial_moments, once
        if self.eta <= 0 or self.ridge <= 0:
            raise EditorError(f"ultraedit needs eta > 0 and ridge > 0, got {self.eta}, {self.ridge}")
        self.memory = MomentsMemory()
        self.last_stats: dict = {}
        self.clock = PhaseClock()

    @property
    def weight_layers(self) -> list[int]:
        return sorted(self.hp.layers)

    def solve_flops(self, d_in: int, n: int) -> float:
        """float64 FLOPs per layer: KKᵀ, the LU of the n×n system, n right-hand sides of
        width d_in."""
        return 2 * n * n * d_in + 2 / 3 * n ** 3 + 2 * n * n * d_in

    def _initial_moments(self, lm) -> dict[int, RunningMoments]:
        """The moments before the first turn: empty, or warmed up on known facts (computed
        once per editor; the first patch then carries them like any later moments)."""
        if self._warm is None:
            empty = {l: RunningMoments.empty(sum(arch.dims(lm.model, l)),
                                             arch.dims(lm.model, l)[0] if self.whiten else 0)
                     for l in self.weight_layers}
            if self.warmup:
                feats = gradient_features(lm, known_facts(self.warmup), self.weight_layers,
                                          self.chunk, self.positions)
                empty = {l: m.merged(torch.cat([feats.keys[l], feats.grads[l]], 1))
                         for l, m in empty.items()}
            self._warm = empty
        return self._warm

    def covariances(self, lm) -> dict[int, torch.Tensor]:
        """C per layer when the solve keeps a preservation prior (`preserve: true`)."""
        return self._stats.get(lm, self.hp) if self.preserve else {}

    def edit(self, lm, specs: list[EditSpec]) -> WeightPatch:
        if not specs:
            return WeightPatch.empty()
        layers = self.weight_layers
        with self.clock.phase("stats", lm.device):
            covs = self.covariances(lm)
        if any(l not in self.memory.moments for l in layers):
            with self.clock.phase("stats", lm.device):
                initial = self._initial_moments(lm)
        moments = {l: self.memory.moments.get(l) or initial[l] for l in layers}
        parts: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {l: [] for l in layers}
        originals = save_layers(lm.model, layers)
        tokens = fed = 0
        try:
            # each iteration takes the gradient where the previous one left the model
            for _ in range(self.iterations):
                with self.clock.phase("targets", lm.device):
                    feats = gradient_features(lm, specs, layers, self.chunk, self.positions)
                tokens, fed = tokens + feats.tokens, fed + feats.sequence_tokens
                keep = self._rows_to_solve(feats)
                if not bool(keep.any()):
                    break
                for layer in layers:
                    weight = arch.weight_of(lm.model, layer)
                    with self.clock.phase("solve", weight.device):
                        rows = torch.cat([feats.keys[layer], feats.grads[layer]], 1)[keep]
                        moments[layer] = moments[layer].merged(rows)
                        values = pseudo_values(moments[layer].standardise(rows),
                                               rows.shape[1] - weight.shape[0], self.eta)
                        u, v = self._solve(feats.keys[layer][keep].to(weight.device,
                                                                      torch.float64),
                                           values.to(weight.device), covs.get(layer))
                    parts[layer].append((u.float(), v.float()))
                    with torch.no_grad():
                        weight.add_((u @ v.T).to(weight.dtype))
        finally:   # the model as it was, bit for bit
            restore_layers(lm.model, originals)
        patch = WeightPatch({l: (torch.cat([u for u, _ in parts[l]], 1),
                                 torch.cat([v for _, v in parts[l]], 1))
                             for l in layers if parts[l]})
        for layer in layers:
            patch.state_update.update(moments[layer].to_tensors(f"moments.{layer}."))
        if not patch.is_finite():
            raise EditorError(f"{self.name}: non-finite update")
        self.last_stats = {"target_steps": self.iterations,
                           "target_nll": [feats.loss / max(feats.tokens, 1)],
                           "target_tokens": {"prefix": 0, "suffix": fed, "target": tokens,
                                             "rewrite_prompts": fed},
                           "rows": tokens}
        return patch

    def _rows_to_solve(self, feats) -> torch.Tensor:
        """Every row, or with `stop_solved` only those of requests whose target is not yet
        top-1: a standardised gradient has unit scale even when the loss is already
        near zero, so a further step on a solved request overshoots (ENCORE's
        most-probable early stopping, arXiv 2502.01636, applied per iteration)."""
        if not self.stop_solved:
            return torch.ones(len(feats.owner), dtype=torch.bool)
        solved = torch.tensor(feats.solved)
        return ~solved[feats.owner]

    def _solve(self, keys: torch.Tensor, values: torch.Tensor,
               cov: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if cov is None:
            return ridge_factors(keys, values, self.ridge)
        prior = self.hp.mom2_weight * cov.to(keys.device, torch.float64)
        return prior_factors(keys, values, prior, self.ridge)

    def accept(self, patch: WeightPatch) -> None:
        self.memory.fold(patch)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.memory.to_tensors()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.memory = MomentsMemory.from_tensors(state)
