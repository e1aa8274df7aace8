"""Ledger: append-only triggers, hash chain, verify naming the first bad seq, run queries."""

from __future__ import annotations

import multiprocessing
import sqlite3

import pytest
import sqlite_utils

from kbsync.errors import KbsyncError, LockHeld
from kbsync.store.ledger import GENESIS, Ledger


@pytest.fixture
def ledger(tmp_path):
    with Ledger(tmp_path / "ledger.db") as opened:
        yield opened


def _sample_run(ledger) -> str:
    run = ledger.start_run("apply", facts_hash="f1", plan={"edits": [{"key": "a/P17"}]},
                           editor="memit", hparams={"lr": 0.5, "layers": [4, 5]},
                           base_snapshot=None, state_serial=0)
    ledger.event(run, "batch_started", batch=0, size=1)
    ledger.record_edit(run, "Eiffel Tower/P17", "add", "planned", new_object="Italy", batch=0)
    ledger.record_edit(run, "Eiffel Tower/P17", "add", "applied", new_object="Italy", batch=0,
                       pre_answer="France", metrics={"p_new": 0.93, "nll": 0.07})
    ledger.record_gate(run, 0, "efficacy", 1, 0.9, True)
    ledger.record_gate(run, 0, "drift", float("inf"), 1.05, False, reference="wiki")
    ledger.record_snapshot("ab" * 32, run, None, 1)
    ledger.event(run, "run_committed", snapshot="ab" * 32)
    return run


def _raw(ledger):
    return sqlite3.connect(ledger.path)


def test_empty_ledger(ledger):
    assert ledger.head_hash() == GENESIS and ledger.head_seq() == 0
    assert ledger.verify() == [] and ledger.runs() == [] and ledger.open_runs() == []


def test_chain_verifies_and_reopens(ledger, tmp_path):
    run = _sample_run(ledger)
    assert ledger.verify() == []
    assert ledger.head_seq() == 9
    ledger.close()
    with Ledger(tmp_path / "ledger.db") as again:
        assert again.verify() == []
        detail = again.run(run[:12])
    assert [e["kind"] for e in detail["events"]] == ["run_started", "batch_started", "run_committed"]
    assert detail["outcome"] == "run_committed"
    assert detail["run"]["plan_json"] == {"edits": [{"key": "a/P17"}]}
    gates = detail["gates"]
    assert gates[0]["value"] == 1.0 and gates[0]["passed"] is True
    assert gates[1]["value"] == float("inf") and gates[1]["detail"] == {"reference": "wiki"}


def test_seq_is_global_and_prev_hash_links(ledger):
    _sample_run(ledger)
    rows = sorted((r for t in ("runs", "edits", "gates", "snapshots", "events")
                   for r in ledger.rows(t)), key=lambda r: r["seq"])
    assert [r["seq"] for r in rows] == list(range(1, 10))
    assert rows[0]["prev_hash"] == GENESIS
    assert all(b["prev_hash"] == a["row_hash"] for a, b in zip(rows, rows[1:]))
    assert ledger.head_hash() == rows[-1]["row_hash"]


@pytest.mark.parametrize("sql", ["UPDATE runs SET command = 'x'",
                                 "UPDATE edits SET status = 'rejected'",
                                 "DELETE FROM events",
                                 "DELETE FROM gates WHERE seq = 6"])
def test_append_only_triggers(ledger, sql):
    _sample_run(ledger)
    conn = _raw(ledger)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute(sql)
    conn.rollback()
    conn.close()
    with pytest.raises(sqlite3.IntegrityError):
        sqlite_utils.Database(ledger.path)["runs"].update(1, {"command": "x"})
    assert ledger.verify() == []


def test_edited_row_found_by_seq(ledger):
    _sample_run(ledger)
    conn = _raw(ledger)
    conn.execute("DROP TRIGGER edits_no_update")
    conn.execute("UPDATE edits SET new_object = 'Germany' WHERE seq = 4")
    conn.commit()
    conn.close()
    problems = ledger.verify()
    assert problems[0] == ("seq 4 (edits): row_hash mismatch: the row was changed after it "
                           "was written")
    assert any("edits_no_update is missing" in p for p in problems)


def test_edited_row_with_rehashed_row_breaks_next_link(ledger):
    _sample_run(ledger)
    conn = _raw(ledger)
    conn.execute("DROP TRIGGER gates_no_update")
    conn.execute("UPDATE gates SET row_hash = ? WHERE seq = 6", ["f" * 64])
    conn.commit()
    conn.close()
    problems = ledger.verify()
    assert problems[0].startswith("seq 6 (gates): row_hash mismatch")
    assert problems[1].startswith("seq 7 (gates): prev_hash does not match")


def test_deleted_row_leaves_a_gap(ledger):
    _sample_run(ledger)
    conn = _raw(ledger)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DELETE FROM events WHERE seq = 2")
    conn.commit()
    conn.close()
    problems = ledger.verify()
    assert problems[0] == "seq 3 (events): expected seq 2; row 2 is missing"
    assert "prev_hash" in problems[1]


