"""MEMIT (Meng et al. 2023): Δ = R Kᵀ (λ C + K Kᵀ)⁻¹, solved in float64.

C is the keys' second moment over general text: the λC term keeps the outputs for
ordinary keys close to the old ones. MEMIT keeps no memory of earlier edits, which is
why it degrades after thousands of sequential edits.

`system` is the matrix the solve inverts, so editors that only add terms to it (ENCORE)
reuse this solve; `preserve` replaces λ for one call (LyapLock's queue-weighted λ)."""

from __future__ import annotations

import torch

from kbsync.editing.base import LocateThenEdit, Solution


class MEMIT(LocateThenEdit):
    name = "memit"

    def system(self, layer: int, keys: torch.Tensor, cov: torch.Tensor,
               preserve: float | None = None) -> torch.Tensor:
        lam = self.hp.mom2_weight if preserve is None else preserve
        return lam * cov + keys @ keys.T                              # (d_in, d_in)

    def solve(self, layer, keys, resid, cov, *, preserve=None, batch=None) -> Solution:
        v = torch.linalg.solve(self.system(layer, keys, cov, preserve), keys)   # (d_in, n)
        return Solution(resid, v)                                    # Δ = resid @ vᵀ
