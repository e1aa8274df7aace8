"""The shared locate-then-edit loop (the contract every editor keeps:
kbsync/editing/contract.py).

Locate-then-edit editors (MEMIT, AlphaEdit, ...) share everything but `solve`: target
vectors at the top edited layer, then for each edited layer from the lowest up, the
keys and the residual still missing at the top layer are recomputed with the model as
edited so far (MEMIT's spread), and the editor's solve turns them into Δ = U Vᵀ.
"""

from __future__ import annotations

import torch

from kbsync.editing import regularize
from kbsync.editing.clock import PhaseClock
from kbsync.editing.contexts import context_templates
from kbsync.editing.hparams import HParams
from kbsync.editing.keys import keys_and_outputs
from kbsync.editing.memory import accumulate
from kbsync.editing.patch import WeightPatch, restore_layers, save_layers
from kbsync.editing.request import EditSpec
from kbsync.editing.stats import MomentCache
from kbsync.editing.targets import optimise_targets
from kbsync.errors import EditorError
from kbsync.lm import arch


class LocateThenEdit:
    name = "locate-then-edit"

    def __init__(self, hparams: HParams):
        self.hp = regularize.resolve(hparams)     # RECT/PRUNE defaults, if one is chosen
        self.state: dict[str, torch.Tensor] = {}
        self.last_stats: dict = {}
        self.clock = PhaseClock()
        self._moments = MomentCache()

    # -- what subclasses provide -------------------------------------------------------
    def solve(self, layer: int, keys: torch.Tensor, resid: torch.Tensor,
              cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """keys (d_in, n), resid (d_out, n), cov (d_in, d_in), all float64 -> (U, V)."""
        raise NotImplementedError

    def state_update(self, keys: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the patch carries for the editor's memory; `keys` are the batch's keys per
        edited layer (n, d_in) as the solves used them."""
        return {}

    def remember(self, patch: WeightPatch) -> None:
        """Fold an accepted patch's own state entries into the memory (default: add)."""
        for key, value in patch.state_update.items():
            accumulate(self.state, key, value.clone())

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
        z, anchored, anchor_stats = regularize.anchor_targets(hp, target, self.state)
        self.last_stats = {"target_steps": target.steps, "target_nll": target.nll.tolist(),
                           "target_tokens": target.tokens, **anchor_stats}
        patch = WeightPatch({})
        batch_keys: dict[int, torch.Tensor] = {}
        originals = save_layers(lm.model, layers)
        try:
            for i, layer in enumerate(layers):
                with clock.phase("keys", lm.device):
                    keys, current = keys_and_outputs(lm, specs, contexts, [layer],
                                                     hp.target_layer)
                batch_keys[layer] = keys[layer]
                resid = (z.to(current.device) - current) / (len(layers) - i)   # (n, d_out)
                # solved where the layer lives (each GPU of a device map), in float64:
                # λC + KKᵀ spans many orders of magnitude
                dev = arch.weight_of(lm.model, layer).device
                with clock.phase("solve", dev):
                    u, v = self.solve(layer, keys[layer].T.to(dev, torch.float64),
                                      resid.T.to(dev, torch.float64),
                                      covs[layer].to(dev, torch.float64))
                    # the one hook point of RECT/PRUNE, for every editor: u vᵀ as it is
                    # without a regulariser
                    step = regularize.step(self.hp, layer, u, v,
                                           arch.weight_of(lm.model, layer), self.state)
                if not step.is_finite():
                    raise EditorError(f"{self.name}: non-finite update at layer {layer}")
                step.apply(lm.model)
                patch.merge(step)
            patch.state_update.update(self.state_update(batch_keys))
            patch.state_update.update(anchored)
        finally:   # bit for bit: W + Δ - Δ is only W up to rounding
            restore_layers(lm.model, originals)
        return patch

    def accept(self, patch: WeightPatch) -> None:
        # the regulariser's entries are folded here, for every editor; its own memory
        # (remember) never sees them
        self.remember(regularize.fold(self.state, patch))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.state)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.clone() for k, v in state.items()}

