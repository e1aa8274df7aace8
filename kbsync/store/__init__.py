"""The only package that writes to disk: `.kbsync/` in a project directory.

    .kbsync/
      objects/ab/cdef...   content-addressed, read-only blobs (objects.ObjectStore)
      snapshots/<id>.json  manifests (manifest.Manifest), id = sha256 of the file
                           (snapshots.SnapshotStore)
      HEAD                 the current snapshot id; replacing it is the commit point
      ledger.db            append-only, hash-chained SQLite record (ledger.Ledger)
      ledger.anchor        the ledger's head, outside it: rows cut off its end show
      lock, lock.info.json project lock (lock.ProjectLock)

Every file is written by `atomic.atomic_write_bytes` (temp, fsync, rename, fsync dir).
Names are exported lazily so `import kbsync.store` costs nothing (no sqlite-utils,
pydantic or torch until used).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "atomic_write_bytes": "atomic", "atomic_write_text": "atomic",
    "ObjectStore": "objects",
    "Manifest": "manifest", "SnapshotStore": "snapshots",
    "AppliedState": "state", "read_applied_state": "state",
    "Ledger": "ledger",
    "ProjectLock": "lock", "read_lock_info": "lock",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kbsync.store' has no attribute {name!r}")
    return getattr(importlib.import_module(f"kbsync.store.{_EXPORTS[name]}"), name)
