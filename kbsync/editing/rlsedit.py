"""RLSEdit (arXiv 2601.15686): MEMIT's front end with a recursive least-squares solve.

Per layer the editor carries C_t = (λ²I + w Σ̂ + Σ_{s≤t} K_s K_sᵀ)⁻¹ (Σ̂ the keys' second
moment over general text, w = mom2_weight): every earlier edit's keys weigh on the next
solve, as in a MEMIT that remembers all of them, but C is updated by Woodbury,

    F = C_{t-1} K,  S = I + KᵀF,  C_t = C_{t-1} − F S⁻¹ Fᵀ,  Δ = R (C_t K)ᵀ = R (F S⁻¹)ᵀ

at O(d_in² n) per turn whatever the history; R is MEMIT's residual spread over the layers
(the innovation form; the released code subtracts KᵀW once more from a V that is already
the residual). The patch carries the batch's keys; C is folded from them in `remember`,
so a rebuilt chain has the same C bit for bit: a fold waits, turn by turn, for C₀, which
needs the model's statistics and is formed at the next edit (editing/stats.py)."""

from __future__ import annotations

import torch

from kbsync.editing.base import LocateThenEdit
from kbsync.editing.memory import KeyMemory


def woodbury_gain(c: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(F S⁻¹ = C_t K, F) for inverse C (d, d) and new keys (d, n), float64."""
    f = c @ keys
    s = torch.eye(keys.shape[1], dtype=c.dtype, device=c.device) + keys.T @ f
    return torch.linalg.solve(s, f.T).T, f


def spd_inverse(a: torch.Tensor, tries: int = 5) -> torch.Tensor:
    """Inverse of a symmetric positive (semi)definite matrix by Cholesky; jitter
    1e-6 · mean diagonal, ×10 per failure, as the reference does."""
    jitter = 0.0
    for _ in range(tries + 1):
        chol, info = torch.linalg.cholesky_ex(a + jitter * torch.eye(a.shape[0], dtype=a.dtype,
                                                                     device=a.device))
        if int(info) == 0:
            return torch.cholesky_inverse(chol)
        jitter = 1e-6 * float(a.diagonal().abs().mean().clamp_min(1.0)) if not jitter else jitter * 10
    return torch.linalg.pinv(a, hermitian=True)


class RLSEdit(KeyMemory, LocateThenEdit):
    name = "rlsedit"

    def inverse(self, layer: int, cov: torch.Tensor) -> torch.Tensor:
        """C_{t-1} of `layer`: C₀ from the statistics at the first call, then every
        accepted turn's keys folded in order."""
        name = f"rls.C.{layer}"
        if name not in self.state:
            lam = float(self.hp.extra.get("rls_lambda", 0.0))
            eye = torch.eye(cov.shape[0], dtype=torch.float64, device=cov.device)
            self.state[name] = spd_inverse(self.hp.mom2_weight * cov.double() + lam ** 2 * eye)
        turns = [k for k in self.state if k.startswith(f"rls.pending.{layer}.")]
        for key in sorted(turns, key=lambda k: int(k.rsplit(".", 1)[1])):   # in turn order
            self._fold(layer, self.state.pop(key))
        return self.state[name]

    def solve(self, layer, keys, resid, cov):
        gain, _ = woodbury_gain(self.inverse(layer, cov).to(keys), keys)
        return resid, gain                                           # Δ = R (C_t K)ᵀ

    def remember(self, patch) -> None:
        for name, k in patch.state_update.items():
            layer = int(name.split(".")[1])
            if f"rls.C.{layer}" in self.state:
                self._fold(layer, k)
            else:                       # C₀ not formed yet: keep the turn for later, in order
                turn = sum(1 for s in self.state if s.startswith(f"rls.pending.{layer}."))
                self.state[f"rls.pending.{layer}.{turn}"] = k.clone()

    def _fold(self, layer: int, keys: torch.Tensor) -> None:
        c = self.state[f"rls.C.{layer}"]
        gain, f = woodbury_gain(c, keys.T.to(c))
        self.state[f"rls.C.{layer}"] = c - gain @ f.T

    def solve_flops(self, d_in: int, n: int) -> float:
        """F = C K, KᵀF, the n×n solve and Δ's V: no d_in³ term."""
        return 2 * d_in * d_in * n + 2 * d_in * n * n + 2 / 3 * n ** 3 + 2 * d_in * n * n
