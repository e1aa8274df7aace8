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
- anchored: a hash chain alone cannot show rows cut off its end, or its newest row
  rewritten with a fresh hash: whoever can write the file can rebuild the chain. So the
  ledger's head is kept outside it too, in `ledger.anchor` next to the database (written
  by kbsync.store.atomic: temp file, fsync, rename, fsync dir), as canonical JSON
  {"seq", "row_hash", "prev_seq", "prev_hash"}. Each transaction, under SQLite's write lock
  (so concurrent writers anchor in order), writes it twice: just before its COMMIT
  *pending* (seq/row_hash = the head being committed, prev = the head before it), and
  right after the COMMIT *settled* (prev = seq: the committed head alone). The ledger
  must end exactly at the anchored head, or, while pending, at prev (killed before the
  COMMIT). `verify` names any other end: rows removed from the end, the newest row
  rewritten, rows appended by something other than kbsync, a missing or unreadable
  anchor. Every write checks the anchor at BEGIN and refuses to go on from a ledger that
  no longer matches it, so kbsync never re-anchors a tampered ledger. Snapshot manifests
  also keep the head (`ledger_head`, checked by `verify(anchors)`).
  What it cannot do: whoever rewrites BOTH the database and the anchor file consistently
  (or deletes both) can still truncate or forge undetected: the anchor raises the bar from
  "edit one SQLite file" to "edit two files consistently", nothing more. A kill between
  the two anchor writes of a transaction leaves it pending, and then that one newest
  transaction could be removed unnoticed, until the next write settles the anchor. A
  ledger of schema 1 (before anchoring) is anchored at its head, as it is, when opened;
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
import math
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kbsync.errors import IntegrityError, KbsyncError, LockHeld
from kbsync.store.atomic import atomic_write_text
from kbsync.store.canonical import (NONFINITE_NAMES, canonical_json, is_sha256, sha256_hex,
                                    utc_now)

GENESIS = "0" * 64
SCHEMA_VERSION = 2          # 1: no insert triggers, no anchor file
ANCHOR_SUFFIX = ".anchor"   # ledger.db -> ledger.anchor
EDIT_STATUSES = ("planned", "applied", "known", "rejected", "interrupted", "skipped")
TERMINAL_EVENTS = ("run_committed", "run_failed", "run_interrupted", "run_recovered")

# Column types: text, int, real, bool (stored 0/1), json (canonical JSON text).
SCHEMA: dict[str, dict[str, str]] = {
    "runs": {"run_id": "text", "command": "text", "started_at": "text", "facts_hash": "text",
             "base_snapshot": "text", "state_serial": "int", "editor": "text",
             "hparams": "json", "plan_json": "json", "detail": "json"},
    "edits": {"run_id": "text", "fact_key": "text", "op": "text", "old_object": "text",
              "new_object": "text", "batch": "int", "status": "text", "reason": "text",
              "metrics": "json", "pre_answer": "text"},
    "gates": {"run_id": "text", "batch": "int", "metric": "text", "value": "real",
              "threshold": "real", "passed": "bool", "detail": "json"},
    "snapshots": {"snapshot_id": "text", "run_id": "text", "parent": "text", "serial": "int",
                  "rollback_of": "text"},
    "events": {"run_id": "text", "kind": "text", "detail": "json"},
}
NOT_NULL = {"runs": ["run_id", "command"], "edits": ["fact_key", "op", "status"],
            "gates": ["metric"], "snapshots": ["snapshot_id", "serial"], "events": ["kind"]}
INDEXES = {"runs": [(["run_id"], True)], "edits": [(["fact_key"], False), (["run_id"], False)],
           "gates": [(["run_id"], False)], "snapshots": [(["snapshot_id"], False)],
           "events": [(["run_id"], False), (["kind"], False)]}
SQL_TYPES = {"text": str, "int": int, "real": float, "bool": int, "json": str}


def _trigger_sql(table: str, action: str) -> str:
    """The CREATE TRIGGER statement, exactly as SQLite keeps it in sqlite_master.sql."""
    if action == "insert":
        heads = " UNION ALL ".join(f"SELECT MAX(seq) AS s FROM {t}" for t in SCHEMA)
        return (f"CREATE TRIGGER {table}_next_seq BEFORE INSERT ON {table} "
                f"WHEN NEW.seq IS NOT (SELECT COALESCE(MAX(s), 0) + 1 FROM ({heads})) "
                f"BEGIN SELECT RAISE(ABORT, 'kbsync ledger is append-only: INSERT on {table} "
                f"must take the next seq'); END")
    verb = action.upper()
    return (f"CREATE TRIGGER {table}_no_{action} BEFORE {verb} ON {table} BEGIN SELECT "
            f"RAISE(ABORT, 'kbsync ledger is append-only: {verb} on {table} refused'); END")


# name -> SQL; schema 1 had the update/delete ones (same text), schema 2 adds insert.
TRIGGERS: dict[str, str] = {
    f"{table}_{'next_seq' if action == 'insert' else 'no_' + action}": _trigger_sql(table, action)
    for table in SCHEMA for action in ("update", "delete", "insert")}


