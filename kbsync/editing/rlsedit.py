"""RLSEdit (arXiv 2601.15686): MEMIT's front end with a recursive least-squares solve.

Per layer the editor carries C_t = (λ²I + w Σ̂ + Σ_{s≤t} K_s K_sᵀ)⁻¹ (Σ̂ the keys' second
moment over general text, w = mom2_weight): every earlier edit's keys weigh on the next
solve, as in a MEMIT that remembers all of them, but C is updated by Woodbury,

    F = C_{t-1} K,  S = I + KᵀF,  C_t = C_{t-1} − F S⁻¹ Fᵀ,  Δ = R (C_t K)ᵀ = R (F S⁻¹)ᵀ

at O(d_in² n) per turn whatever the history; R is MEMIT's residual spread over the layers
(the innovation form; the released code subtracts KᵀW once more from a V that is already
the residual). The patch carries the batch's keys; C is folded from them in `remember`,
so a rebuilt chain has the same C bit for bit: a fold waits, turn by turn, for C₀, which
needs the model's statistics and is formed at the next edit (editing/stats.py). The memory
is `RLSInverse`, below (the contract: editing/state.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kbsync.editing.base import LocateThenEdit, Solution
from kbsync.editing.memory import batch_keys
from kbsync.editing.state import EditorState, Tensors, named, per_layer


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


def woodbury_update(c: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """C_t from C_{t-1} (d, d) and one turn's keys (n, d) as the patch carries them."""
    gain, f = woodbury_gain(c, keys.T.to(c))
    return c - gain @ f.T


@dataclass
class RLSInverse(EditorState):
    """RLSEdit's C_t per layer, and the turns accepted before C₀ existed (it
    needs the model's statistics), folded in order once it does."""

    TAG = "rls"
    inverse: dict[int, torch.Tensor] = field(default_factory=dict)
    pending: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def fold(self, patch) -> None:
        for layer, k in per_layer(patch.state_update, "keys.").items():
            if layer in self.inverse:
                self.inverse[layer] = woodbury_update(self.inverse[layer], k)
            else:
                self.pending.setdefault(layer, []).append(k.clone())

    def keys_update(self, keys: torch.Tensor) -> Tensors:
        return batch_keys(keys)

    def entries(self) -> Tensors:
        out = named("rls.C.", self.inverse)
        for layer, turns in sorted(self.pending.items()):
            out.update({f"rls.pending.{layer}.{i}": k for i, k in enumerate(turns)})
        return out

    @classmethod
    def from_entries(cls, tensors: Tensors) -> "RLSInverse":
        pending: dict[int, dict[int, torch.Tensor]] = {}
        for name, t in tensors.items():
            parts = name.split(".")
            if name.startswith("rls.pending.") and len(parts) == 4:
                pending.setdefault(int(parts[2]), {})[int(parts[3])] = t
        return cls(per_layer(tensors, "rls.C."),
                   {layer: [turns[i] for i in sorted(turns)] for layer, turns in pending.items()})


class RLSEdit(LocateThenEdit):
    name = "rlsedit"
    memory_class = RLSInverse
    memory: RLSInverse

    def inverse(self, layer: int, cov: torch.Tensor) -> torch.Tensor:
        """C_{t-1} of `layer`: C₀ from the statistics at the first call, then every
        accepted turn's keys folded in order."""
        memory = self.memory
        if layer not in memory.inverse:
            lam = float(self.hp.extra.get("rls_lambda", 0.0))
            eye = torch.eye(cov.shape[0], dtype=torch.float64, device=cov.device)
            memory.inverse[layer] = spd_inverse(self.hp.mom2_weight * cov.double() + lam ** 2 * eye)
        for keys in memory.pending.pop(layer, []):                   # in turn order
            memory.inverse[layer] = woodbury_update(memory.inverse[layer], keys)
        return memory.inverse[layer]

    def solve(self, layer, keys, resid, cov, *, preserve=None, batch=None) -> Solution:
        gain, _ = woodbury_gain(self.inverse(layer, cov).to(keys), keys)
        return Solution(resid, gain)                                 # Δ = R (C_t K)ᵀ

    def solve_flops(self, d_in: int, n: int) -> float:
        """F = C K, KᵀF, the n×n solve and Δ's V: no d_in³ term."""
        return 2 * d_in * d_in * n + 2 * d_in * n * n + 2 / 3 * n ** 3 + 2 * d_in * n * n
