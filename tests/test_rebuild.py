"""Consolidated checkpoints (issue 22): loading a snapshot through them is bit-identical to
replaying every patch of its chain, and replays fewer than `checkpoint_every` patches
however long the chain; rollbacks and gc keep them right. A tiny random Llama (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from kbproject import cli, make_project
from kbsync.cli.printers import human_bytes
from kbsync.apply import apply
from kbsync.editing import rebuild
from kbsync.editing.rebuild import load_at
from kbsync.history import audit_verify, gc, log, rollback, show
from kbsync.project import Project
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import read_applied_state

EVERY, EDITOR_EVERY = 3, 4          # patches between weights / editor checkpoints
# gates that pass every batch: this file is about what is stored, not about edit quality
OPEN_GATES = dict(efficacy_min=0.0, locality_min=0.0, kl_max=1e9, retention_min=0.0,
                  ppl_drift_max=1e9)
# one target each, so an edit does not make a later fact already known
FACTS = {"Danube": "British", "Volga": "American", "Rhine": "November", "Thames": "football",
         "Seine": "University", "Loire": "played", "Elbe": "New"}


def facts(n: int) -> dict[str, str]:
    return dict(list(FACTS.items())[:n])


def project_with(root, model_dir, n: int, editor: str = "alphaedit") -> Project:
    make_project(root, model_dir, facts(n), editor=editor, batch_size=1,
                 gates=OPEN_GATES)
    config = yaml.safe_load((root / "kbsync.yaml").read_text())
    (root / "kbsync.yaml").write_text(yaml.safe_dump(
        {**config, "checkpoint_every": EVERY, "editor_checkpoint_every": EDITOR_EVERY}))
    return Project(root)


def count_patch_loads(monkeypatch) -> list:
    calls = []
    real = rebuild.load_patch
    monkeypatch.setattr(rebuild, "load_patch", lambda t: calls.append(1) or real(t))
    return calls


def assert_same(a, b) -> None:
    (lm_a, ed_a), (lm_b, ed_b) = a, b
    wa, wb = lm_a.model.state_dict(), lm_b.model.state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    if ed_a is not None:
        sa, sb = ed_a.state_dict(), ed_b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def chain(tmp_path, tiny_llama_dir):
    """Two runs: 4 facts, then 3 more, one snapshot each: checkpoints at serials 3 and 6,
    the second run started from the first's checkpoint."""
    root = tmp_path / "proj"
    project = project_with(root, tiny_llama_dir, 4)
    assert len(apply(project).applied) == 4
    project = project_with(root, tiny_llama_dir, 7)
    assert len(apply(project).applied) == 3
    return project


def test_checkpoints_are_bit_identical_to_replay_and_bound_the_replay(chain, monkeypatch):
    store = SnapshotStore(chain.kbsync_dir)
    snaps = store.chain(store.head())
    assert len(snaps) == 7 and all(m.patch for m in snaps)
    assert [bool(m.checkpoint) for m in snaps] == [i % EVERY == EVERY - 1 for i in range(7)]
    assert [bool(m.editor_checkpoint) for m in snaps] == [i % EDITOR_EVERY == EDITOR_EVERY - 1
                                                          for i in range(7)]
    ids = [sid for sid, _ in store.lineage(store.head())]
    calls = count_patch_loads(monkeypatch)
    for i, sid in enumerate(ids):
        calls.clear()
        fast = load_at(chain, sid)
        replayed = len(calls)
        # only the patches after the nearest checkpoints, each read once for both
        assert replayed == max((i + 1) % EVERY, (i + 1) % EDITOR_EVERY) < EDITOR_EVERY
        calls.clear()
        assert_same(load_at(chain, sid, with_editor=False), fast[:1] + (None,))
        assert len(calls) == (i + 1) % EVERY                       # weights alone: fewer
        calls.clear()
        full = load_at(chain, sid, checkpoints=False)
        assert len(calls) == i + 1
        assert_same(fast, full)
    assert any(torch.count_nonzero(t) for t in fast[1].state_dict().values())  # a real memory


def test_rollback_and_gc_keep_checkpoints_right(chain):
    store = SnapshotStore(chain.kbsync_dir)
    ids = [sid for sid, _ in store.lineage(store.head())]
    back = rollback(chain, ids[4][:12])["snapshot"]         # serial 5: after the first checkpoint
    assert gc(chain)["objects"] == [] and audit_verify(chain) == []
    # the bytes each snapshot added: a rollback only its manifest, a checkpoint its tensors
    sizes = {e["id"]: e["bytes"] for e in log(chain) if e["kind"] == "snapshot"}
    shown = show(chain, back[:12])
    assert list(shown["bytes_by_field"]) == ["manifest"] and shown["bytes"] == sizes[back]
    by_field = show(chain, ids[2])["bytes_by_field"]
    assert {"patch", "facts", "checkpoint"} <= set(by_field) and "facts_base" not in by_field
    assert sizes[ids[2]] == sum(by_field.values()) > sizes[ids[1]]
    printed = cli(chain, "log").stdout
    assert f"{human_bytes(sizes[back]):>8} (HEAD) rollback of {ids[4][:12]}" in printed
    assert_same(load_at(chain, back), load_at(chain, ids[4], checkpoints=False))
    # a run after the rollback: its chain is the rolled-back-to one, checkpoints included
    undone = set(facts(7)) - {k.split("/")[0] for k in read_applied_state(chain.kbsync_dir).kb.facts}
    project = project_with(chain.root, Path(chain.config.model), 7)
    assert sorted(apply(project).applied) == sorted(f"{s}/R1" for s in undone) and len(undone) == 2
    head = store.head()
    assert_same(load_at(project, head), load_at(project, head, checkpoints=False))
    after = [m for m in store.chain(head) if m.serial > 8]  # the run after the rollback (serial 8)
    assert [bool(m.checkpoint) for m in after] == [True, False]   # 3 patches since serial 3
    assert audit_verify(project) == []


def test_a_checkpoint_that_does_not_fit_the_model_is_refused(chain):
    store = SnapshotStore(chain.kbsync_dir)
    sha = next(m.checkpoint for m in store.chain(store.head()) if m.checkpoint)
    lm, _ = load_at(chain, None, with_editor=False)
    lm.model.to(torch.bfloat16)                  # a replay in bf16 rounds differently
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    assert not rebuild.restore_weights(store.objects, sha, lm.model)
    assert all(torch.equal(before[k], v) for k, v in lm.model.state_dict().items())
