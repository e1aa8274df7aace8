"""Issue 20, items 1 and 3: HEAD ahead of a silent ledger; the ledger's end, rewrites and
triggers. Tiny and torch-free (hand-made manifests, a few ledger rows), except the two
apply tests at the end, which run one MEMIT edit on the tiny Llama of the other apply tests.

    item 1  a committed snapshot the ledger lacks: audit names it, recovery records it
            (for every run, not only open ones), a run whose HEAD moved is never run_failed
    item 3  rows cut off the end, the newest row rewritten, INSERT OR REPLACE over a seq,
            a same-named no-op trigger, the anchor file itself
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

import kbsync.recovery as recovery
from kbsync.cli import main
from kbsync.errors import IntegrityError
from kbsync.history import audit_verify
from kbsync.project import Project
from kbsync.store.ledger import SCHEMA, Ledger, row_hash
from kbsync.store.snapshots import Manifest, SnapshotStore

KEY = "Danube/R1"


# ------------------------------------------------------------------ helpers

def _project(tmp_path: Path) -> Project:
    root = tmp_path / "proj"
    (root / ".kbsync").mkdir(parents=True)
    (root / "kbsync.yaml").write_text("model: none\n")      # audit never reads the config
    return Project(root)


def _twelve_rows(ledger: Ledger) -> str:
    """A run of 12 rows whose edit was rejected: no snapshot, so no manifest anchors it."""
    run = ledger.start_run("apply")                                          # rows 1, 2
    for batch in range(8):
        ledger.event(run, "batch_started", batch=batch)                      # rows 3..10
    ledger.record_edit(run, KEY, "add", "rejected", new_object="British")    # row 11
    ledger.event(run, "run_committed")                                       # row 12
    return run


def _raw(path: Path, *sql: str) -> None:
    """Run SQL as an attacker would: a plain connection, no kbsync."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in sql:
            conn.execute(statement)
    finally:
        conn.close()


