"""Canonical encodings that hashes are computed over.

Guarantee: the same value always gives the same text and therefore the same sha256, in
this and any later run. Canonical JSON is `json.dumps(sort_keys=True, separators=(",",
":"), ensure_ascii=False)` encoded as UTF-8 (the pragmatic subset of RFC 8785). Floats are
written with Python's shortest round-trip `repr`, which is deterministic for a given IEEE
double; non-finite floats are not JSON, so they are refused unless the caller asks for
them to be spelled as the strings "NaN", "Infinity", "-Infinity".
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from datetime import datetime, timezone
from typing import Any

from kbsync.errors import KbsyncError

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NONFINITE_NAMES = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def is_sha256(text: object) -> bool:
    return isinstance(text, str) and bool(SHA256_RE.match(text))


def nonfinite_as_text(value: Any) -> Any:
    """Replace NaN/±Inf floats (at any depth) by "NaN"/"Infinity"/"-Infinity"."""
    if isinstance(value, float) and not math.isfinite(value):
        return NONFINITE_NAMES[repr(value)]
    if isinstance(value, dict):
        return {k: nonfinite_as_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nonfinite_as_text(v) for v in value]
    return value


def canonical_json(value: Any, *, nonfinite: str = "error") -> str:
    """Canonical JSON text of `value`; `nonfinite` is "error" or "text" (see module doc)."""
    if nonfinite == "text":
        value = nonfinite_as_text(value)
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False)
    except ValueError as exc:  # json raises ValueError for NaN/inf with allow_nan=False
        raise KbsyncError(f"cannot hash a non-finite number: {exc}",
                          hint="record NaN/inf metrics as failures, not as values") from exc
    except TypeError as exc:  # e.g. a Path or a tensor: convert it explicitly first
        raise KbsyncError(f"cannot encode as JSON: {exc}") from exc


def canonical_bytes(value: Any, *, nonfinite: str = "error") -> bytes:
    return canonical_json(value, nonfinite=nonfinite).encode("utf-8")


def utc_now() -> str:
    """ISO 8601 UTC timestamp with microseconds, e.g. 2026-01-31T12:00:00.123456Z."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
