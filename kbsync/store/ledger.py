"""The ledger: an append-only, hash-chained SQLite record of every run (`.kbsync/ledger.db`).

Tables (plain SQLite, readable as is by sqlite-utils, Datasette or the sqlite3 shell):
  runs       one row per run: run_id, command, started_at, facts_hash, base_snapshot,
             state_serial, editor, hparams, plan_json, detail
  edits      one row per edit request *state change*: run_id, fact_key, op, old_object,
             new_object, batch, status (planned|applied|known|rejected|interrupted),
             reason, metrics, pre_answer (the model's answer before the edit, so a
             removed fact can be restored)
  gates      one row per gate check: run_id, batch, metric, value, threshold, passed, detail
  snapshots  one row per committed snapshot: snapshot_id, run_id, parent, serial, rollback_of
  events     run life cycle: run_id, kind (run_started, batch_started, batch_committed,
             run_committed, run_failed, run_interrupted, rollback, run_recovered, ...), detail
Every row also has `seq` (primary key, global: 1, 2, 3, ... across all tables), `at`
(UTC time), `prev_hash` and `row_hash`.

Guarantees:
- append-only: BEFORE UPDATE / BEFORE DELETE triggers abort any change to a written row,
  and a BEFORE INSERT trigger refuses any seq but the next one (so `INSERT OR REPLACE`
  cannot rewrite a row in place, and no row can be slipped in below the head); a status
  change is a new row (the latest row for a fact wins). `verify` compares every trigger's
  SQL with kbsync's (TRIGGERS), so a dropped, altered or same-named no-op trigger is named;
- tamper-evident: row_hash = sha256(prev_hash + canonical JSON of {"table", "seq", "at",
  and every non-NULL column}), where prev_hash is the previous seq's row_hash (genesis: 64
  zeros). `verify` recomputes the chain and names the first broken seq and table;
- anchored: the ledger's head is also kept outside it, in `ledger.anchor`; see
  kbsync.store.anchor for how it is written and checked, and what it cannot do;
- atomic and durable: each append, or each `with ledger.transaction():` group, is one
  `BEGIN IMMEDIATE` transaction (WAL, synchronous=FULL), so a kill or a full disk leaves
  whole rows or none, and concurrent writers serialise instead of forking the chain.

Values and hashing. Rows are normalised to their stored form before hashing, so the hash
recomputed from a row read back is the one written: JSON columns hold canonical JSON text
(NaN/±Inf spelled "NaN"/"Infinity"/"-Infinity"); REAL columns hold floats (ints become
floats, as SQLite would store them) hashed through Python's shortest round-trip repr, which
SQLite's 8-byte REAL preserves exactly; a non-finite REAL is stored as the text "NaN",
"Infinity" or "-Infinity" (SQLite would turn NaN into NULL); booleans are stored as 0/1.
NULL columns are left out of the hash, so adding a column later keeps old hashes valid.

Do not share a Ledger across fork(); open one per process (and per thread).
"""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kbsync.errors import IntegrityError, KbsyncError, LockHeld
from kbsync.store.anchor import ANCHOR_SUFFIX, AnchorMixin
from kbsync.store.canonical import utc_now
from kbsync.store.ledger_schema import (EDIT_STATUSES, GENESIS, INDEXES, NOT_NULL, SCHEMA,
                                        SCHEMA_VERSION, SQL_TYPES, TERMINAL_EVENTS, TRIGGERS,
                                        _check_table, _decode, _normalise, row_hash)

__all__ = ["ANCHOR_SUFFIX", "EDIT_STATUSES", "GENESIS", "INDEXES", "NOT_NULL", "SCHEMA",
           "SCHEMA_VERSION", "SQL_TYPES", "TERMINAL_EVENTS", "TRIGGERS", "Ledger",
           "new_run_id", "row_hash"]


