"""SideEditor: the Editor protocol for side-memory editors.

    edit(lm, specs) -> MemoryPatch    reads the model's memory, computes the batch's change
    accept(patch)                     nothing to fold: the memory lives in the model and is
                                      rebuilt from the chain of patches like weights are
Each editor provides `kind` (its SideMemory) and `update(lm, specs, memory) -> dict`."""

from __future__ import annotations

import random

import torch

from kbsync.editing.clock import PhaseClock
from kbsync.editing.contexts import context_templates
from kbsync.editing.hparams import HParams
from kbsync.editing.request import EditSpec
from kbsync.editing.side.memory import SideMemory, memory_for
from kbsync.editing.side.patch import MemoryPatch
from kbsync.errors import EditorError


class SideEditor:
    name = "side"
    kind = "side"
    default_batch_size = 10

    def __init__(self, hparams: HParams):
        if len(hparams.layers) != 1:
            raise EditorError(f"{self.name} edits one layer; got layers {list(hparams.layers)}",
                              hint="set hparams: {layers: [L]}")
        self.hp = hparams
        self.layer = hparams.layers[0]
        self.x = hparams.extra           # the editor's own knobs (hparams/<name>.yaml)
        self.last_stats: dict = {}
        self.clock = PhaseClock()
        self.rng = random.Random(hparams.seed)

    def update(self, lm, specs: list[EditSpec], memory: SideMemory) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def contexts(self, lm) -> list[str]:
        return context_templates(lm, self.hp.contexts, self.hp.context_length, self.hp.seed)

    @property
    def weight_layers(self) -> list[int]:
        return []                        # the model's weights stay as they are

    def covariances(self, lm) -> dict:
        return {}                        # no statistics: `bench` times them as zero

    def edit(self, lm, specs: list[EditSpec]) -> MemoryPatch:
        memory = memory_for(lm.model, self.kind, self.layer)
        with self.clock.phase("targets", lm.device):
            update = self.update(lm, specs, memory) if specs else {}
        patch = MemoryPatch(self.kind, self.layer, update)
        if not patch.is_finite():
            raise EditorError(f"{self.name}: non-finite memory update")
        return patch

    def accept(self, patch) -> None:
        pass

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        pass
