"""Editor memory as typed objects: what a weight editor has folded from accepted patches.

A snapshot's editor memory is the fold of its chain's patches (kbsync/editing/rebuild.py),
so each memory here is a pure function of the patches it has seen:

    fold(patch)        adds one accepted patch (its state update, and for some its Δ)
    to_tensors()       the memory under stable names, what snapshots, editor checkpoints
    from_tensors(t)    and bench checkpoints store; read back exactly

Names are `<field>.<layer>` (a field per layer) or `<field>` (one tensor), and stay as
they are within a VERSION. `to_tensors` adds `version.<TAG>` whenever there is anything to
store; `from_tensors` reads a memory without one as version 1 (written before versions
were stored) and refuses one from a newer version, rather than misread it.

Each memory lives beside the editor that keeps it:

    NoMemory          MEMIT, ROME: nothing (here)
    KeyGram           Σ K_p K_pᵀ per layer: AlphaEdit, ENCORE, NMKE (memory.py)
    RegularizerMemory NAS's anchor norm, PRUNE's accumulated update and σ₀ (regularize.py)
    LyapunovMemory    LyapLock's queues, drift and past edits (lyaplock.py)
    RLSInverse        RLSEdit's recursive inverse and the turns waiting for C₀ (rlsedit.py)
    MomentsMemory     UltraEdit's lifelong moments (ultraedit.py)

A patch's state update names what a solve added (`Solution.adds`, kbsync/editing/base.py)
with the layer appended, e.g. `keys.3`; each memory folds only the names it owns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from kbsync.errors import EditorError

Tensors = dict[str, torch.Tensor]


def per_layer(tensors: Tensors, prefix: str) -> dict[int, torch.Tensor]:
    """{layer: tensor} of the names `<prefix><layer>` (nothing after the layer)."""
    out = {}
    for name, t in tensors.items():
        rest = name[len(prefix):] if name.startswith(prefix) else ""
        if rest.isdigit():
            out[int(rest)] = t
    return out


def named(prefix: str, by_layer: dict[int, torch.Tensor]) -> Tensors:
    return {f"{prefix}{layer}": t for layer, t in sorted(by_layer.items())}


def add(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """total + value, starting from value: how a sum over patches is folded."""
    return value if total is None else total + value


class EditorState:
    """Base of the memories: the version check around each one's own names."""

    TAG: ClassVar[str]
    VERSION: ClassVar[int] = 1

    def fold(self, patch) -> None:
        raise NotImplementedError

    def keys_update(self, keys: torch.Tensor) -> Tensors:
        """What a patch carries of one layer's solve keys (d_in, n) for this memory,
        by name without the layer (KeyGram and RLSInverse: the keys themselves)."""
        return {}

    def entries(self) -> Tensors:
        raise NotImplementedError

    @classmethod
    def from_entries(cls, tensors: Tensors) -> "EditorState":
        raise NotImplementedError

    def to_tensors(self) -> Tensors:
        out = self.entries()
        if out:
            out[f"version.{self.TAG}"] = torch.tensor([self.VERSION])
        return out

    @classmethod
    def from_tensors(cls, tensors: Tensors) -> "EditorState":
        stored = tensors.get(f"version.{cls.TAG}")
        version = 1 if stored is None else int(stored)
        if version > cls.VERSION:
            raise EditorError(f"editor memory {cls.TAG!r} is version {version}; this kbsync "
                              f"reads up to {cls.VERSION}",
                              hint="upgrade kbsync to read snapshots a newer one wrote")
        own = cls.from_entries(tensors).entries()       # only this memory's names
        return cls.from_entries({k: t.clone() for k, t in own.items()})


@dataclass
class NoMemory(EditorState):
    TAG = "none"

    def fold(self, patch) -> None:
        pass

    def entries(self) -> Tensors:
        return {}

    @classmethod
    def from_entries(cls, tensors: Tensors) -> "NoMemory":
        return cls()
