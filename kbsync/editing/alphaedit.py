"""AlphaEdit (Fang et al. ICLR 2025): MEMIT's update projected onto the null space of the
preserved keys, with the keys of earlier edits held fixed:

    Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹

solved as X = (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹ P K, Δ = R Xᵀ. P comes from the same second
moment as MEMIT's C. K_p K_pᵀ (per layer) is the editor's memory: each accepted patch
adds the keys of its facts, recomputed with the edited model."""

from __future__ import annotations

import torch

from kbsync.editing.base import LocateThenEdit
from kbsync.editing.keys import keys_and_outputs
from kbsync.editing.projector import nullspace_projector


class AlphaEdit(LocateThenEdit):
    name = "alphaedit"

    def __init__(self, hparams):
        super().__init__(hparams)
        self._projectors: dict[int, torch.Tensor] = {}

    def projector(self, layer: int, cov: torch.Tensor) -> torch.Tensor:
        if layer not in self._projectors:
            self._projectors[layer] = nullspace_projector(cov, self.hp.nullspace_threshold)
        return self._projectors[layer]

    def solve(self, layer, keys, resid, cov):
        proj = self.projector(layer, cov)                             # (d_in, d_in)
        past = self.state.get(f"past_kkt.{layer}")
        kkt = keys @ keys.T + (past.to(keys) if past is not None else 0)
        system = proj @ kkt + self.hp.l2 * torch.eye(len(proj), dtype=keys.dtype, device=keys.device)
        v = torch.linalg.solve(system, proj @ keys)                   # (d_in, n)
        return resid, v

    def solve_flops(self, d_in: int, n: int) -> float:
        return super().solve_flops(d_in, n) + 2 * d_in ** 3 + 2 * d_in * d_in * n   # P·KKᵀ, P·K

    def state_update(self, lm, specs, contexts):
        # the keys themselves (n, d_in) travel with the patch: far smaller than d_in² sums
        keys, _ = keys_and_outputs(lm, specs, contexts, sorted(self.hp.layers))
        return {f"keys.{l}": k.float() for l, k in keys.items()}

    def accept(self, patch) -> None:
        for name, k in patch.state_update.items():
            layer = name.split(".")[1]
            kkt = k.T.double() @ k.double()                            # (d_in, d_in)
            key = f"past_kkt.{layer}"
            self.state[key] = self.state[key] + kkt if key in self.state else kkt
