"""‖W_snapshot‖_F / ‖W_base‖_F for every matrix a weight editor changed, per snapshot.

A snapshot's matrix is the base matrix plus the low-rank deltas U·Vᵀ (and the dense
deltas of a regularised editor) of every patch along its chain (effective parents: a
rollback follows its target), exactly as rebuild.load_at builds the model. Only the
edited matrices are needed, so they are read straight out of the model's safetensors
files (a few MB) instead of loading the model: a report must not cost a model load per
snapshot, nor even one. Only a pickle-only model directory (allowed
by `allow_pickle`) is loaded whole, once.

Sums are in float32 and the norms in float64; the ratio is what a person reads, and float32
keeps it to about 1e-7, far below any edit worth reporting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from kbsync.errors import IntegrityError, ModelError
from kbsync.store.manifest import Manifest
from kbsync.store.objects import ObjectStore
from kbsync.store.snapshots import SnapshotStore

if TYPE_CHECKING:
    import torch

    from kbsync.editing.patch import WeightPatch


def relative_norms(project, manifests: dict[str, Manifest]
                   ) -> tuple[dict[int, float], dict[str, dict[int, float]]]:
    """({edited layer: ‖W_base‖_F}, {snapshot id: {layer: ‖W‖_F / ‖W_base‖_F}}) for the
    given manifests, in their order; ancestors missing from `manifests` are read from the
    store.

    Raises ModelError/IntegrityError when the base model is missing or is not the one the
    snapshots were made on; the caller turns that into a note on the report."""
    import torch

    store = SnapshotStore(project.kbsync_dir)
    known = dict(manifests)
    lineages = {sid: [i for i, _ in store.lineage(sid, known)] for sid in manifests}
    objects = ObjectStore(project.kbsync_dir)
    patches: dict[str, WeightPatch] = {}
    for manifest in known.values():
        if manifest.patch is not None and manifest.patch not in patches:
            patches[manifest.patch] = _patch(objects.get_tensors(manifest.patch))
    layers = sorted({layer for p in patches.values() for layer in p.layers})
    if not layers:
        return {}, {sid: {} for sid in manifests}
    cfg = project.config
    from kbsync.lm.load import file_fingerprint, resolve_model_path

    path = resolve_model_path(cfg.model)
    fingerprint = file_fingerprint(path)
    made_on = {m.base_model for m in known.values()}
    if made_on - {fingerprint}:
        raise IntegrityError(f"the snapshots were made on base model {', '.join(sorted(made_on))}"
                             f", but {cfg.model} is {fingerprint}")
    base = base_matrices(path, layers, allow_pickle=cfg.allow_pickle)
    base_norm = {layer: frobenius_norm(w) for layer, w in base.items()}

    out: dict[str, dict[int, float]] = {}
    last: tuple[str, dict[int, torch.Tensor]] | None = None   # the linear case: reuse it
    for sid in manifests:
        lineage = lineages[sid]
        if last is not None and lineage[:-1] and lineage[-2] == last[0]:
            start, weights = len(lineage) - 1, {l: w.clone() for l, w in last[1].items()}
        else:                                  # a root or a rollback: sum from the base
            start, weights = 0, {l: w.clone() for l, w in base.items()}
        for ancestor in lineage[start:]:
            patch = patches.get(known[ancestor].patch or "")
            for layer in patch.layers if patch else ():
                weights[layer].add_(patch.delta(layer))   # as WeightPatch.apply
        out[sid] = {layer: frobenius_norm(weights[layer]) / base_norm[layer] for layer in layers}
        last = (sid, weights)
    return base_norm, out


def base_matrices(path: Path, layers: list[int], *, allow_pickle: bool = False
                  ) -> dict[int, "torch.Tensor"]:
    """The base model's edited matrices as float32 (d_out, d_in), as arch.weight_of sees
    them, read from the safetensors files without building the model."""
    from kbsync.lm import arch

    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    family = arch.ARCHS.get(config.get("model_type"))
    if family is None:
        raise ModelError(f"unsupported architecture {config.get('model_type')!r}")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return _from_loaded_model(path, layers, allow_pickle)
    from safetensors import safe_open

    wanted = {layer: f"{family.blocks}.{layer}.{family.mlp_out}.weight" for layer in layers}
    found: dict[int, torch.Tensor] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            keys = list(handle.keys())
            for layer, name in wanted.items():
                key = _match(name, keys)
                if key is not None and layer not in found:
                    w = handle.get_tensor(key).float()
                    found[layer] = (w.T if family.transposed else w).contiguous()
    missing = [wanted[l] for l in layers if l not in found]
    if missing:
        raise ModelError(f"{path} has no weight {missing[0]}")
    return found


def _match(name: str, keys: list[str]) -> str | None:
    """`name` or the key that differs from it by a leading prefix: GPT-2 checkpoints say
    `h.0.mlp.c_proj.weight` for the model's `transformer.h.0.mlp.c_proj.weight`."""
    if name in keys:
        return name
    hits = [k for k in keys if name.endswith("." + k) or k.endswith("." + name)]
    return hits[0] if len(hits) == 1 else None


def _from_loaded_model(path: Path, layers: list[int], allow_pickle: bool
                       ) -> dict[int, "torch.Tensor"]:
    from kbsync.lm import arch
    from kbsync.lm.load import load_model

    lm = load_model(path, device="cpu", dtype="float32", allow_pickle=allow_pickle)
    return {layer: arch.weight_of(lm.model, layer).detach().clone().contiguous()
            for layer in layers}


def _patch(tensors: dict[str, "torch.Tensor"]) -> "WeightPatch":
    """The patch's weight deltas in float32 (its editor state is not needed here); a
    side-memory patch changes no weight."""
    from kbsync.editing.patch import WeightPatch, load_patch

    patch = load_patch(tensors)
    if not patch.layers:
        return WeightPatch.empty()
    return WeightPatch({l: (u.float(), v.float()) for l, (u, v) in patch.factors.items()}, {},
                       {l: d.float() for l, d in patch.dense.items()})


def frobenius_norm(w: "torch.Tensor") -> float:
    """‖w‖_F in float64, without a float64 copy of w."""
    import torch

    return float(torch.linalg.vector_norm(w, dtype=torch.float64))
