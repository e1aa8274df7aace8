"""LyapLock (Wang et al. EMNLP 2025, arXiv 2505.15702): sequential editing
as a long-term constrained program, "keep the average preservation loss PL below a budget
D", turned by Lyapunov optimisation into one closed-form solve per step whose preservation
weight a·Z·λ grows with the violation accumulated so far.

Preservation loss of the edited matrix W against the weights W₀ before LyapLock's first
edit, over general-text keys (C = E[k kᵀ] = K₀K₀ᵀ, V₀ = W₀K₀; D = W − W₀):

    PL(W) = E‖W k − W₀ k‖² = tr(D C Dᵀ)       (= tr(K₀K₀ᵀWᵀW) − 2tr(V₀K₀ᵀWᵀ) + tr(V₀V₀ᵀ))

Virtual queue per layer, after each step: D_base = PL after the first batch, then
Z ← max(Z + a(PL − α·D_base) + b, Z_max), with Z₀ = Z_max = √(α·D_base), a = 1/√(α·D_base).

`lyaplock` on its own solves §5.2's system (V the trade-off, w = a·Z·λ, λ before D_base):

    Δ [V·KKᵀ + w·C + V·ΣK_pK_pᵀ] = V·RKᵀ − w·D C + V·(ΣU_pK_pᵀ − D ΣK_pK_pᵀ)

the minimiser of V‖ΔK − R‖² + w·PL(W + Δ) + V‖(W + Δ)K_p − V_p‖², anchored to W₀ (drift is
pulled back) and keeping past edits at the values they reached (U_p = V_p − W₀K_p). Its Δ
is full rank once there is drift, so the patch holds it densely (as I·Δ or Δ·I).

`lyaplock+memit`, `lyaplock+alphaedit` wrap an inner editor: its own solve, called with
preserve = w (MEMIT: λ → w; AlphaEdit: + w·C in its projected system), the queue as above.

State (`LyapunovMemory`, rebuilt by folding accept over a snapshot's patches): `lyap.queue.L`, `lyap.d_base.L`
(carried as values by each patch: the queue update is not additive), `lyap.drift.L` = D
(the sum of the patches' own deltas: no extra bytes in the patches), and on its own
`lyap.past_kkt.L`, `lyap.past_ukt.L` (folded from the patch's `lyap.keys.L`,
`lyap.values.L`, what each layer's solve adds); a wrapped editor's entries under `inner.`.
C is the shared covariance cache, so V₀K₀ᵀ = W₀C and V₀V₀ᵀ = W₀CW₀ᵀ need no second
statistics pass."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from kbsync.editing.alphaedit import AlphaEdit
from kbsync.editing.base import LocateThenEdit, Solution
from kbsync.editing.memit import MEMIT
from kbsync.editing.patch import WeightPatch
from kbsync.editing.state import EditorState, Tensors, add, named, per_layer

PREFIX = "lyap."      # this editor's own state entries
INNER = "inner."      # the wrapped editor's, under their own names after this prefix


def queue_step(z: float, pl: float, d_base: float, alpha: float, b: float = 0.0) -> float:
    """One virtual-queue update: rises while PL exceeds the budget α·D_base, falls back
    (never below Z_max = √(α·D_base)) while it does not."""
    scale = math.sqrt(alpha * d_base)
    return max(z + (pl - alpha * d_base) / scale + b, scale)


def dense_factors(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, V) with U Vᵀ = Δ exactly, the identity on the smaller side."""
    d_out, d_in = delta.shape
    if d_out <= d_in:
        return torch.eye(d_out, dtype=delta.dtype, device=delta.device), delta.T
    return delta, torch.eye(d_in, dtype=delta.dtype, device=delta.device)


def _scalar(x: float) -> torch.Tensor:
    return torch.tensor([x], dtype=torch.float64)


@dataclass
class LyapunovMemory(EditorState):
    """LyapLock's memory per layer: the virtual queue Z and D_base (each
    patch carries their new values), the drift D = Σ Δ (the patches' own deltas), and on
    its own the past edits' Σ K_pK_pᵀ and Σ U_pK_pᵀ (from `lyap.keys`, `lyap.values`)."""

    TAG = "lyap"
    queue: dict[int, torch.Tensor] = field(default_factory=dict)
    d_base: dict[int, torch.Tensor] = field(default_factory=dict)
    drift: dict[int, torch.Tensor] = field(default_factory=dict)
    past_kkt: dict[int, torch.Tensor] = field(default_factory=dict)
    past_ukt: dict[int, torch.Tensor] = field(default_factory=dict)

    def fold(self, patch) -> None:
        update = patch.state_update
        for layer in patch.layers:
            self.drift[layer] = add(self.drift.get(layer), patch.delta(layer, dtype=torch.float64))
        for layer, z in per_layer(update, "lyap.queue.").items():
            self.queue[layer] = z.double().clone()
        for layer, d in per_layer(update, "lyap.d_base.").items():
            self.d_base[layer] = d.double().clone()
        values = per_layer(update, "lyap.values.")
        for layer, k in per_layer(update, "lyap.keys.").items():
            k = k.double()
            self.past_kkt[layer] = add(self.past_kkt.get(layer), k.T @ k)
            self.past_ukt[layer] = add(self.past_ukt.get(layer), values[layer].double().T @ k)

    def entries(self) -> Tensors:
        return {**named("lyap.queue.", self.queue), **named("lyap.d_base.", self.d_base),
                **named("lyap.drift.", self.drift), **named("lyap.past_kkt.", self.past_kkt),
                **named("lyap.past_ukt.", self.past_ukt)}

    @classmethod
    def from_entries(cls, tensors: Tensors) -> "LyapunovMemory":
        return cls(*(per_layer(tensors, f"lyap.{what}.")
                     for what in ("queue", "d_base", "drift", "past_kkt", "past_ukt")))


