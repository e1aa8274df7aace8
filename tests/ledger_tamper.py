"""Shared by the tests/test_ledger_*.py files: a bare project, a 12-row ledger, and raw SQL
as an attacker would run it (no kbsync)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from kbsync.project import Project
from kbsync.store.ledger import Ledger

KEY = "Danube/R1"


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
