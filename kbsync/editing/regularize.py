"""RECT (arXiv 2401.04700) and PRUNE (arXiv 2405.16821): regularisers of any weight
editor's update, switched on by `regularizer: rect|prune` in the hparams (or the names
`memit+rect`, `alphaedit+prune`).

`step` is the one hook point: the shared loop (base.py) calls it right after each layer's
solve, so every locate-then-edit editor gets them, and the later layers of MEMIT's spread
see, and make up for, what the regulariser took away.

RECT   keeps the `rect_keep` share of the batch's Δ with the largest relative change
       |Δ_ij| / (|W_ij| + ε), W the matrix as it is before this batch; zeroes the rest.
PRUNE  restrains the singular values of the editor's accumulated perturbation A = Σ Δ
       (the raw updates of every accepted batch: editor memory, so a rebuilt snapshot has
       it). σ₀ = largest singular value of the original matrix; every σ_i ≥ σ₀ becomes
       σ₀ + ln σ_i − ln σ₀ (`prune_reduce`). The model holds W₀ + restrain(A), so a
       batch's patch is restrain(A + Δ) − restrain(A): exactly Δ, low rank, while no σ_i
       reaches σ₀.
       Restraining A rather than W − W₀ keeps the log from compounding batch after batch:
       each snapshot is PRUNE applied once to everything edited so far, as the reference
       applies it once after the last edit.
Both make the update dense (WeightPatch.dense), except where they leave it unchanged.

NAS    (norm-anchor scaling, arXiv 2602.02543) acts one step earlier, on the target
       vectors (`anchor_targets`): v* = v0 + δ (v0 the MLP output at the z-layer) is
       rescaled to the anchor norm m, or dropped (v* = v0) when ‖v*‖ > `nas_skip` · m;
       the target is h − v0 + v*. m is the mean ‖v*‖ of the first accepted batch (its
       largest 5% left out), on the model as it is then, kept in the editor memory.
       The reference samples 1,000 CounterFact rewrites for m, about 40 minutes of
       target optimisation on a 2-core CPU; the first batch costs nothing extra.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import yaml

from kbsync.editing.patch import WeightPatch
from kbsync.editing.registry import REGULARIZERS
from kbsync.editing.state import EditorState, Tensors, add, named, per_layer
from kbsync.errors import EditorError

DEFAULTS = Path(__file__).resolve().parent / "hparams" / "regularize.yaml"
NONE = (None, "", "none")


@dataclass
class RegularizerMemory(EditorState):
    """NAS's anchor norm m (fixed by the first accepted batch), PRUNE's accumulated raw
    update A = Σ U Vᵀ and σ₀ of the original matrix per layer."""

    TAG = "regularizer"
    nas_anchor: torch.Tensor | None = None
    prune_raw: dict[int, torch.Tensor] = field(default_factory=dict)
    prune_sigma0: dict[int, torch.Tensor] = field(default_factory=dict)

    def fold(self, patch) -> None:
        update = patch.state_update
        if "nas.anchor" in update and self.nas_anchor is None:
            self.nas_anchor = update["nas.anchor"].clone()
        for name, u in update.items():
            parts = name.split(".")
            if parts[0] != "prune":
                continue
            layer, which = int(parts[1]), parts[2]
            if which == "U":
                d = (u.double() @ update[f"prune.{layer}.V"].double().T).float()
                self.prune_raw[layer] = add(self.prune_raw.get(layer), d)
            elif which == "sigma0" and layer not in self.prune_sigma0:
                self.prune_sigma0[layer] = u.clone()

    def entries(self) -> Tensors:
        out = {"nas.anchor": self.nas_anchor} if self.nas_anchor is not None else {}
        return out | named("prune.raw.", self.prune_raw) | named("prune.sigma0.", self.prune_sigma0)

    @classmethod
    def from_entries(cls, tensors: Tensors) -> "RegularizerMemory":
        return cls(tensors.get("nas.anchor"), per_layer(tensors, "prune.raw."),
                   per_layer(tensors, "prune.sigma0."))


def _log_base(base: float):
    return lambda s, s0: s0 + (torch.log(s) - torch.log(s0)) / math.log(base)


REDUCE = {   # PRUNE's reduce_type (mjy1111/PRUNE bi_editor_loadw.py), for σ ≥ σ₀
    "log": _log_base(math.e), "log2": _log_base(2.0), "log1_5": _log_base(1.5),
    "log1_2": _log_base(1.2), "linear": lambda s, s0: (s + s0) / 2,
}


def resolve(hp):
    """hp with the regulariser's defaults filled in (under the editor's own values), checked.
    Without a regulariser hp is returned as it is, so plain editors record no extra keys."""
    name = hp.extra.get("regularizer")
    if name in NONE:
        return hp
    if name not in REGULARIZERS:
        raise EditorError(f"unknown regularizer {name!r}",
                          hint=f"choose one of: {', '.join(REGULARIZERS)}")
    extra = {**yaml.safe_load(DEFAULTS.read_text()).get("defaults", {}), **hp.extra}
    if not 0 < float(extra["rect_keep"]) <= 1:
        raise EditorError(f"rect_keep must be in (0, 1], got {extra['rect_keep']}")
    if float(extra["nas_skip"]) <= 1 or not 0 <= float(extra["nas_trim"]) < 1:
        raise EditorError("nas_skip must be > 1 and nas_trim in [0, 1)")
    if extra["prune_reduce"] not in REDUCE:
        raise EditorError(f"unknown prune_reduce {extra['prune_reduce']!r}",
                          hint=f"choose one of: {', '.join(REDUCE)}")
    return replace(hp, extra=extra)


def step(hp, layer: int, u: torch.Tensor, v: torch.Tensor, weight: torch.Tensor,
         memory: RegularizerMemory) -> WeightPatch:
    """This layer's part of the batch's patch, from the solve's Δ = u vᵀ (float64, on the
    layer's device) and the matrix `weight` (d_out, d_in) as it is now."""
    name = hp.extra.get("regularizer")
    if name == "rect":
        return WeightPatch({}, dense={layer: rect(u @ v.T, weight, float(hp.extra["rect_keep"]),
                                                  float(hp.extra["rect_eps"])).float().cpu()})
    if name == "prune":
        return _prune(layer, u, v, weight, memory, REDUCE[hp.extra["prune_reduce"]])
    return WeightPatch({layer: (u.float().cpu(), v.float().cpu())})