def _triggers(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"))
    finally:
        conn.close()


def _truncate(path: Path, n: int) -> None:
    """Drop the delete triggers, delete the newest n rows, put the triggers back as they were."""
    saved = {name: sql for name, sql in _triggers(path).items() if name.endswith("_no_delete")}
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        last = max(conn.execute(f"SELECT COALESCE(MAX(seq), 0) FROM {t}").fetchone()[0]
                   for t in SCHEMA)
        for name in saved:
            conn.execute(f"DROP TRIGGER {name}")
        for table in SCHEMA:
            conn.execute(f"DELETE FROM {table} WHERE seq > ?", [last - n])
        for sql in saved.values():
            conn.execute(sql)
    finally:
        conn.close()


def _rewrite_newest(path: Path) -> None:
    """Rewrite the newest row in place (INSERT OR REPLACE, same seq) with a valid hash:
    the chain alone cannot tell. The triggers that would refuse it go first, and come back."""
    saved = {name: sql for name, sql in _triggers(path).items() if name.startswith("events_")}
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    try:
        row = dict(conn.execute("SELECT * FROM events ORDER BY seq DESC LIMIT 1").fetchone())
        for name in saved:
            conn.execute(f"DROP TRIGGER {name}")
        row["kind"] = "run_failed"
        row["row_hash"] = row_hash("events", row, row["prev_hash"])
        marks = ", ".join("?" * len(row))
        conn.execute(f"INSERT OR REPLACE INTO events ({', '.join(row)}) VALUES ({marks})",
                     list(row.values()))
        for sql in saved.values():
            conn.execute(sql)
    finally:
        conn.close()


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


# ------------------------------------------------------------------ item 3: the ledger's end

@pytest.mark.parametrize("deleted", [1, 3, 9])
def test_rows_cut_off_the_end_are_caught_by_the_anchor(tmp_path, deleted):
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _twelve_rows(ledger)
        assert ledger.verify() == []
    _truncate(path, deleted)
    with Ledger(path) as ledger:
        problems = ledger.verify()
        assert len(problems) == 1 and "rows were removed from its end" in problems[0], problems
        assert f"ends at seq {12 - deleted}" in problems[0]
        with pytest.raises(IntegrityError, match="no longer matches its anchor"):
            ledger.event(None, "tick")          # never re-anchor a truncated ledger
        assert ledger.head_seq() == 12 - deleted


@pytest.mark.parametrize("sql, why", [
    ("INSERT OR REPLACE INTO events (seq, at, kind, prev_hash, row_hash) "
     "VALUES (12, 'x', 'run_failed', 'p', 'h')", "an existing seq (rewrite in place)"),
    ("INSERT INTO edits (seq, at, fact_key, op, status, prev_hash, row_hash) "
     "VALUES (0, 'x', 'k', 'add', 'applied', 'p', 'h')", "a lower seq"),
    ("INSERT INTO gates (seq, at, metric, prev_hash, row_hash) "
     "VALUES (14, 'x', 'm', 'p', 'h')", "a seq past the next"),
    ("INSERT INTO runs (at, run_id, command, prev_hash, row_hash) "
     "VALUES ('x', 'r', 'apply', 'p', 'h')", "no seq"),
])
def test_inserts_off_the_next_seq_are_refused(tmp_path, sql, why):
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _twelve_rows(ledger)
    with pytest.raises(sqlite3.IntegrityError, match="must take the next seq"):
        _raw(path, sql)
    with Ledger(path) as ledger:
        assert ledger.head_seq() == 12 and ledger.verify() == [], why


def test_newest_row_rewritten_with_a_valid_hash_is_caught(tmp_path):
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _twelve_rows(ledger)
    _rewrite_newest(path)
    with Ledger(path) as ledger:
        problems = ledger.verify()
    assert problems == [problems[0]] and "seq 12 has row_hash" in problems[0], problems
    assert "the row was rewritten" in problems[0]


@pytest.mark.parametrize("tamper, named", [
    (["DROP TRIGGER edits_no_delete"], "append-only trigger edits_no_delete is missing"),
    (["DROP TRIGGER events_next_seq"], "append-only trigger events_next_seq is missing"),
    (["DROP TRIGGER runs_no_update", "CREATE TRIGGER runs_no_update BEFORE UPDATE ON runs "
      "BEGIN SELECT 1; END"], "append-only trigger runs_no_update was changed"),   # a no-op
    (["CREATE TRIGGER events_fixup AFTER INSERT ON events BEGIN SELECT 1; END"],
     "trigger events_fixup on events is not kbsync's"),
])
def test_triggers_are_compared_by_sql_not_name(tmp_path, tamper, named):
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _twelve_rows(ledger)
    _raw(path, *tamper)
    with Ledger(path) as ledger:
        problems = ledger.verify()
    assert any(p.startswith(named) for p in problems), problems


@pytest.mark.parametrize("tamper, named", [
    (lambda anchor: anchor.unlink(), "is missing"),
    (lambda anchor: anchor.write_text("{}"), "is not an anchor"),
    (lambda anchor: anchor.write_text(anchor.read_text().replace('seq":12', 'seq":11')),
     "was rewritten"),                       # an anchor moved back: seq 11's hash differs
])
def test_a_damaged_anchor_file_is_named_and_refuses_writes(tmp_path, tamper, named):
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _twelve_rows(ledger)
        tamper(ledger.anchor_path)
        problems = ledger.verify()
        assert len(problems) == 1 and named in problems[0], problems
        with pytest.raises(IntegrityError):
            ledger.event(None, "tick")


def test_a_deleted_ledger_is_not_silently_recreated(tmp_path):
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _twelve_rows(ledger)
    for p in tmp_path.glob("ledger.db*"):
        p.unlink()
    with pytest.raises(IntegrityError, match="deleted or replaced"):
        Ledger(path)


def test_anchor_is_settled_after_each_transaction_and_tolerates_its_kill_windows(tmp_path,
                                                                                 monkeypatch):
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        run = _twelve_rows(ledger)
        anchor = ledger.anchor()
        assert (anchor["seq"], anchor["row_hash"]) == (12, ledger.head_hash())
        assert (anchor["prev_seq"], anchor["prev_hash"]) == (12, ledger.head_hash())  # settled
        # killed between the pending anchor and the COMMIT: the rows never landed
        real = Ledger._write_anchor
        def killed(self, before):
            real(self, before)
            raise KeyboardInterrupt
        with monkeypatch.context() as mp:
            mp.setattr(Ledger, "_write_anchor", killed)
            with pytest.raises(KeyboardInterrupt):
                ledger.event(run, "tick")
        assert ledger.head_seq() == 12 and ledger.anchor()["seq"] == 13
        assert ledger.verify() == []
        # killed between the COMMIT and the settling write: the rows landed
        with monkeypatch.context() as mp:
            mp.setattr(Ledger, "_settle_anchor", lambda self, head: None)
            ledger.event(run, "tick")
        assert ledger.anchor()["prev_seq"] == 12 and ledger.verify() == []
        ledger.event(run, "tick")                          # the next write settles it
        assert ledger.anchor()["prev_seq"] == ledger.anchor()["seq"] == 14
        assert ledger.verify() == []


def test_rows_appended_behind_kbsyncs_back_are_named(tmp_path):
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _twelve_rows(ledger)
        row = {"seq": 13, "at": "2026-01-01T00:00:00Z", "kind": "run_committed",
               "prev_hash": ledger.head_hash()}
    row["row_hash"] = row_hash("events", row, row["prev_hash"])
    _raw(path, "INSERT INTO events (seq, at, kind, prev_hash, row_hash) VALUES "
               f"(13, '{row['at']}', 'run_committed', '{row['prev_hash']}', '{row['row_hash']}')")
    with Ledger(path) as ledger:
        problems = ledger.verify()
    assert len(problems) == 1 and "rows 13..13 come after the anchored head" in problems[0]


def test_a_schema_1_ledger_is_anchored_when_opened(tmp_path):
    path = tmp_path / "ledger.db"
    with Ledger(path) as ledger:
        _twelve_rows(ledger)
        anchor_path = ledger.anchor_path
    anchor_path.unlink()
    _raw(path, *[f"DROP TRIGGER {t}_next_seq" for t in SCHEMA], "PRAGMA user_version=1")
    with Ledger(path) as ledger:
        assert ledger.verify() == [] and ledger.anchor()["seq"] == 12
        assert set(_triggers(path)) >= {f"{t}_next_seq" for t in SCHEMA}


@pytest.mark.parametrize("tamper", ["truncate 3", "rewrite newest"])
def test_kbsync_audit_verify_exits_5(tmp_path, tamper):
    project = _project(tmp_path)
    with project.ledger() as ledger:
        _twelve_rows(ledger)
    runner = CliRunner()
    assert runner.invoke(main, ["-C", str(project.root), "audit", "verify"]).exit_code == 0
    path = project.kbsync_dir / "ledger.db"
    _truncate(path, 3) if tamper == "truncate 3" else _rewrite_newest(path)
    result = runner.invoke(main, ["-C", str(project.root), "audit", "verify"])
    assert result.exit_code == 5, result.output
    assert "ledger anchor: seq 12" in result.output


# ------------------------------------------------------------------ item 1: HEAD vs ledger

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
