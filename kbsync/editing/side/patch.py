"""MemoryPatch: one batch's change to a side memory. It plays the part a WeightPatch plays
for weight editors (apply, checkpoint/restore, tensors for the object store, a chain of
them rebuilds the memory), so the scheduler, the store and rollback treat both alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kbsync.editing.side.memory import memory_for

PREFIX = "memory"


@dataclass
class MemoryPatch:
    kind: str
    layer: int
    update: dict[str, torch.Tensor]      # `<op>.<name>` -> tensor (memory.apply_update)
    state_update: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def layers(self) -> tuple:
        return ()                        # no base weight changes

    def apply(self, model) -> None:
        memory_for(model, self.kind, self.layer).apply_update(self.update)

    def checkpoint(self, model) -> dict:
        return memory_for(model, self.kind, self.layer).checkpoint()

    def restore(self, model, saved: dict) -> None:
        memory_for(model, self.kind, self.layer).restore(saved)

    def checked_tensors(self, model) -> list[torch.Tensor]:
        mem = memory_for(model, self.kind, self.layer)
        return [t for t in mem.tensors.values() if t.is_floating_point()]

    def is_empty(self) -> bool:
        return not self.update

    def is_finite(self) -> bool:
        return all(bool(torch.isfinite(t).all()) for t in self.update.values()
                   if t.is_floating_point())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"{PREFIX}.{self.kind}.{self.layer}.{k}": t.contiguous().cpu()
               for k, t in self.update.items()}
        out.update({f"state.{k}": t.contiguous() for k, t in self.state_update.items()})
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "MemoryPatch":
        kind, layer, update, state = None, None, {}, {}
        for name, t in tensors.items():
            head, rest = name.split(".", 1)
            if head == "state":
                state[rest] = t
                continue
            k, l, key = rest.split(".", 2)
            if kind not in (None, k) or layer not in (None, int(l)):
                raise ValueError("a memory patch holds one memory")
            kind, layer, update[key] = k, int(l), t
        return cls(kind, layer, update, state)

    @staticmethod
    def holds(tensors: dict) -> bool:
        return any(name.startswith(PREFIX + ".") for name in tensors)
