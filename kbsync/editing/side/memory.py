"""A routed memory at one layer's MLP out-projection, installed as a forward hook.

The memory is a set of named tensors (safetensors-friendly: no Python objects) plus a
`route(x, out)` that each kind defines: x is the out-projection's input (..., d_in), out its
output (..., d_out); the result replaces out. A batch's change arrives as an update (see
`apply_update`): rows appended, rows set, or tensors replaced. Tensors are never changed in
place, so a shallow copy of `tensors` is an exact checkpoint: that is how a batch the gates
refuse is taken out again.

The memory is part of the model object (`model._kbsync_side`), so everything that runs the
model (gates, ask, export, evaluation) sees the routed forward."""

from __future__ import annotations

from typing import ClassVar

import torch

from kbsync.lm import arch

class SideMemory:
    kind: ClassVar[str] = "side"

    def __init__(self, layer: int, tensors: dict[str, torch.Tensor] | None = None):
        self.layer = layer
        self.tensors: dict[str, torch.Tensor] = dict(tensors or {})
        self.enabled = True
        self.device = None           # the edited layer's, once installed
        self._handle = None
        self.refresh()

    # -- what kinds provide -------------------------------------------------------------
    def route(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def refresh(self) -> None:
        """Recompute derived caches after the tensors changed."""

    # -- the hook ------------------------------------------------------------------------
    def install(self, model) -> None:
        self.device = arch.weight_of(model, self.layer).device
        self.tensors = {name: self._here(t) for name, t in self.tensors.items()}
        module = arch.mlp_out(model, self.layer)
        self._handle = module.register_forward_hook(self._hook)
        registry = model.__dict__.setdefault("_kbsync_side", {})
        registry[(self.kind, self.layer)] = self

    def _hook(self, _module, inputs, output):
        if not self.enabled or not self.tensors:
            return output
        x = inputs[0]
        routed = self.route(x.float(), output.float())
        return routed.to(output.dtype)

    # -- updates -------------------------------------------------------------------------
    def apply_update(self, update: dict[str, torch.Tensor]) -> None:
        """update names are `<op>.<tensor>`: append (rows, dim 0), set (rows at
        `index.<tensor>`), put (the whole tensor)."""
        for key, value in update.items():
            op, name = key.split(".", 1)
            if op == "index":
                continue
            current, value = self.tensors.get(name), self._here(value)
            if op == "append":
                self.tensors[name] = value.clone() if current is None else torch.cat([current, value.to(current)])
            elif op == "set":
                changed = current.clone()
                changed[update[f"index.{name}"].long()] = value.to(current)
                self.tensors[name] = changed
            elif op == "put":
                self.tensors[name] = value.clone()
            else:
                raise ValueError(f"unknown memory update {key!r}")
        self.refresh()

    def checkpoint(self) -> dict[str, torch.Tensor]:
        return dict(self.tensors)

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        self.tensors = {name: self._here(t) for name, t in saved.items()}
        self.refresh()

    def _here(self, t: torch.Tensor) -> torch.Tensor:
        """On the edited layer's device: updates and stored tensors arrive on the CPU."""
        return t if self.device is None else t.to(self.device)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def memory_kinds() -> dict[str, type[SideMemory]]:
    """Kind -> SideMemory class, as the editor registry names them (imported on first use:
    this module is the kinds' base, so it cannot import them; tests/test_layers.py)."""
    from kbsync.editing.registry import load_target, side_memory_targets

    kinds = {}
    for kind, where in side_memory_targets().items():
        cls = load_target(where)
        if cls.kind != kind:
            raise TypeError(f"{where} is kind {cls.kind!r}, but the registry names it {kind!r}")
        kinds[kind] = cls
    return kinds


def attached(model) -> dict[tuple[str, int], SideMemory]:
    return model.__dict__.get("_kbsync_side", {})


def memory_for(model, kind: str, layer: int) -> SideMemory:
    """The model's memory of this kind at this layer, installed empty on first use."""
    found = attached(model).get((kind, layer))
    if found is None:
        found = memory_kinds()[kind](layer)
        found.install(model)
    return found


# -- whole memories, for export and the loader (`kbsync.load_model`) ---------------------
def memory_tensors(model) -> dict[str, torch.Tensor]:
    """Every attached memory as flat safetensors entries `<kind>.<layer>.<name>`."""
    return {f"{kind}.{layer}.{name}": t.contiguous().cpu()
            for (kind, layer), mem in attached(model).items() for name, t in mem.tensors.items()}


def attach_memory_tensors(model, flat: dict[str, torch.Tensor]) -> None:
    grouped: dict[tuple[str, int], dict] = {}
    for key, t in flat.items():
        kind, layer, name = key.split(".", 2)
        grouped.setdefault((kind, int(layer)), {})[name] = t
    kinds = memory_kinds()
    for (kind, layer), tensors in grouped.items():
        if kind not in kinds:
            raise ValueError(f"unknown side-memory kind {kind!r} (known: {', '.join(kinds)})")
        memory_for(model, kind, layer).restore(tensors)

