"""A weight patch: per edited layer a low-rank delta Δ = U Vᵀ of the MLP out-projection
(rank ≤ requests in the batch, as MEMIT/AlphaEdit's solve gives it) and/or a dense delta
D (d_out, d_in) where a regulariser made the update sparse or full rank (RECT, PRUNE:
editing/regularize.py); Δ = U Vᵀ + D. Plus the editor-state update it carries (e.g.
AlphaEdit's keys of the edited facts).

Editor state is the fold of `Editor.accept(patch)` over a snapshot's chain of patches, so
rebuilding a snapshot's model also rebuilds its editor memory, and a rollback restores
both.

Storage precision. A project stores the factors in float16 with a float32 scale per
rank-one component (`half_factors`, kbsync.yaml `patch_precision`): each column of U and V
is divided by its largest magnitude, so 11 significant bits hold it whatever its range (a
plain bf16 cast keeps 8 and can erase small edits). The rounding happens before the patch
is applied, so the model that passed the gates is the one a replay rebuilds, bit for bit.
On the default model it halves the delta's bytes (42 KB per fact in 5 layers to 21 KB);
editor state is kept exactly as the editor made it."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kbsync.lm import arch


def to_half(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q float16, scale float32 (r,)) of a (d, r) factor, from_half(q, scale) ≈ t. A zero
    column keeps scale 1; a non-finite one stays non-finite (the finite gate sees it)."""
    peak = t.float().abs().amax(0)
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))
    return (t.float() / scale).to(torch.float16), scale


def from_half(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale


@dataclass
class WeightPatch:
    factors: dict[int, tuple[torch.Tensor, torch.Tensor]]   # layer -> (U (d_out, r), V (d_in, r))
    state_update: dict[str, torch.Tensor] = field(default_factory=dict)
    dense: dict[int, torch.Tensor] = field(default_factory=dict)   # layer -> D (d_out, d_in)
    # layer -> ((q, scale) of U, (q, scale) of V) when the factors are stored in float16:
    # factors[layer] is from_half of them, and they, not a rounding of it, are what is stored
    halves: dict[int, tuple[tuple[torch.Tensor, torch.Tensor], ...]] = field(default_factory=dict)

    def half_factors(self) -> "WeightPatch":
        """This patch with every factor rounded to what float16 storage keeps; apply it,
        not self, so the gated model is the stored one."""
        if self.halves or not self.factors:
            return self
        halves = {layer: tuple(to_half(t) for t in pair) for layer, pair in self.factors.items()}
        return WeightPatch.from_halves(halves, self.state_update, self.dense)

    @classmethod
    def from_halves(cls, halves: dict, state: dict, dense: dict) -> "WeightPatch":
        factors = {layer: tuple(from_half(q, scale) for q, scale in pair)
                   for layer, pair in halves.items()}
        return cls(factors, state, dense, halves)

    @property
    def layers(self) -> list[int]:
        """Every layer the patch changes (factors, dense or both)."""
        return sorted(set(self.factors) | set(self.dense))

    def delta(self, layer: int, device=None, dtype=None) -> torch.Tensor:
        """U Vᵀ + D of a layer, formed on `device` (default: where the factors are) in
        `dtype` (default: theirs)."""
        parts = []
        if layer in self.factors:
            u, v = (t.to(device=device, dtype=dtype) for t in self.factors[layer])
            parts.append(u @ v.T)                          # (d_out, d_in)
        if layer in self.dense:
            parts.append(self.dense[layer].to(device=device, dtype=dtype))
        if not parts:
            raise KeyError(layer)
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]

    def _add(self, model, sign: float) -> None:
        with torch.no_grad():
            for layer in self.layers:
                weight = arch.weight_of(model, layer)
                weight.add_(sign * self.delta(layer, weight.device).to(weight.dtype))

    def apply(self, model) -> None:
        self._add(model, 1.0)

    def revert(self, model) -> None:
        """Subtract the delta: W up to rounding. For an exact undo (also of a non-finite
        delta) use save_layers before apply and restore_layers after."""
        self._add(model, -1.0)

    def checkpoint(self, model) -> dict[int, torch.Tensor]:
        """Exact copies of the matrices the patch changes (revert cannot undo a NaN)."""
        return save_layers(model, self.layers)

    def restore(self, model, saved: dict[int, torch.Tensor]) -> None:
        restore_layers(model, saved)

    def checked_tensors(self, model) -> list[torch.Tensor]:
        """What the finite gate reads once the patch is applied."""
        return [arch.weight_of(model, layer) for layer in self.layers]

    def is_empty(self) -> bool:
        return not self.layers

    def is_finite(self) -> bool:
        tensors = [t for pair in self.factors.values() for t in pair]
        tensors += list(self.dense.values()) + list(self.state_update.values())
        return all(bool(torch.isfinite(t).all()) for t in tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for layer, pair in self.factors.items():
            for which, t in zip("UV", pair):
                if layer in self.halves:
                    q, scale = self.halves[layer]["UV".index(which)]
                    out[f"delta.{layer}.{which}"], out[f"scale.{layer}.{which}"] = q, scale
                else:
                    out[f"delta.{layer}.{which}"] = t.contiguous()
        out.update({f"delta.{layer}.D": d.contiguous() for layer, d in self.dense.items()})
        out.update({f"state.{k}": t.contiguous() for k, t in self.state_update.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "WeightPatch":
        factors: dict[int, list] = {}
        state, dense, scales = {}, {}, {}
        for name, t in tensors.items():
            kind, rest = name.split(".", 1)
            if kind == "state":
                state[rest] = t
            elif kind == "scale":
                scales[rest] = t
            else:
                layer, which = rest.split(".")
                if which == "D":
                    dense[int(layer)] = t
                else:
                    factors.setdefault(int(layer), [None, None])["UV".index(which)] = t
        if scales:
            halves = {l: tuple((q, scales[f"{l}.{w}"]) for q, w in zip(pair, "UV"))
                      for l, pair in factors.items()}
            return cls.from_halves(halves, state, dense)
        return cls({l: (u, v) for l, (u, v) in factors.items()}, state, dense)

    @classmethod
    def empty(cls) -> "WeightPatch":
        return cls({}, {})

    def merge(self, other: "WeightPatch") -> None:
        """Take over another patch's layers and state entries (one layer's step of an edit)."""
        self.factors.update(other.factors)
        self.halves.update(other.halves)
        self.dense.update(other.dense)
        self.state_update.update(other.state_update)


def stored_precision(patch, precision: str):
    """The patch as a project with `patch_precision` stores it (a side-memory patch, or
    float32, unchanged)."""
    if precision == "float16" and isinstance(patch, WeightPatch):
        return patch.half_factors()
    return patch


def load_patch(tensors: dict[str, torch.Tensor]):
    """A stored patch, whichever kind it is (weight deltas or a side-memory update)."""
    from kbsync.editing.side.patch import MemoryPatch

    if MemoryPatch.holds(tensors):
        return MemoryPatch.from_tensors(tensors)
    return WeightPatch.from_tensors(tensors)


def save_layers(model, layers) -> dict[int, torch.Tensor]:
    """Exact copies of the edited matrices, to undo a patch bit for bit."""
    return {layer: arch.weight_of(model, layer).detach().clone() for layer in layers}


def restore_layers(model, saved: dict[int, torch.Tensor]) -> None:
    with torch.no_grad():
        for layer, weight in saved.items():
            arch.weight_of(model, layer).copy_(weight)
