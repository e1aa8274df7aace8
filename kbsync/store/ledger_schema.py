"""The ledger's schema as data (tables, column types, NOT NULL, indexes), its append-only
triggers (TRIGGERS: the exact SQL `verify` compares against), and how a row is normalised,
hashed and decoded. The guarantees these serve are in kbsync.store.ledger."""

from __future__ import annotations

import json
import math
from typing import Any

from kbsync.errors import KbsyncError
from kbsync.store.canonical import NONFINITE_NAMES, canonical_json, sha256_hex

GENESIS = "0" * 64
SCHEMA_VERSION = 2          # 1: no insert triggers, no anchor file
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


def row_hash(table: str, row: dict[str, Any], prev_hash: str) -> str:
    """sha256(prev_hash + canonical JSON of the row's content); see the module doc."""
    content = {"table": table, "seq": row["seq"], "at": row["at"]}
    content.update({c: row[c] for c in SCHEMA[table] if row.get(c) is not None})
    return sha256_hex((prev_hash + canonical_json(content)).encode("utf-8"))


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
