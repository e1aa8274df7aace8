"""AlphaEdit (Fang et al. ICLR 2025): MEMIT's update projected onto the null space of the
preserved keys, with the keys of earlier edits held fixed:

    Δ = R Kᵀ P (K_p K_pᵀ P + K Kᵀ P + α I)⁻¹

solved as X = (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹ P K, Δ = R Xᵀ. P comes from the same second
moment as MEMIT's C. K_p K_pᵀ (per layer) is the editor's memory (memory.KeyMemory): each
accepted patch adds the keys of its facts, recomputed with the edited model.

`preserve` = w adds w·C inside the projected system, i.e. w‖ΔP K₀‖² to the objective: the
preserved keys' leak into the null space (their eigenvalues below the threshold). Plain
AlphaEdit has w = 0; LyapLock's wrapper sets w from its queue (lyaplock.py)."""

from __future__ import annotations

import torch

from kbsync.editing.base import LocateThenEdit, Solution
from kbsync.editing.memory import KeyMemory
from kbsync.editing.projector import nullspace_projector


class AlphaEdit(KeyMemory, LocateThenEdit):
    name = "alphaedit"

    def __init__(self, hparams):
        super().__init__(hparams)
        self._projectors: dict[int, torch.Tensor] = {}

    def projector(self, layer: int, cov: torch.Tensor, batch=None) -> torch.Tensor:
        if layer not in self._projectors:
            self._projectors[layer] = nullspace_projector(cov, self.hp.nullspace_threshold)
        return self._projectors[layer]

    def solve(self, layer, keys, resid, cov, *, preserve=None, batch=None) -> Solution:
        proj = self.projector(layer, cov, batch)                      # (d_in, d_in)
        kkt = keys @ keys.T + self.past_gram(layer, keys)
        if preserve:
            kkt = kkt + preserve * cov
        system = proj @ kkt + self.hp.l2 * torch.eye(len(proj), dtype=keys.dtype, device=keys.device)
        v = torch.linalg.solve(system, proj @ keys)                   # (d_in, n)
        return Solution(resid, v)

    def solve_flops(self, d_in: int, n: int) -> float:
        return super().solve_flops(d_in, n) + 2 * d_in ** 3 + 2 * d_in * d_in * n   # P·KKᵀ, P·K
