"""Issue 20, item 3, the triggers: INSERT OR REPLACE over a seq, an insert off the next seq,
a same-named no-op trigger. Tiny and torch-free. The ledger's end (the anchor file) is in
tests/test_ledger_anchor.py; HEAD vs the ledger in tests/test_ledger_recovery.py."""

from __future__ import annotations

import sqlite3

import pytest
from ledger_tamper import _raw, _twelve_rows

from kbsync.store.ledger import Ledger


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