class LyapLock(LocateThenEdit):
    memory_class = LyapunovMemory
    memory: LyapunovMemory

    def __init__(self, hparams, inner: LocateThenEdit | None = None):
        super().__init__(hparams)
        self.inner = inner
        self.name = "lyaplock" if inner is None else f"lyaplock+{inner.name}"
        self.alpha = float(hparams.extra.get("lyap_alpha", 60.0))    # budget: α·D_base
        self.tradeoff = float(hparams.extra.get("lyap_v", 1.0))      # V, on the edit terms
        self.drift_b = float(hparams.extra.get("lyap_b", 0.0))       # b, the queue's constant
        self._d_out: int | None = None

    def weight(self, layer: int) -> float:
        """w = a·Z·λ for this layer's next step (λ until the first batch sets D_base)."""
        d_base = self.memory.d_base.get(layer)
        if d_base is None:
            return self.hp.mom2_weight
        z = float(self.memory.queue[layer])
        return z / math.sqrt(self.alpha * float(d_base)) * self.hp.mom2_weight

    def solve(self, layer, keys, resid, cov, *, preserve=None, batch=None) -> Solution:
        w, drift = self.weight(layer), self.memory.drift.get(layer)
        drift = drift.to(keys) if drift is not None else None
        adds: dict[str, torch.Tensor] = {}
        if self.inner is not None:
            inner = self.inner.solved(layer, keys, resid, cov, preserve=w, batch=batch)
            u, v = inner.u, inner.v
            adds = {INNER + name: t for name, t in inner.adds.items()}
        else:
            u, v = self._anchored_solve(layer, keys, resid, cov, w, drift)
        # D after this step, from the float32 factors the patch stores, as accept() folds
        # them: the queue measures PL on the drift the state will hold (up to rounding)
        step = u.float().double() @ v.float().double().T
        after = step if drift is None else drift + step
        pl = float(((after @ cov) * after).sum())                    # tr(D C Dᵀ)
        old = self.memory.d_base.get(layer)
        d_base = max(pl, 1e-30) if old is None else float(old)       # > 0: a = 1/√(αD)
        z = self.memory.queue.get(layer)
        z = math.sqrt(self.alpha * d_base) if z is None else float(z)
        adds[f"{PREFIX}queue"] = _scalar(queue_step(z, pl, d_base, self.alpha, self.drift_b))
        adds[f"{PREFIX}d_base"] = _scalar(d_base)
        if self.inner is None:       # past edits, kept at the values they reach now
            adds[f"{PREFIX}keys"] = keys.T.float().cpu()                   # (n, d_in)
            adds[f"{PREFIX}values"] = (after @ keys).T.float().cpu()       # (n, d_out): U_p
        self._d_out = resid.shape[0]
        return Solution(u, v, adds)

    def _anchored_solve(self, layer, keys, resid, cov, w, drift):
        v_ = self.tradeoff
        past_kk, past_uk = self.memory.past_kkt.get(layer), self.memory.past_ukt.get(layer)
        gram = v_ * (keys @ keys.T) + w * cov                        # (d_in, d_in), symmetric
        if drift is None and past_kk is None:   # first batch: W = W₀, nothing to pull back
            return v_ * resid, torch.linalg.solve(gram, keys)        # rank ≤ n
        rhs = v_ * (resid @ keys.T)                                  # (d_out, d_in)
        if drift is not None:
            rhs = rhs - w * (drift @ cov)
        if past_kk is not None:
            past_kk, past_uk = past_kk.to(keys), past_uk.to(keys)
            gram = gram + v_ * past_kk
            rhs = rhs + v_ * (past_uk - (drift @ past_kk if drift is not None else 0))
        return dense_factors(torch.linalg.solve(gram, rhs.T).T)      # Δ = rhs · gram⁻¹

    def solve_flops(self, d_in: int, n: int) -> float:
        d_out = self._d_out or d_in
        trace = 2 * d_out * d_in * d_in                              # PL's D·C
        if self.inner is not None:
            return self.inner.solve_flops(d_in, n) + trace
        return super().solve_flops(d_in, d_out) + 2 * trace          # d_out right-hand sides

    def accept(self, patch: WeightPatch) -> None:
        super().accept(patch)
        if self.inner is not None:
            rest = {k[len(INNER):]: t for k, t in patch.state_update.items() if k.startswith(INNER)}
            self.inner.accept(WeightPatch(patch.factors, rest))

    def state_dict(self) -> dict[str, torch.Tensor]:
        inner = self.inner.state_dict() if self.inner is not None else {}
        return {**super().state_dict(), **{INNER + k: t for k, t in inner.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        super().load_state_dict({k: t for k, t in state.items() if not k.startswith(INNER)})
        if self.inner is not None:
            self.inner.load_state_dict({k[len(INNER):]: t for k, t in state.items()
                                        if k.startswith(INNER)})


def with_memit(hparams) -> LyapLock:
    return LyapLock(hparams, MEMIT(hparams))


def with_alphaedit(hparams) -> LyapLock:
    return LyapLock(hparams, AlphaEdit(hparams))
