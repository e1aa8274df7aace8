"""AlphaEdit's null-space projector (§3.2): P = Û Ûᵀ over the eigenvectors of the keys'
second moment C whose eigenvalue is small, so that an update ΔP leaves the outputs for
preserved knowledge (keys in the span of the large eigenvectors) unchanged.

The threshold is relative to the largest eigenvalue (`relative=True`): an absolute τ
depends on the model's activation scale and gives P = 0 or P = I on the wrong model
(AlphaEdit issues #12, #38)."""

from __future__ import annotations

import torch


def nullspace_projector(c: torch.Tensor, threshold: float, relative: bool = True) -> torch.Tensor:
    eigvals, eigvecs = torch.linalg.eigh(c.double())
    cutoff = threshold * eigvals.max() if relative else threshold
    basis = eigvecs[:, eigvals < cutoff]           # (d_in, r)
    return basis @ basis.T                           # (d_in, d_in)
