"""Garbage collection (`kbsync gc`): what killed and failed runs leave in `.kbsync`.

Garbage, looked for under the project lock (so no run is writing):
- temp files `.<name>.<random>.tmp` of interrupted writes (kbsync.store.atomic);
- uncommitted manifests: written by a run killed before its commit point, so HEAD never
  named them and they are not on HEAD's history (kbsync.history.committed);
- unreferenced objects: named by no committed manifest.
Never garbage: anything a committed manifest names. History is linear, so the committed
manifests are exactly HEAD's `parent` line, and reading it verifies each manifest's id:
a damaged HEAD or history raises IntegrityError and nothing is removed.

The removal order keeps `audit verify` clean after a kill at any point: temp files; then
the manifests, newest first (a kept manifest never names a removed parent), and their
folder is fsynced; only then the objects (a manifest naming a removed object would be a
broken store, an object nothing names is not), then the object folders left empty.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kbsync.errors import KbsyncError
from kbsync.store.atomic import TEMP_SUFFIX, fsync_dir, is_temp_name
from kbsync.store.snapshots import SnapshotStore


@dataclass
class Garbage:
    temp_files: list[Path] = field(default_factory=list)
    manifests: list[str] = field(default_factory=list)     # ids, newest first
    objects: list[str] = field(default_factory=list)
    bytes: int = 0

    @property
    def empty(self) -> bool:
        return not (self.temp_files or self.manifests or self.objects)

    def to_dict(self) -> dict:
        return {"temp_files": [str(p) for p in self.temp_files], "manifests": self.manifests,
                "objects": self.objects, "bytes": self.bytes}


def find_garbage(store: SnapshotStore) -> Garbage:
    """Everything `collect` would remove; reads, never writes."""
    head = store.head()
    committed = dict(store.history(head)) if head else {}
    uncommitted = [sid for sid in store.ids() if sid not in committed]
    serials = {sid: _serial(store, sid) for sid in uncommitted}
    referenced = {sha for m in committed.values() for sha in m.objects().values()}
    garbage = Garbage(temp_files=_temp_files(store.root),
                      manifests=sorted(uncommitted, key=lambda s: -serials[s]),
                      objects=[sha for sha in store.objects.list() if sha not in referenced])
    sizes = [store._path(sid) for sid in garbage.manifests]
    sizes += [store.objects.path(sha) for sha in garbage.objects] + garbage.temp_files
    garbage.bytes = sum(_size(p) for p in sizes)
    return garbage


def collect(store: SnapshotStore, garbage: Garbage) -> None:
    """Remove `garbage` (found by find_garbage under the same lock) in the safe order."""
    for path in garbage.temp_files:
        _remove(path)
    for sid in garbage.manifests:
        _remove(store._path(sid))
    if garbage.manifests:
        fsync_dir(store.dir)           # the manifests are gone before any object they name
    folders = set()
    for sha in garbage.objects:
        path = store.objects.path(sha)
        _remove(path)
        folders.add(path.parent)
    for folder in sorted(folders):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    if folders:
        fsync_dir(store.objects.dir)


def _remove(path: Path) -> None:
    # Every removal goes through here: tests inject kills and faults here.
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _temp_files(root: Path) -> list[Path]:
    """Temp files anywhere under `.kbsync` (objects, snapshots, HEAD, ledger anchor)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob(f"*{TEMP_SUFFIX}") if p.is_file() and is_temp_name(p.name))


def _serial(store: SnapshotStore, sid: str) -> int:
    try:
        return store.read(sid).serial
    except KbsyncError:                # damaged (IntegrityError too): removed first
        return 1 << 62


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