def test_truncated_tail_caught_by_anchor(ledger):
    _sample_run(ledger)
    anchor = ledger.head_hash()
    conn = _raw(ledger)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DELETE FROM events WHERE seq = 9")
    conn.commit()
    conn.close()
    problems = ledger.verify()          # the anchor file: no manifest needed
    assert problems[0].startswith("ledger anchor: seq 9 ") and "removed from its end" in problems[0]
    assert problems[1:] == ["append-only trigger events_no_delete is missing"]
    problems = ledger.verify({"snapshot abab": anchor})
    assert problems[0].startswith("snapshot abab: ledger head")


def test_open_runs(ledger):
    done = _sample_run(ledger)
    failed = ledger.start_run("apply")
    ledger.event(failed, "run_failed", error="boom")
    pending = ledger.start_run("apply")
    ledger.event(pending, "batch_started", batch=0)
    assert [r["run_id"] for r in ledger.open_runs()] == [pending]
    outcomes = {r["run_id"]: r["outcome"] for r in ledger.runs()}
    assert outcomes == {done: "run_committed", failed: "run_failed", pending: None}
    ledger.event(pending, "run_recovered", snapshot=None)
    assert ledger.open_runs() == []


def test_latest_edit_for(ledger):
    run = _sample_run(ledger)
    ledger.record_edit(run, "Eiffel Tower/P17", "update", "rejected", new_object="Spain",
                       reason="locality gate")
    applied = ledger.latest_edit_for("Eiffel Tower/P17")
    assert applied["pre_answer"] == "France" and applied["status"] == "applied"
    assert ledger.latest_edit_for("Eiffel Tower/P17", statuses=None)["status"] == "rejected"
    assert ledger.latest_edit_for("Nowhere/P17") is None
    assert len(ledger.edits_for("Eiffel Tower/P17")) == 3


def test_transaction_is_all_or_nothing(ledger):
    _sample_run(ledger)
    head = ledger.head_hash()
    with pytest.raises(RuntimeError):
        with ledger.transaction():
            ledger.event(None, "batch_started", batch=1)
            ledger.record_gate(None, 1, "locality", 0.5, 0.9, False)
            raise RuntimeError("editor crashed mid-batch")
    assert ledger.head_hash() == head and ledger.verify() == []
    with ledger.transaction():
        with pytest.raises(KbsyncError):
            with ledger.transaction():  # a failing nested group is undone alone
                ledger.event(None, "batch_started", batch=2)
                ledger.record_edit(None, "k", "add", "no-such-status")
        ledger.event(None, "batch_committed", batch=2)
    assert ledger.head_seq() == 10 and ledger.verify() == []


def test_rows_are_validated(ledger):
    with pytest.raises(KbsyncError, match="unknown"):
        ledger.append("events", {"kind": "x", "colour": "red"})
    with pytest.raises(KbsyncError, match="needs"):
        ledger.append("events", {"run_id": "r"})
    with pytest.raises(KbsyncError, match="expects int"):
        ledger.record_snapshot("s", None, None, 1.5)
    with pytest.raises(KbsyncError, match="no ledger table"):
        ledger.append("users", {})
    assert ledger.head_seq() == 0


def test_float_hashing_is_reproducible(ledger):
    values = [0.1, 1 / 3, 1e-300, 123456789.123456789, 2, True, float("nan"), float("-inf")]
    for v in values:
        ledger.record_gate(None, 0, "m", v, 0.5, False, raw=[v, {"x": v}])
    assert ledger.verify() == []
    stored = [r["value"] for r in ledger.rows("gates")]
    assert stored[:6] == [0.1, 1 / 3, 1e-300, 123456789.123456789, 2.0, 1.0]


def test_readable_by_plain_sqlite_utils(ledger):
    run = _sample_run(ledger)
    db = sqlite_utils.Database(ledger.path)
    assert set(db.table_names()) == {"runs", "edits", "gates", "snapshots", "events"}
    assert db.journal_mode == "wal"
    assert next(db["runs"].rows)["run_id"] == run
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_busy_ledger_raises_lock_held(tmp_path):
    path = tmp_path / "ledger.db"
    Ledger(path).close()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with Ledger(path, busy_timeout=0.2) as ledger:
            with pytest.raises(LockHeld, match="locked"):
                ledger.event(None, "run_started")
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with Ledger(path) as ledger:
        assert ledger.verify() == [] and ledger.head_seq() == 0


def _append_many(path: str, who: str, n: int) -> None:
    with Ledger(path) as ledger:
        for i in range(n):
            ledger.event(None, "tick", who=who, i=i)


def test_concurrent_writers_keep_one_chain(tmp_path):
    path = str(tmp_path / "ledger.db")
    Ledger(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w, 25)) for w in "ab"]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Ledger(path) as ledger:
        assert ledger.head_seq() == 50 and ledger.verify() == []
