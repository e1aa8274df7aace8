"""Lifelong normalisation (UltraEdit, arXiv 2505.14679; StableEdit, arXiv 2605.11836):
running per-feature mean and spread of every feature row an editor has seen, so features
of turn 10,000 are standardised on the same scale as those of turn 1.

State, all float64 so that a resumed process continues bit for bit:
    n       rows seen
    mean    (d,)   running mean
    m2      (d,)   sum of squared deviations from the mean (Chan et al.'s pooled update,
                   exact whatever the batch sizes: StableEdit's correction of UltraEdit's
                   unbiased-variance form, which is also NaN for a one-row batch)
    scatter (k, k) optional, the same for the last k features jointly (StableEdit's
                   whitening of the gradient half)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

EPS = float(torch.finfo(torch.float32).eps)   # the reference's ε
EIGEN_FLOOR = 1e-6                            # StableEdit's floor on Σ's eigenvalues


@dataclass(frozen=True)
class RunningMoments:
    n: float
    mean: torch.Tensor
    m2: torch.Tensor
    scatter: torch.Tensor | None = None

    @classmethod
    def empty(cls, dim: int, scatter_dim: int = 0) -> "RunningMoments":
        zeros = torch.zeros(dim, dtype=torch.float64)
        scatter = torch.zeros(scatter_dim, scatter_dim, dtype=torch.float64) if scatter_dim else None
        return cls(0.0, zeros, zeros.clone(), scatter)

    def merged(self, rows: torch.Tensor) -> "RunningMoments":
        """The moments of everything seen plus `rows` (N, d)."""
        rows = rows.to(torch.float64).cpu()
        count = rows.shape[0]
        if count == 0:
            return self
        total = self.n + count
        batch_mean = rows.mean(0)
        centred = rows - batch_mean
        delta = batch_mean - self.mean
        mean = self.mean + delta * (count / total)
        m2 = self.m2 + (centred ** 2).sum(0) + delta ** 2 * (self.n * count / total)
        scatter = None
        if self.scatter is not None:
            k = self.scatter.shape[0]
            c, d = centred[:, -k:], delta[-k:]
            scatter = self.scatter + c.T @ c + torch.outer(d, d) * (self.n * count / total)
        return RunningMoments(total, mean, m2, scatter)

    def std(self) -> torch.Tensor:
        return torch.sqrt(self.m2 / max(self.n - 1.0, EPS))

    def standardise(self, rows: torch.Tensor) -> torch.Tensor:
        """(rows − mean) / (σ + ε) per feature; with a scatter matrix, once it is full rank
        (n > k + 1), its last k features are whitened by Σ^{-1/2} instead."""
        rows = rows.to(torch.float64)
        mean, std = self.mean.to(rows.device), self.std().to(rows.device)
        out = (rows - mean) / (std + EPS)
        if self.scatter is not None and self.n > self.scatter.shape[0] + 1:
            k = self.scatter.shape[0]
            out[:, -k:] = (rows[:, -k:] - mean[-k:]) @ self.inverse_sqrt().to(rows.device)
        return out

    def inverse_sqrt(self) -> torch.Tensor:
        k = self.scatter.shape[0]
        sigma = self.scatter / (self.n - k - 1 + EPS)
        values, vectors = torch.linalg.eigh(sigma)
        return vectors @ torch.diag(values.clamp_min(EIGEN_FLOOR).rsqrt()) @ vectors.T

    # -- stable tensor names, for patches and checkpoints -------------------------------
    def to_tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        out = {f"{prefix}n": torch.tensor([self.n], dtype=torch.float64),
               f"{prefix}mean": self.mean, f"{prefix}m2": self.m2}
        if self.scatter is not None:
            out[f"{prefix}scatter"] = self.scatter
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str) -> "RunningMoments":
        return cls(float(tensors[f"{prefix}n"][0]), tensors[f"{prefix}mean"].clone(),
                   tensors[f"{prefix}m2"].clone(),
                   tensors[f"{prefix}scatter"].clone() if f"{prefix}scatter" in tensors else None)