def anchor_targets(hp, target, memory: RegularizerMemory
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """(target block outputs z, state entries to carry, stats) for the batch; without NAS
    z is the target as optimised."""
    if hp.extra.get("regularizer") != "nas":
        return target.z, {}, {}
    v0 = target.mlp
    vstar = v0 + target.delta
    norms = vstar.norm(dim=1)
    update = {}
    anchor = memory.nas_anchor
    if anchor is None:
        anchor = trimmed_mean(norms, float(hp.extra["nas_trim"])).reshape(1).cpu()
        update["nas.anchor"] = anchor.float()
    m = float(anchor)
    skip = norms > float(hp.extra["nas_skip"]) * m
    scaled = torch.where(skip[:, None], v0, vstar * (m / (norms + 1e-10))[:, None])
    return target.h - v0 + scaled, update, {"nas_skipped": int(skip.sum()), "nas_anchor": m}


def trimmed_mean(values: torch.Tensor, trim: float) -> torch.Tensor:
    """Mean with the largest floor(trim · n) values left out."""
    drop = int(trim * values.numel())
    return values.sort().values[:values.numel() - drop].mean()


def rect(delta: torch.Tensor, weight: torch.Tensor, keep: float, eps: float = 1e-8) -> torch.Tensor:
    """delta with all but its round(keep · numel) largest relative entries zeroed. topk, not
    the reference's kthvalue threshold: ties at the threshold cannot keep extra entries."""
    count = round(keep * delta.numel())
    relative = delta.abs() / (weight.to(delta.dtype).abs() + eps)
    kept = torch.topk(relative.flatten(), count, sorted=False).indices
    out = torch.zeros_like(delta).flatten()
    out[kept] = delta.flatten()[kept]
    return out.view_as(delta)


def restrain(a: torch.Tensor, sigma0: float | torch.Tensor, reduce=REDUCE["log"]
             ) -> tuple[torch.Tensor, bool]:
    """(A with its singular values σ ≥ σ₀ replaced by reduce(σ, σ₀), whether any was)."""
    sigma0 = torch.as_tensor(sigma0, dtype=a.dtype, device=a.device)
    if torch.linalg.matrix_norm(a) < sigma0:     # ‖A‖₂ ≤ ‖A‖_F: no SVD needed
        return a, False
    u, s, vh = torch.linalg.svd(a, full_matrices=False)
    big = s >= sigma0
    if not bool(big.any()):
        return a, False
    return (u * torch.where(big, reduce(s, sigma0), s)) @ vh, True


def _prune(layer, u, v, weight, memory: RegularizerMemory, reduce) -> WeightPatch:
    # the raw update travels as factors (small); RegularizerMemory.fold sums it
    update = {f"prune.{layer}.U": u.float().cpu(), f"prune.{layer}.V": v.float().cpu()}
    sigma0 = memory.prune_sigma0.get(layer)
    if sigma0 is None:        # no PRUNE batch accepted yet: this matrix is the original W₀
        sigma0 = torch.linalg.matrix_norm(weight.double(), ord=2).reshape(1).cpu()
        update[f"prune.{layer}.sigma0"] = sigma0.float()
    sigma0 = float(sigma0)
    old = memory.prune_raw.get(layer)
    old = None if old is None else old.to(u.device, u.dtype)
    delta = u @ v.T
    new, changed = restrain(delta if old is None else old + delta, sigma0, reduce)
    before, changed_before = restrain(old, sigma0, reduce) if old is not None else (None, False)
    if not (changed or changed_before):
        return WeightPatch({layer: (u.float().cpu(), v.float().cpu())}, update)
    step_delta = new if before is None else new - before
    return WeightPatch({}, update, {layer: step_delta.float().cpu()})
