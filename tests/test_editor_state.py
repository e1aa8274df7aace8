"""Editor memories as typed objects (kbsync/editing/state.py): every weight editor's memory
folds patches, round-trips through its tensors under stable names, reads a memory written
before versions were stored, and refuses one from a newer version."""

from __future__ import annotations

import pytest
import torch

from kbsync.editing.base import LocateThenEdit
from kbsync.editing.registry import make_editor
from kbsync.editing.request import EditSpec
from kbsync.errors import EditorError
from kbsync.testing import TINY_HPARAMS, edit_in_sequence, tiny_model

BATCHES = [[EditSpec("The river {subject}", "Danube", "American")],
           [EditSpec("{subject} plays", "Paul", "football"),
            EditSpec("The lake {subject} is in", "Geneva", "British")]]
# editor -> the names its memory must hold after two accepted batches (the stable names
# snapshots and editor checkpoints already store: renaming one breaks every stored memory)
NAMES = {
    "memit": set(),
    "alphaedit": {"past_kkt.1", "past_kkt.2", "version.keys"},
    "encore": {"past_kkt.1", "past_kkt.2", "version.keys"},
    "rlsedit": {"rls.C.1", "rls.C.2", "version.rls"},
    "lyaplock": {f"lyap.{w}.{l}" for w in ("queue", "d_base", "drift", "past_kkt", "past_ukt")
                 for l in (1, 2)} | {"version.lyap"},
    "lyaplock+alphaedit": {f"lyap.{w}.{l}" for w in ("queue", "d_base", "drift") for l in (1, 2)}
                          | {"version.lyap", "inner.past_kkt.1", "inner.past_kkt.2",
                             "inner.version.keys"},
    "memit+prune": {f"prune.{w}.{l}" for w in ("raw", "sigma0") for l in (1, 2)}
                   | {"version.regularizer"},
    "alphaedit+nas": {"nas.anchor", "version.regularizer", "past_kkt.1", "past_kkt.2",
                      "version.keys"},
    "ultraedit": {f"moments.{l}.{w}" for l in (1, 2) for w in ("n", "mean", "m2")}
                 | {"version.moments"},
}


@pytest.fixture(scope="module")
def folded():
    """{editor: (editor after two accepted batches, its patches)} on one tiny model."""
    lm = tiny_model("llama")
    out = {}
    originals = {k: v.clone() for k, v in lm.model.state_dict().items()}
    for name in NAMES:
        out[name] = edit_in_sequence(name, lm, BATCHES)
        lm.model.load_state_dict(originals)
    return lm, out


@pytest.mark.parametrize("name", list(NAMES))
def test_memory_names_are_stable(folded, name):
    lm, editors = folded
    state = editors[name][0].state_dict()
    names = set(state)
    if name == "ultraedit":        # RunningMoments' own fields besides n, mean, m2
        names = {n for n in names if not n.startswith("moments.") or
                 n.rsplit(".", 1)[1] in ("n", "mean", "m2")}
    assert names == NAMES[name]


@pytest.mark.parametrize("name", list(NAMES))
def test_memory_round_trips_and_refolds_exactly(folded, name):
    lm, editors = folded
    editor, patches = editors[name]
    state = editor.state_dict()
    loaded = make_editor(name, lm.model.config, TINY_HPARAMS)
    loaded.load_state_dict(state)
    refolded = make_editor(name, lm.model.config, TINY_HPARAMS)
    for patch in patches:
        refolded.accept(patch)
    if name == "rlsedit":      # C₀ needs the statistics: the turns wait for the next solve
        assert set(refolded.memory.pending) == {1, 2}
        covs = refolded.covariances(lm)
        for layer in (1, 2):
            refolded.inverse(layer, covs[layer].double())
    for other in (loaded, refolded):
        got = other.state_dict()
        assert got.keys() == state.keys()
        assert all(torch.equal(got[k], state[k]) for k in state)


@pytest.mark.parametrize("name", [n for n in NAMES if NAMES[n]])
def test_a_memory_without_versions_is_read_as_version_1(folded, name):
    lm, editors = folded
    state = editors[name][0].state_dict()
    old = {k: t for k, t in state.items() if "version." not in k}   # as written before
    loaded = make_editor(name, lm.model.config, TINY_HPARAMS)
    loaded.load_state_dict(old)
    assert loaded.state_dict().keys() == state.keys()


@pytest.mark.parametrize("name", [n for n in NAMES if NAMES[n]])
def test_a_memory_from_a_newer_version_is_refused(folded, name):
    lm, editors = folded
    state = dict(editors[name][0].state_dict())
    tag = next(k for k in state if "version." in k)
    state[tag] = torch.tensor([99])
    with pytest.raises(EditorError, match="version 99"):
        make_editor(name, lm.model.config, TINY_HPARAMS).load_state_dict(state)


def test_loading_does_not_share_tensors_with_the_source(folded):
    lm, editors = folded
    state = editors["alphaedit"][0].state_dict()
    loaded = make_editor("alphaedit", lm.model.config, TINY_HPARAMS)
    loaded.load_state_dict(state)
    loaded.memory.past_kkt[1].add_(1.0)
    assert not torch.equal(loaded.memory.past_kkt[1], state["past_kkt.1"])


def test_a_solve_returns_what_it_adds_and_the_patch_carries_it_per_layer(folded):
    lm, editors = folded
    editor, patches = editors["lyaplock"]
    assert isinstance(editor, LocateThenEdit)
    update = patches[-1].state_update
    for layer in (1, 2):
        for what in ("queue", "d_base", "keys", "values"):
            assert f"lyap.{what}.{layer}" in update
    assert not hasattr(editor, "_pending")
