"""Issue 20, item 3, the ledger's end: rows cut off the end, the newest row rewritten, rows
appended behind kbsync's back, the anchor file itself (kbsync.store.anchor). Tiny and torch-free."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from ledger_tamper import _project, _raw, _twelve_rows

from kbsync.cli.main import main
from kbsync.errors import IntegrityError
from kbsync.store.ledger import SCHEMA, Ledger, row_hash


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


def test_audit_verify_of_a_fresh_project_creates_nothing(tmp_path):
    project = _project(tmp_path)
    result = CliRunner().invoke(main, ["-C", str(project.root), "audit", "verify"])
    assert result.exit_code == 0, result.output
    assert list(project.kbsync_dir.iterdir()) == []      # a check never creates a ledger


def test_audit_verify_names_a_ledger_deleted_with_its_anchor(tmp_path):
    project = _project(tmp_path)
    with project.ledger() as ledger:
        _twelve_rows(ledger)
    (project.kbsync_dir / "snapshots").mkdir()
    (project.kbsync_dir / "snapshots" / f"{'ab' * 32}.json").write_text("{}")
    for p in project.kbsync_dir.glob("ledger.*"):
        p.unlink()
    result = CliRunner().invoke(main, ["-C", str(project.root), "audit", "verify"])
    assert result.exit_code == 5, result.output
    assert "ledger.db is missing" in result.output
    assert not (project.kbsync_dir / "ledger.db").exists()