class Ledger:
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

    def anchor(self) -> dict[str, Any] | None:
        """The anchor file's content (module doc), or None when there is none."""
        try:
            text = self.anchor_path.read_text(encoding="utf-8")
            anchor = json.loads(text)
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise IntegrityError(f"ledger anchor {self.anchor_path} is unreadable: {exc}") from None
        if not _is_anchor(anchor):
            raise IntegrityError(f"ledger anchor {self.anchor_path} is not an anchor: "
                                 f"{text[:120]!r}")
        return anchor

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

    # -- the anchor ----------------------------------------------------------------------
    def _begin_anchored(self, check: bool) -> tuple[int, str]:
        """The head at BEGIN, after checking that it is the anchored one."""
        problem = self._anchor_problem() if check else None
        if problem:
            raise IntegrityError(f"ledger {self.path} no longer matches its anchor, so kbsync "
                                 f"will not write to it: {problem}",
                                 hint="`kbsync audit verify` lists every problem")
        return self._head()

    def _write_anchor(self, before: tuple[int, str]) -> tuple[int, str] | None:
        """Before COMMIT: anchor the head being committed, with `before` as pending prev.
        Returns that head when it is pending (rows were appended), else None."""
        head = self._head()
        if head != before:
            self._store_anchor(head, before)
            return head
        if not self.anchor_path.exists():      # a new ledger: anchored at genesis
            self._store_anchor(head, head)
        return None

    def _settle_anchor(self, head: tuple[int, str]) -> None:
        """After COMMIT: the anchor names `head` alone, so the rows just committed cannot be
        removed as if they had never been committed. Under the write lock again, and only if
        no writer came in between (its own anchor supersedes this one). A failure here
        leaves the anchor pending, which `verify` accepts: the rows are committed."""
        conn = self.db.conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return
        try:
            anchor = self.anchor()
            if anchor and (anchor["seq"], anchor["row_hash"]) == head == self._head():
                self._store_anchor(head, head)
        except (OSError, IntegrityError):
            pass
        finally:
            conn.execute("ROLLBACK")

    def _store_anchor(self, head: tuple[int, str], prev: tuple[int, str]) -> None:
        atomic_write_text(self.anchor_path, canonical_json(
            {"seq": head[0], "row_hash": head[1], "prev_seq": prev[0], "prev_hash": prev[1]})
            + "\n")

    def _anchor_problem(self) -> str | None:
        """Why the ledger does not end at its anchored head (module doc), or None."""
        try:
            anchor = self.anchor()
        except IntegrityError as exc:
            return exc.message
        if anchor is None:
            return (f"ledger anchor {self.anchor_path.name} is missing: the ledger's end "
                    f"cannot be checked (it was deleted, or the ledger copied without it)")
        head = self._head()
        if head in ((anchor["seq"], anchor["row_hash"]), (anchor["prev_seq"], anchor["prev_hash"])):
            return None
        seq, want = anchor["seq"], anchor["row_hash"]
        have = self._row_hash_at(seq)
        if have is None:
            return (f"ledger anchor: seq {seq} ({want[:12]}) is no longer in the ledger, which "
                    f"ends at seq {head[0]}: rows were removed from its end")
        if have != want:
            return (f"ledger anchor: seq {seq} has row_hash {have[:12]}, anchored as "
                    f"{want[:12]}: the row was rewritten")
        return (f"ledger anchor: rows {seq + 1}..{head[0]} come after the anchored head: they "
                f"were written by something other than kbsync")

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


def row_hash(table: str, row: dict[str, Any], prev_hash: str) -> str:
    """sha256(prev_hash + canonical JSON of the row's content); see the module doc."""
    content = {"table": table, "seq": row["seq"], "at": row["at"]}
    content.update({c: row[c] for c in SCHEMA[table] if row.get(c) is not None})
    return sha256_hex((prev_hash + canonical_json(content)).encode("utf-8"))


def _is_anchor(value: Any) -> bool:
    return (isinstance(value, dict)
            and all(type(value.get(k)) is int and value[k] >= 0 for k in ("seq", "prev_seq"))
            and all(is_sha256(value.get(k)) for k in ("row_hash", "prev_hash")))


def _check_table(table: str) -> None:
    if table not in SCHEMA:
        raise KbsyncError(f"no ledger table {table!r}; tables: {', '.join(SCHEMA)}")


def _normalise(table: str, row: dict[str, Any]) -> dict[str, Any]:
    """The row exactly as SQLite will store it, so hashing before and after agree."""
    _check_table(table)
    unknown = set(row) - set(SCHEMA[table])
    if unknown:
        raise KbsyncError(f"unknown {table} columns: {', '.join(sorted(unknown))}")
    missing = [c for c in NOT_NULL[table] if row.get(c) is None]
    if missing:
        raise KbsyncError(f"{table} row needs {', '.join(missing)}")
    return {c: _to_stored(table, c, kind, row.get(c)) for c, kind in SCHEMA[table].items()}


def _to_stored(table: str, column: str, kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "json":
        return canonical_json(value, nonfinite="text")
    if kind == "text" and isinstance(value, str):
        return value
    if kind in ("int", "bool") and isinstance(value, (bool, int)):
        return int(value)
    if kind == "real" and isinstance(value, (bool, int, float)):
        value = float(value)
        return value if math.isfinite(value) else NONFINITE_NAMES[repr(value)]
    raise KbsyncError(f"{table}.{column} expects {kind}, got {type(value).__name__}: {value!r}")


def _decode(table: str, row: dict[str, Any]) -> dict[str, Any]:
    out = dict(row)
    for column, kind in SCHEMA[table].items():
        value = out.get(column)
        if value is None:
            continue
        if kind == "json":
            out[column] = json.loads(value)
        elif kind == "bool":
            out[column] = bool(value)
        elif kind == "real" and isinstance(value, str):
            out[column] = float(value)  # "NaN", "Infinity", "-Infinity"
    return out
