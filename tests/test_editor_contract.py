"""Every registered editor is an `Editor` and both patch kinds are a `Patch`
(kbsync/editing/contract.py): what apply, bench, rebuild and watch call exists on each."""

from __future__ import annotations

import pytest

from kbsync.editing.contract import Editor, Patch
from kbsync.editing.patch import WeightPatch
from kbsync.editing.registry import EDITORS, REGULARIZERS, make_editor
from kbsync.editing.side.patch import MemoryPatch
from kbsync.testing import TINY_HPARAMS, tiny_config

NAMES = list(EDITORS) + [f"memit+{r}" for r in REGULARIZERS]


@pytest.mark.parametrize("name", NAMES)
def test_every_registered_editor_keeps_the_contract(name):
    config = tiny_config("llama", 600)
    one_layer = name in ("rome", "grace", "wise", "case")     # they refuse more
    editor = make_editor(name, config, {**TINY_HPARAMS, **({"layers": [2]} if one_layer else {})})
    assert isinstance(editor, Editor), [m for m in ("name", "hp", "last_stats", "clock",
                                                    "weight_layers", "covariances")
                                        if not hasattr(editor, m)]


@pytest.mark.parametrize("patch_class", [WeightPatch, MemoryPatch])
def test_both_patch_kinds_are_patches(patch_class):
    assert issubclass(patch_class, Patch)


def test_a_class_missing_a_member_is_not_an_editor():
    class Partial:
        name, hp, last_stats, clock = "x", None, {}, None
        weight_layers: list[int] = []

        def edit(self, lm, specs): ...
        def accept(self, patch): ...

    assert not isinstance(Partial(), Editor)
