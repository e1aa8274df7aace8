"""Issue 20, item 1: HEAD ahead of a silent ledger. A committed snapshot the ledger lacks: audit
names it, recovery records it (for every run, not only open ones), a run whose HEAD moved is
never run_failed. Torch-free (hand-made manifests, a few ledger rows), except the two apply
tests at the end, which run one MEMIT edit on the tiny Llama of the other apply tests."""

from __future__ import annotations

import sqlite3

import pytest
from ledger_tamper import KEY, _project, _twelve_rows

import kbsync.recovery as recovery
from kbsync.history import audit_verify
from kbsync.project import Project
from kbsync.store.ledger import Ledger
from kbsync.store.manifest import Manifest
from kbsync.store.snapshots import SnapshotStore


def _commit(project: Project, run_id: str | None, parent: str | None = None) -> str:
    """A committed snapshot (manifest + HEAD), as apply's commit point leaves it."""
    store = SnapshotStore(project.kbsync_dir)
    serial = store.read(parent).serial + 1 if parent else 1
    manifest = Manifest(parent=parent, serial=serial, base_model="tiny", editor="memit",
                        facts=store.objects.put_text("{}"), facts_hash="h", run_id=run_id,
                        meta={"batch": serial, "edits": [
                            {"fact_key": KEY, "op": "add", "new_object": f"obj{serial}",
                             "pre_answer": "France"}]})
    sid = store.write(manifest)
    store.set_head(sid)
    return sid


def _record(ledger: Ledger, project: Project, sid: str) -> None:
    recovery.record_committed(ledger, sid, SnapshotStore(project.kbsync_dir).read(sid))


def _outcome(ledger: Ledger, run_id: str) -> str | None:
    return {r["run_id"]: r["outcome"] for r in ledger.runs()}[run_id]


@pytest.mark.parametrize("ended, flagged, outcome", [
    ("run_failed", True, "run_recovered"),      # the bug: HEAD moved, then run_failed
    (None, False, "run_interrupted"),           # killed in the crash window: pending
])
def test_a_committed_snapshot_missing_from_the_ledger(tmp_path, ended, flagged, outcome):
    project = _project(tmp_path)
    with project.ledger() as ledger:
        run = ledger.start_run("apply")
        first = _commit(project, run)
        _record(ledger, project, first)
        second = _commit(project, run, parent=first)      # HEAD moved; its rows never came
        if ended:
            ledger.event(run, ended, error="database is locked")
    problems = audit_verify(project)
    assert any(second[:12] in p and "no ledger row" in p for p in problems) == flagged, problems
    assert not any(first[:12] in p for p in problems)
    with project.ledger() as ledger:
        recovery.recover(project, ledger, lambda event: None)
        assert second in [r["snapshot_id"] for r in ledger.rows("snapshots")]
        assert _outcome(ledger, run) == outcome
        edit = ledger.latest_edit_for(KEY)
        assert (edit["new_object"], edit["pre_answer"]) == ("obj2", "France")
    assert audit_verify(project) == []


def test_a_snapshot_with_no_run_at_all_is_flagged(tmp_path):
    project = _project(tmp_path)
    with project.ledger() as ledger:
        _twelve_rows(ledger)
    sid = _commit(project, run_id="20260101T000000Z-deadbeef")
    problems = audit_verify(project)
    assert any(sid[:12] in p and "is not open" in p for p in problems), problems


def test_recovery_fast_path_reads_no_manifest_once_reconciled(tmp_path, monkeypatch):
    project = _project(tmp_path)
    with project.ledger() as ledger:
        run = ledger.start_run("apply")
        sids = [_commit(project, run)]
        for _ in range(3):
            sids.append(_commit(project, run, parent=sids[-1]))
        ledger.event(run, "run_failed", error="disk full")
        recovery.recover(project, ledger, lambda event: None)
        assert [r["snapshot_id"] for r in ledger.rows("snapshots")] == sids
        monkeypatch.setattr(SnapshotStore, "read", lambda *a: pytest.fail("read a manifest"))
        assert recovery.unrecorded(SnapshotStore(project.kbsync_dir), ledger) == []


def _disk_full(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("moved, writable, outcome", [
    (True, True, "run_interrupted"),
    (False, True, "run_failed"),
    (True, False, None),            # the ledger still refuses: open, for the next recover
])
def test_end_failed_run(tmp_path, monkeypatch, moved, writable, outcome):
    project = _project(tmp_path)
    with project.ledger() as ledger:
        run = ledger.start_run("apply")
        if moved:
            sid = _commit(project, run)
        with monkeypatch.context() as mp:
            if not writable:
                mp.setattr(Ledger, "append", _disk_full)
            recovery.end_failed_run(project, ledger, run, OSError(28, "No space left on device"))
        assert _outcome(ledger, run) == outcome
        recorded = [r["snapshot_id"] for r in ledger.rows("snapshots")]
        assert recorded == ([sid] if moved and writable else [])
    assert audit_verify(project) == []


# ------------------------------------------------------------------ item 1 through apply

@pytest.mark.parametrize("failing", [1, 10**6])   # the rows' write fails once / keeps failing
def test_apply_whose_ledger_fails_after_head_moved(applied, monkeypatch, failing):
    from kbproject import FACTS, NEW, head, key, runs, write_facts
    from kbsync.apply import apply

    old = head(applied)
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    armed = {"left": 0}
    real_set_head, real_append = SnapshotStore.set_head, Ledger.append

    def set_head(self, snapshot_id):
        real_set_head(self, snapshot_id)
        armed["left"] = failing              # from the commit point on, the ledger fails

    def append(self, table, row):
        if armed["left"] > 0:
            armed["left"] -= 1
            raise sqlite3.OperationalError("disk I/O error")
        return real_append(self, table, row)

    with monkeypatch.context() as mp:
        mp.setattr(SnapshotStore, "set_head", set_head)
        mp.setattr(Ledger, "append", append)
        with pytest.raises(sqlite3.OperationalError):
            apply(applied)
    committed = head(applied)
    assert committed != old
    run = runs(applied)[-1]
    assert run["outcome"] == ("run_interrupted" if failing == 1 else None)   # never run_failed
    assert audit_verify(applied) == []

    assert apply(applied).run_id is None      # recovery; then nothing is left to do
    assert runs(applied)[-1]["outcome"] == "run_interrupted"
    with Ledger(applied.kbsync_dir / "ledger.db") as ledger:
        assert committed in [r["snapshot_id"] for r in ledger.rows("snapshots")]
        edit = ledger.latest_edit_for(key("Danube"))
    assert edit["new_object"] == NEW and edit["pre_answer"].startswith(FACTS["Danube"])
    assert audit_verify(applied) == []
