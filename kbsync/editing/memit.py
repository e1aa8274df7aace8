"""MEMIT (Meng et al. 2023): Δ = R Kᵀ (λ C + K Kᵀ)⁻¹, solved in float64.

C is the keys' second moment over general text: the λC term keeps the outputs for
ordinary keys close to the old ones. MEMIT keeps no memory of earlier edits, which is
why it degrades after thousands of sequential edits."""

from __future__ import annotations

import torch

from kbsync.editing.base import LocateThenEdit


class MEMIT(LocateThenEdit):
    name = "memit"

    def solve(self, layer, keys, resid, cov):
        system = self.hp.mom2_weight * cov + keys @ keys.T          # (d_in, d_in)
        v = torch.linalg.solve(system, keys)                         # (d_in, n)
        return resid, v                                              # Δ = resid @ vᵀ