class Ledger(AnchorMixin):
    def __init__(self, path: str | os.PathLike, *, busy_timeout: float = 10.0):
        import sqlite_utils

        self.path = Path(path)
        self.anchor_path = self.path.with_suffix(ANCHOR_SUFFIX)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.busy_timeout = busy_timeout
        self._savepoints = 0
        self.db = sqlite_utils.Database(sqlite3.connect(str(self.path), timeout=busy_timeout))
        try:
            self.db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self.db.execute("PRAGMA synchronous=FULL")  # WAL+NORMAL can lose commits on power loss
            self._busy_as_lock_held(self.db.enable_wal)
            self._ensure_schema()
        except BaseException:
            self.db.close()
            raise

    # -- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Ledger":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> AbstractContextManager["Ledger"]:
        """Group appends into one all-or-nothing write; nested groups use savepoints.
        The outermost group checks the anchor at BEGIN and moves it (module doc)."""
        return self._transaction(check_anchor=True)

    @contextmanager
    def _transaction(self, *, check_anchor: bool, new: bool = False) -> Iterator["Ledger"]:
        """`new`: the tables do not exist yet (schema creation), so the head is genesis."""
        conn = self.db.conn
        if conn.in_transaction:
            name = f"kbsync_{self._savepoints}"
            self._savepoints += 1
            conn.execute(f"SAVEPOINT {name}")
            try:
                yield self
            except BaseException:
                if conn.in_transaction:  # some errors (disk full) already rolled it all back
                    conn.execute(f"ROLLBACK TO {name}")
                    conn.execute(f"RELEASE {name}")
                raise
            conn.execute(f"RELEASE {name}")
            return
        self._busy_as_lock_held(lambda: conn.execute("BEGIN IMMEDIATE"))
        try:
            before = (0, GENESIS) if new else self._begin_anchored(check_anchor)
            yield self
            pending = self._write_anchor(before)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        if pending:
            self._settle_anchor(pending)

    # -- writing -------------------------------------------------------------------------
    def append(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        """Append one row; returns it as stored (with seq, at, prev_hash, row_hash)."""
        content = _normalise(table, row)
        with self.transaction():
            last_seq, prev_hash = self._head()
            stored = {"seq": last_seq + 1, "at": utc_now(), **content}
            stored["prev_hash"] = prev_hash
            stored["row_hash"] = row_hash(table, stored, prev_hash)
            self.db.table(table).insert(stored, alter=False)
        return stored

    def start_run(self, command: str, *, run_id: str | None = None, facts_hash: str | None = None,
                  plan: Any = None, editor: str | None = None, hparams: dict | None = None,
                  base_snapshot: str | None = None, state_serial: int | None = None,
                  **detail: Any) -> str:
        """Record a new run and its `run_started` event; returns the run id."""
        run_id = run_id or new_run_id()
        if isinstance(plan, str):
            plan = json.loads(plan)  # store the plan as canonical JSON, whatever its spacing
        with self.transaction():
            self.append("runs", {"run_id": run_id, "command": command, "started_at": utc_now(),
                                 "facts_hash": facts_hash, "base_snapshot": base_snapshot,
                                 "state_serial": state_serial, "editor": editor,
                                 "hparams": hparams, "plan_json": plan, "detail": detail or None})
            self.event(run_id, "run_started", command=command)
        return run_id

    def record_edit(self, run_id: str | None, fact_key: str, op: str, status: str, *,
                    old_object: str | None = None, new_object: str | None = None,
                    batch: int | None = None, reason: str | None = None,
                    metrics: dict | None = None, pre_answer: str | None = None) -> dict[str, Any]:
        if status not in EDIT_STATUSES:
            raise KbsyncError(f"unknown edit status {status!r}; expected one of {EDIT_STATUSES}")
        return self.append("edits", {"run_id": run_id, "fact_key": fact_key, "op": op,
                                     "old_object": old_object, "new_object": new_object,
                                     "batch": batch, "status": status, "reason": reason,
                                     "metrics": metrics, "pre_answer": pre_answer})

    def record_gate(self, run_id: str | None, batch: int | None, metric: str, value: float | None,
                    threshold: float | None, passed: bool, **detail: Any) -> dict[str, Any]:
        return self.append("gates", {"run_id": run_id, "batch": batch, "metric": metric,
                                     "value": value, "threshold": threshold, "passed": passed,
                                     "detail": detail or None})

    def record_snapshot(self, snapshot_id: str, run_id: str | None, parent: str | None,
                        serial: int, rollback_of: str | None = None) -> dict[str, Any]:
        return self.append("snapshots", {"snapshot_id": snapshot_id, "run_id": run_id,
                                         "parent": parent, "serial": serial,
                                         "rollback_of": rollback_of})

    def event(self, run_id: str | None, kind: str, **detail: Any) -> dict[str, Any]:
        return self.append("events", {"run_id": run_id, "kind": kind, "detail": detail or None})

    # -- reading -------------------------------------------------------------------------
    def rows(self, table: str, where: str | None = None, params: Any = None) -> list[dict[str, Any]]:
        """Decoded rows of `table` in seq order (JSON parsed, booleans as bool)."""
        _check_table(table)
        return [_decode(table, r) for r in
                self.db.table(table).rows_where(where, params, order_by="seq")]

    def runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first, each with `outcome`: its terminal event kind or None."""
        outcomes = self._outcomes()
        return [{**r, "outcome": outcomes.get(r["run_id"])} for r in self.rows("runs")]

    def run(self, run_id: str) -> dict[str, Any]:
        """One run with its edits, gates, events and snapshots; accepts a unique prefix."""
        run_id = self._resolve_run(run_id)
        found = self.rows("runs", "run_id = ?", [run_id])[0]
        related = {t: self.rows(t, "run_id = ?", [run_id])
                   for t in ("edits", "gates", "events", "snapshots")}
        return {"run": found, **related, "outcome": self._outcomes().get(run_id)}

    def open_runs(self) -> list[dict[str, Any]]:
        """Runs with no terminal event: killed or still running (the lock tells which)."""
        return [r for r in self.runs() if r["outcome"] is None]

    def latest_edit_for(self, fact_key: str,
                        statuses: tuple[str, ...] | None = ("applied",)) -> dict[str, Any] | None:
        """The newest edit row of `fact_key` (with one of `statuses`; None = any status)."""
        rows = self.edits_for(fact_key)
        if statuses is not None:
            rows = [r for r in rows if r["status"] in statuses]
        return rows[-1] if rows else None

    def edits_for(self, fact_key: str) -> list[dict[str, Any]]:
        return self.rows("edits", "fact_key = ?", [fact_key])

    def head_hash(self) -> str:
        """row_hash of the newest row (GENESIS when empty): anchor it in snapshot manifests."""
        return self._head()[1]

    def head_seq(self) -> int:
        return self._head()[0]

    # -- verification --------------------------------------------------------------------
    def verify(self, anchors: dict[str, str] | None = None) -> list[str]:
        """Problems in chain order, the first broken seq first; [] means intact.

        `anchors` maps a label (e.g. "snapshot 1a2b3c") to a row_hash that must still be in
        the chain: this catches rows cut off the end, which the chain alone cannot."""
        problems: list[str] = []
        expected, prev, seen = 1, GENESIS, {}
        rows = self._all_rows()
        for seq, table, row in rows:
            if seq in seen:
                problems.append(f"seq {seq} appears in both {seen[seq]} and {table}")
            elif seq != expected:
                gap = (f"row {expected} is" if seq == expected + 1
                       else f"rows {expected}..{seq - 1} are")
                problems.append(f"seq {seq} ({table}): expected seq {expected}; {gap} missing")
            seen[seq] = table
            if row["prev_hash"] != prev:
                problems.append(f"seq {seq} ({table}): prev_hash does not match the previous "
                                f"row's hash (a row before it was removed or rewritten)")
            if row_hash(table, row, row["prev_hash"]) != row["row_hash"]:
                problems.append(f"seq {seq} ({table}): row_hash mismatch: the row was changed "
                                f"after it was written")
            expected, prev = max(expected, seq + 1), row["row_hash"]
        hashes = {row["row_hash"] for _, _, row in rows}
        for label, anchor in (anchors or {}).items():
            if anchor != GENESIS and anchor not in hashes:
                problems.append(f"{label}: ledger head {anchor[:12]} is no longer in the ledger "
                                f"(rows were removed from its end)")
        anchored = self._anchor_problem()
        return problems + ([anchored] if anchored else []) + self._trigger_problems()

    # -- internals -----------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise KbsyncError(f"ledger {self.path} has schema version {version}; this kbsync "
                              f"reads up to {SCHEMA_VERSION}", hint="upgrade kbsync")
        if version == SCHEMA_VERSION:
            return  # never re-create dropped triggers silently: verify must report them
        # A new ledger, or one of schema 1, is anchored here; an anchor already there is
        # checked as on every write (a new ledger's may only name genesis).
        if version == 0:
            self._refuse_replaced_ledger()
        with self._transaction(check_anchor=self.anchor_path.exists(), new=version == 0):
            if version == 0:
                self._create_tables()
            for table in SCHEMA:
                self.db.execute(TRIGGERS[f"{table}_next_seq"])
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _create_tables(self) -> None:
        for table, columns in SCHEMA.items():
            cols = {"seq": int, "at": str, **{c: SQL_TYPES[t] for c, t in columns.items()},
                    "prev_hash": str, "row_hash": str}
            self.db.table(table).create(cols, pk="seq", not_null=["at", "prev_hash", "row_hash",
                                                                  *NOT_NULL[table]],
                                        if_not_exists=True)
            for index_cols, unique in INDEXES[table]:
                self.db.table(table).create_index(index_cols, unique=unique, if_not_exists=True)
            for action in ("update", "delete"):
                self.db.execute(TRIGGERS[f"{table}_no_{action}"])

    def _refuse_replaced_ledger(self) -> None:
        anchor = self.anchor()
        if anchor is not None and anchor["seq"] != 0:
            raise IntegrityError(f"ledger {self.path} is empty, but its anchor names seq "
                                 f"{anchor['seq']}: the ledger was deleted or replaced",
                                 hint="restore ledger.db from a backup")

    def _row_hash_at(self, seq: int) -> str | None:
        if seq == 0:
            return GENESIS
        for table in SCHEMA:
            row = self.db.execute(f"SELECT row_hash FROM {table} WHERE seq = ?", [seq]).fetchone()
            if row:
                return row[0]
        return None

    def _busy_as_lock_held(self, start: Callable[[], Any]) -> Any:
        # busy_timeout already waited; past it, another writer holds the ledger too long.
        try:
            return start()
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise LockHeld(f"ledger {self.path} is locked by another writer "
                               f"(waited {self.busy_timeout:g}s)",
                               hint="another kbsync process is writing; retry when it ends") from exc
            raise

    def _head(self) -> tuple[int, str]:
        best = (0, GENESIS)
        for table in SCHEMA:
            row = self.db.execute(
                f"SELECT seq, row_hash FROM {table} ORDER BY seq DESC LIMIT 1").fetchone()
            if row and row[0] > best[0]:
                best = (row[0], row[1])
        return best

    def _all_rows(self) -> list[tuple[int, str, dict[str, Any]]]:
        rows = [(r["seq"], table, r) for table in SCHEMA
                for r in self.db.query(f"SELECT * FROM {table} ORDER BY seq")]
        return sorted(rows, key=lambda item: (item[0], item[1]))

    def _trigger_problems(self) -> list[str]:
        """Missing, altered (same name, other SQL) and foreign triggers on ledger tables."""
        present = {r["name"]: (r["tbl_name"], " ".join((r["sql"] or "").split()))
                   for r in self.db.query(
                       "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger'")}
        problems = []
        for name, sql in TRIGGERS.items():
            if name not in present:
                problems.append(f"append-only trigger {name} is missing")
            elif present[name][1] != sql:
                problems.append(f"append-only trigger {name} was changed: its SQL is not "
                                f"kbsync's")
        problems += [f"trigger {name} on {table} is not kbsync's" for name, (table, _)
                     in present.items() if name not in TRIGGERS and table in SCHEMA]
        return problems

    def _outcomes(self) -> dict[str, str]:
        outcomes: dict[str, str] = {}
        marks = ",".join("?" * len(TERMINAL_EVENTS))
        for r in self.db.query(f"SELECT run_id, kind FROM events WHERE kind IN ({marks}) "
                               f"ORDER BY seq", list(TERMINAL_EVENTS)):
            outcomes[r["run_id"]] = r["kind"]
        return outcomes

    def _resolve_run(self, ref: str) -> str:
        ids = [r["run_id"] for r in self.db.query(
            "SELECT run_id FROM runs WHERE run_id LIKE ? ESCAPE '\\'",
            [ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"])]
        if ref in ids:
            return ref
        if len(ids) != 1:
            raise KbsyncError(f"no run {ref!r}" if not ids else
                              f"run id {ref!r} is ambiguous: {', '.join(ids[:5])}")
        return ids[0]


def new_run_id() -> str:
    """Sortable and unique: 20260131T120000Z-1a2b3c4d."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
