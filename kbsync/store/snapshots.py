"""Snapshot manifests and HEAD: `.kbsync/snapshots/<id>.json`, `.kbsync/HEAD`.

A snapshot is an immutable manifest naming everything needed to rebuild one model state:
the base-model fingerprint, the patch tensors this snapshot adds, the editor's memory, the
applied knowledge base and the gate results. Its id is the sha256 of its canonical JSON,
which is exactly the manifest file's bytes, so a changed byte is detected on read.

Guarantees:
- manifests are written atomically and read-only, after every object they name exists
  (`write` refuses a manifest naming a missing object, or a parent it does not follow);
- `set_head` is THE commit point: an atomic, fsynced replace of `HEAD`. A kill before it
  leaves the old snapshot current (new objects and manifests are unreferenced garbage); a
  kill after it leaves the new one current. There is never a mix;
- `verify` checks every manifest's id, every object it names, parent links and HEAD.

The manifest format (its fields, the two links, rollbacks, checkpoints, rebases) is
kbsync/store/manifest.py; this module writes, reads and walks manifests and moves HEAD.
A rollback to T is a NEW snapshot R with `parent` = the current HEAD and `rollback_of` = T
(`rollback_manifest` builds it), so `chain(R)` = `chain(T)` + [R] rebuilds exactly T's
model while the history still shows the undone snapshots and when they were undone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from kbsync.errors import IntegrityError, KbsyncError
from kbsync.store.atomic import atomic_write_text, remove_temp_files
from kbsync.store.canonical import is_sha256, sha256_hex
from kbsync.store.manifest import GATE_BASE, REBASE, Manifest
from kbsync.store.objects import ObjectStore

MANIFEST_MODE = 0o444
MIN_PREFIX = 6


class SnapshotStore:
    """Manifests, HEAD and the object store of one `.kbsync` directory."""

    def __init__(self, kbsync_dir: str | os.PathLike):
        self.root = Path(kbsync_dir)
        self.dir = self.root / "snapshots"
        self.head_path = self.root / "HEAD"
        self.objects = ObjectStore(self.root)

    # -- manifests -----------------------------------------------------------------------
    def write(self, manifest: Manifest) -> str:
        self._check_links(manifest)
        text = manifest.canonical()
        sid = sha256_hex(text.encode("utf-8"))
        path = self._path(sid)
        if not (path.is_file() and path.read_text(encoding="utf-8") == text):
            atomic_write_text(path, text, mode=MANIFEST_MODE)
        return sid

    def read(self, snapshot_id: str) -> Manifest:
        path = self._path(snapshot_id)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"snapshot {snapshot_id} is missing ({path})") from None
        if sha256_hex(data) != snapshot_id:
            raise IntegrityError(f"snapshot {snapshot_id} was modified: its manifest no longer "
                                 f"hashes to its id ({path})")
        try:
            return Manifest.model_validate_json(data)
        except ValueError as exc:
            raise IntegrityError(f"snapshot {snapshot_id} is not a valid manifest: {exc}") from exc

    def exists(self, snapshot_id: str) -> bool:
        return is_sha256(snapshot_id) and self._path(snapshot_id).is_file()

    def ids(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.stem for p in self.dir.glob("*.json") if is_sha256(p.stem))

    def list(self) -> list[tuple[str, Manifest]]:
        """Every snapshot, oldest first (by serial, then creation time)."""
        items = [(sid, self.read(sid)) for sid in self.ids()]
        return sorted(items, key=lambda item: (item[1].serial, item[1].created_at, item[0]))

    # -- HEAD: the commit point ----------------------------------------------------------
    def head(self) -> str | None:
        try:
            text = self.head_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not is_sha256(text):
            raise IntegrityError(f"HEAD does not name a snapshot: {text[:80]!r} ({self.head_path})")
        return text

    def set_head(self, snapshot_id: str) -> None:
        """Make `snapshot_id` current. Atomic and durable: this is the commit point."""
        self.read(snapshot_id)  # never point HEAD at a missing or damaged manifest
        atomic_write_text(self.head_path, snapshot_id + "\n")

    # -- lineage -------------------------------------------------------------------------
    def chain(self, snapshot_id: str) -> list[Manifest]:
        """Manifests from the root to `snapshot_id` along effective parents (model lineage)."""
        return [m for _, m in self.lineage(snapshot_id)]

    def lineage(self, snapshot_id: str, known: dict[str, Manifest] | None = None
                ) -> list[tuple[str, Manifest]]:
        """chain with ids; `known` (id -> manifest) is read first and filled, so walking
        many snapshots' lineages reads each manifest once."""
        return self._walk(snapshot_id, lambda m: m.effective_parent, known)

    def ancestors(self, snapshot_id: str, known: dict[str, Manifest] | None = None
                  ) -> Iterator[tuple[str, Manifest]]:
        """(id, manifest) from `snapshot_id` up to the root along effective parents, newest
        first, read lazily: a rebuild stops at the nearest checkpoint without reading the
        rest of the chain."""
        return self._climb(snapshot_id, lambda m: m.effective_parent, known)

    def history(self, snapshot_id: str) -> list[tuple[str, Manifest]]:
        """(id, manifest) from the root to `snapshot_id` along `parent` links (what HEAD was)."""
        return self._walk(snapshot_id, lambda m: m.parent)

    def patches(self, snapshot_id: str) -> list[str]:
        """Patch object ids to apply to the base model, in order, to rebuild `snapshot_id`."""
        return [m.patch for m in self.chain(snapshot_id) if m.patch is not None]

    def editor_state_for(self, snapshot_id: str) -> str | None:
        """The editor memory in force at `snapshot_id` (latest non-None along its chain)."""
        for manifest in reversed(self.chain(snapshot_id)):
            if manifest.editor_state is not None:
                return manifest.editor_state
        return None

    def gate_base(self, snapshot_id: str | None) -> str | None:
        """The snapshot whose model the cumulative gates (perplexity drift, general
        knowledge) of a batch on `snapshot_id` measure against: the nearest rebase on its
        lineage (kbsync/rebase.py), or None for the base model. A commit records it
        (`meta.gate_base`), so the walk stops at the first manifest; older manifests
        without it are walked past."""
        if snapshot_id is None:
            return None
        for sid, manifest in self.ancestors(snapshot_id):
            if REBASE in manifest.meta:
                return sid
            if GATE_BASE in manifest.meta:
                return manifest.meta[GATE_BASE]
        return None

    def added_bytes(self, snapshot_id: str, known: dict[str, Manifest] | None = None
                    ) -> dict[str, int]:
        """Bytes on disk this snapshot added, by field (`manifest` included): the objects it
        names that its effective parent does not (a delta's base, a rollback's facts are
        the parent's and not counted again). A missing object counts 0 (`verify` says so)."""
        known = {} if known is None else known
        manifest = known.setdefault(snapshot_id, self.read(snapshot_id))
        up = manifest.effective_parent
        before = set() if up is None else set(known.setdefault(up, self.read(up)).objects().values())
        sizes = {"manifest": _size(self._path(snapshot_id))}
        sizes.update({field: _size(self.objects.path(sha)) for field, sha in manifest.objects().items()
                      if sha not in before})
        return sizes

    def rollback_manifest(self, target: str, **fields: Any) -> Manifest:
        """A new manifest that moves the model back to `target` (see module doc).

        `fields` may set run_id, ledger_head, gates, meta, created_at. Write it with `write`
        and commit it with `set_head`."""
        target = self.resolve(target)
        old = self.read(target)
        head = self.head()
        serial = self.read(head).serial + 1 if head else 1
        return Manifest(parent=head, serial=serial, base_model=old.base_model, editor=old.editor,
                        hparams=old.hparams, patch=None,
                        editor_state=self.editor_state_for(target), facts=old.facts,
                        facts_base=old.facts_base,
                        facts_hash=old.facts_hash, rollback_of=target, **fields)

    def resolve(self, ref: str) -> str:
        """Full id for "HEAD", a full id or a unique prefix of at least 6 hex digits."""
        if ref == "HEAD":
            head = self.head()
            if head is None:
                raise KbsyncError("HEAD names no snapshot yet: nothing has been applied")
            return head
        ref = ref.lower()
        if len(ref) < MIN_PREFIX or any(c not in "0123456789abcdef" for c in ref):
            raise KbsyncError(f"not a snapshot id: {ref!r}",
                              hint=f"give at least {MIN_PREFIX} hex digits, or HEAD")
        matches = [sid for sid in self.ids() if sid.startswith(ref)]
        if not matches:
            raise KbsyncError(f"no snapshot matches {ref!r}", hint="`kbsync log` lists snapshots")
        if len(matches) > 1:
            raise KbsyncError(f"snapshot id {ref!r} is ambiguous: "
                              + ", ".join(m[:12] for m in matches), hint="give more digits")
        return matches[0]

    # -- checks and cleanup --------------------------------------------------------------
    def verify(self) -> list[str]:
        """One line per problem; an empty list means the store is intact."""
        problems: list[str] = []
        checked: dict[str, str | None] = {}
        manifests: dict[str, Manifest] = {}
        for sid in self.ids():
            try:
                manifests[sid] = self.read(sid)
            except IntegrityError as exc:
                problems.append(exc.message)
        for sid, manifest in manifests.items():
            problems += self._verify_links(sid, manifest, manifests)
            for field, sha in manifest.objects().items():
                if sha not in checked:
                    checked[sha] = self._object_problem(sha)
                if checked[sha]:
                    problems.append(f"snapshot {sid[:12]} {field}: {checked[sha]}")
        problems += self._verify_head(manifests)
        return problems

    def unreferenced_objects(self) -> list[str]:
        """Objects no manifest names: left by a run killed before its commit point."""
        referenced = {sha for _, m in self.list() for sha in m.objects().values()}
        return [sha for sha in self.objects.list() if sha not in referenced]

    def remove_garbage(self, *, unreferenced: bool = False) -> list[str]:
        """Delete temp files (and unreferenced objects if asked). Only under the project lock,
        and never while a run of this process has written objects it has not committed yet."""
        removed = [str(p) for p in remove_temp_files(self.root)]
        removed += [str(p) for p in remove_temp_files(self.dir)]
        removed += [str(p) for p in self.objects.remove_garbage()]
        if unreferenced:
            for sha in self.unreferenced_objects():
                self.objects.remove(sha)
                removed.append(str(self.objects.path(sha)))
        return removed

    # -- internals -----------------------------------------------------------------------
    def _path(self, snapshot_id: str) -> Path:
        if not is_sha256(snapshot_id):
            raise KbsyncError(f"not a full snapshot id: {snapshot_id!r}")
        return self.dir / f"{snapshot_id}.json"

    def _walk(self, snapshot_id: str, up: Callable[[Manifest], str | None],
              known: dict[str, Manifest] | None = None) -> list[tuple[str, Manifest]]:
        """(id, manifest) from the root to snapshot_id; `known` caches manifests across walks."""
        return list(self._climb(snapshot_id, up, known))[::-1]

    def _climb(self, snapshot_id: str, up: Callable[[Manifest], str | None],
               known: dict[str, Manifest] | None = None) -> Iterator[tuple[str, Manifest]]:
        """(id, manifest) from snapshot_id upwards, newest first, each read when reached."""
        known = {} if known is None else known
        seen: set[str] = set()
        current: str | None = snapshot_id
        while current is not None:
            if current in seen:  # impossible with content ids unless files were forged
                raise IntegrityError(f"snapshot {current} is its own ancestor")
            seen.add(current)
            if current not in known:
                known[current] = self.read(current)
            yield current, known[current]
            current = up(known[current])

    def _check_links(self, manifest: Manifest) -> None:
        if manifest.parent is None:
            if manifest.serial != 1:
                raise KbsyncError(f"a root snapshot has serial 1, not {manifest.serial}")
        else:
            parent = self.read(manifest.parent)
            if manifest.serial != parent.serial + 1:
                raise KbsyncError(f"serial {manifest.serial} does not follow parent serial "
                                  f"{parent.serial}")
        if manifest.rollback_of is not None:
            self.read(manifest.rollback_of)
        for field, sha in manifest.objects().items():
            if not self.objects.exists(sha):
                raise IntegrityError(f"manifest {field} names object {sha}, which is not stored",
                                     hint="write objects before the manifest that names them")

    def _verify_links(self, sid: str, m: Manifest, manifests: dict[str, Manifest]) -> list[str]:
        problems = []
        for field in ("parent", "rollback_of"):
            target = getattr(m, field)
            if target is not None and target not in manifests:
                problems.append(f"snapshot {sid[:12]} {field}: snapshot {target} is missing or damaged")
        if m.parent is None and m.serial != 1:
            problems.append(f"snapshot {sid[:12]}: root snapshot with serial {m.serial}")
        if m.parent in manifests and m.serial != manifests[m.parent].serial + 1:
            problems.append(f"snapshot {sid[:12]}: serial {m.serial} does not follow its parent's")
        return problems + self._verify_facts_base(sid, m, manifests)

    @staticmethod
    def _verify_facts_base(sid: str, m: Manifest, manifests: dict[str, Manifest]) -> list[str]:
        """A delta's base must be what its effective parent names (module doc), so the
        objects a delta chain reads are all named along the chain."""
        if m.facts_base is None:
            return []
        parent = manifests.get(m.effective_parent) if m.effective_parent else None
        if parent is None:
            return [f"snapshot {sid[:12]} facts_base: a delta needs an effective parent"]
        expected = parent.facts_base if m.facts == parent.facts else parent.facts
        if m.facts_base != expected:
            return [f"snapshot {sid[:12]} facts_base: {m.facts_base[:12]} is not the facts of "
                    f"its effective parent ({(expected or 'none')[:12]})"]
        return []

    def _object_problem(self, sha: str) -> str | None:
        try:
            self.objects.check(sha)
        except (IntegrityError, KbsyncError) as exc:
            return exc.message
        return None

    def _verify_head(self, manifests: dict[str, Manifest]) -> list[str]:
        try:
            head = self.head()
        except IntegrityError as exc:
            return [exc.message]
        if head is not None and head not in manifests:
            return [f"HEAD names snapshot {head}, which is missing or damaged"]
        return []


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
