"""The editor contract: what apply, bench, rebuild and watch call, as types.

    editor.edit(lm, specs) -> Patch      computes; leaves the model as it found it
    patch.apply(model)                   the candidate (apply keeps `checkpoint` to undo)
    editor.accept(patch)                 folds the patch's state update into the editor
    editor.state_dict() / load_state_dict(state)

A snapshot's model and editor are rebuilt by applying and accepting every patch along its
chain in order (kbsync/editing/rebuild.py); an editor whose `accept` is a pure function of
(state, patch) therefore rebuilds bit for bit in any process. A weight editor's memory is a
typed, versioned object whose `fold(patch)` is that function (kbsync/editing/state.py). Weight editors
(kbsync/editing/base.py:LocateThenEdit, UltraEdit) return a WeightPatch, side-memory
editors (kbsync/editing/side/base.py:SideEditor) a MemoryPatch; both are `Patch`.
tests/test_editor_contract.py checks every registered editor against these protocols."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from kbsync.editing.clock import PhaseClock
from kbsync.editing.request import EditSpec


@runtime_checkable
class Patch(Protocol):
    """One batch's change: weights (WeightPatch) or side memory (MemoryPatch)."""

    def apply(self, model) -> None: ...
    def checkpoint(self, model) -> dict: ...
    def restore(self, model, saved: dict) -> None: ...
    def checked_tensors(self, model) -> list[torch.Tensor]: ...
    def is_empty(self) -> bool: ...
    def is_finite(self) -> bool: ...
    def nbytes(self) -> int: ...
    def tensors(self) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class Editor(Protocol):
    """An editing method, as kbsync/editing/registry.py makes it from its hparams."""

    name: str
    hp: Any                          # HParams: recorded in the ledger and manifests
    last_stats: dict                 # the last edit's figures (bench progress lines)
    clock: PhaseClock                # per-phase seconds (bench speed)
    default_batch_size: int          # apply's batch when kbsync.yaml sets none

    @property
    def weight_layers(self) -> list[int]: ...    # layers whose weights patches change
    def covariances(self, lm) -> dict[int, torch.Tensor]: ...
    def edit(self, lm, specs: list[EditSpec]) -> Patch: ...
    def accept(self, patch: Patch) -> None: ...
    def state_dict(self) -> dict[str, torch.Tensor]: ...
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...
