"""The shared locate-then-edit loop (the contract every editor keeps:
kbsync/editing/contract.py).

Locate-then-edit editors (MEMIT, AlphaEdit, ...) share everything but `solve`: target
vectors at the top edited layer, then for each edited layer from the lowest up, the
keys and the residual still missing at the top layer are recomputed with the model as
edited so far (MEMIT's spread), and the editor's solve turns them into Δ = U Vᵀ.

An editor's memory is a typed object (kbsync/editing/state.py), `memory_class`: `accept`
folds a patch into it, beside the regulariser's (regularize.py), and `state_dict` is both
under their stable names. A solve returns a `Solution`: the factors and whatever this
layer's step adds to the memory (LyapLock's queue, ...), which the patch carries under
`<name>.<layer>` with what the memory keeps of the layer's keys (`keys_update`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from kbsync.editing import regularize
from kbsync.editing.clock import PhaseClock
from kbsync.editing.contexts import context_templates
from kbsync.editing.hparams import HParams
from kbsync.editing.keys import keys_and_outputs
from kbsync.editing.patch import WeightPatch, restore_layers, save_layers
from kbsync.editing.request import EditSpec
from kbsync.editing.state import EditorState, NoMemory
from kbsync.editing.stats import MomentCache
from kbsync.editing.targets import optimise_targets
from kbsync.errors import EditorError
from kbsync.lm import arch


@dataclass(frozen=True)
class Solution:
    """One layer's solve: Δ = u vᵀ (float64), and what it adds to the editor's memory,
    by name without the layer (the patch appends it)."""

    u: torch.Tensor
    v: torch.Tensor
    adds: dict[str, torch.Tensor] = field(default_factory=dict)


class LocateThenEdit:
    name = "locate-then-edit"
    memory_class: type[EditorState] = NoMemory
    default_batch_size = 10

    def __init__(self, hparams: HParams):
        self.hp = regularize.resolve(hparams)     # RECT/PRUNE defaults, if one is chosen
        self.memory = self.memory_class()
        self.regularizer = regularize.RegularizerMemory()
        self.last_stats: dict = {}
        self.clock = PhaseClock()
        self._moments = MomentCache()

    # -- what subclasses provide -------------------------------------------------------
    def solve(self, layer: int, keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor,
              *, preserve: float | None = None, batch: Any = None) -> Solution:
        """keys (d_in, n), resid (d_out, n), cov (d_in, d_in), all float64. `preserve`
        replaces the preservation weight for this call (LyapLock's wrappers); `batch` is
        what `prepare` returned for this batch."""
        raise NotImplementedError

    def prepare(self, lm, specs: list[EditSpec], contexts: list[str]) -> Any:
        """Per-batch inputs of the solves, read from the unedited model (NMKE's masks)."""
        return None

    def solve_flops(self, d_in: int, n: int) -> float:
        """float64 FLOPs of one layer's solve (for `bench speed`'s floor): forming λC + KKᵀ,
        then an LU solve with n right-hand sides."""
        return 2 * d_in * d_in * n + 2 / 3 * d_in ** 3 + 2 * d_in * d_in * n

    # -- shared machinery ---------------------------------------------------------------
    @property
    def weight_layers(self) -> list[int]:
        """The layers whose MLP out-projection this editor changes."""
        return sorted(self.hp.layers)

    def covariances(self, lm) -> dict[int, torch.Tensor]:
        """C per edited layer, read once per model (not once per batch)."""
        return self._moments.get(lm, self.hp)

    def edit(self, lm, specs: list[EditSpec]) -> WeightPatch:
        if not specs:
            return WeightPatch.empty()
        hp, layers, clock = self.hp, sorted(self.hp.layers), self.clock
        with clock.phase("stats", lm.device):
            covs = self.covariances(lm)
        contexts = context_templates(lm, hp.contexts, hp.context_length, hp.seed)
        with clock.phase("targets", lm.device):
            target = optimise_targets(lm, specs, contexts, hp.target_params())
        z, anchored, anchor_stats = regularize.anchor_targets(hp, target, self.regularizer)
        self.last_stats = {"target_steps": target.steps, "target_nll": target.nll.tolist(),
                           "target_tokens": target.tokens, **anchor_stats}
        batch = self.prepare(lm, specs, contexts)
        patch = WeightPatch({})
        originals = save_layers(lm.model, layers)
        try:
            for i, layer in enumerate(layers):
                with clock.phase("keys", lm.device):
                    keys, current = keys_and_outputs(lm, specs, contexts, [layer],
                                                     hp.target_layer)
                resid = (z.to(current.device) - current) / (len(layers) - i)   # (n, d_out)
                # solved where the layer lives (each GPU of a device map), in float64:
                # λC + KKᵀ spans many orders of magnitude
                dev = arch.weight_of(lm.model, layer).device
                with clock.phase("solve", dev):
                    solution = self.solved(layer, keys[layer].T.to(dev, torch.float64),
                                           resid.T.to(dev, torch.float64),
                                           covs[layer].to(dev, torch.float64), batch=batch)
                    # the one hook point of RECT/PRUNE, for every editor: u vᵀ as it is
                    # without a regulariser
                    step = regularize.step(self.hp, layer, solution.u, solution.v,
                                           arch.weight_of(lm.model, layer), self.regularizer)
                if not step.is_finite():
                    raise EditorError(f"{self.name}: non-finite update at layer {layer}")
                step.apply(lm.model)
                patch.merge(step)
                patch.state_update.update({f"{name}.{layer}": t
                                           for name, t in solution.adds.items()})
            patch.state_update.update(anchored)
        finally:   # bit for bit: W + Δ - Δ is only W up to rounding
            restore_layers(lm.model, originals)
        return patch

    def solved(self, layer: int, keys: torch.Tensor, resid: torch.Tensor, cov: torch.Tensor,
               **options) -> Solution:
        """The solve, with what the memory keeps of this layer's keys added."""
        solution = self.solve(layer, keys, resid, cov, **options)
        kept = self.memory.keys_update(keys)
        return Solution(solution.u, solution.v, {**kept, **solution.adds}) if kept else solution

    def accept(self, patch: WeightPatch) -> None:
        # each memory folds only the names it owns (kbsync/editing/state.py)
        self.regularizer.fold(patch)
        self.memory.fold(patch)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**self.regularizer.to_tensors(), **self.memory.to_tensors()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.regularizer = regularize.RegularizerMemory.from_tensors(state)
        self.memory = self.memory_class.from_tensors(state)

