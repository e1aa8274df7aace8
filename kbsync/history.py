"""Reading and moving through what was applied: log, show, audit, ask, rollback, export.
Each is a library function; the CLI only prints what they return."""

from __future__ import annotations

import json
from pathlib import Path

from kbsync.errors import IntegrityError, KbsyncError
from kbsync.store.lock import ProjectLock
from kbsync.store.objects import ObjectStore
from kbsync.store.snapshots import SnapshotStore


def committed(snapshots: SnapshotStore) -> list[tuple]:
    """(id, manifest) of every snapshot that was ever HEAD, oldest first. History is linear,
    so they are HEAD's `parent` line; a manifest outside it was written by a run killed
    before its commit point and never took effect."""
    head = snapshots.head()
    return snapshots.history(head) if head else []


def log(project) -> list[dict]:
    """Runs and (committed) snapshots, newest first."""
    snapshots = SnapshotStore(project.kbsync_dir)
    head = snapshots.head()
    entries = [{"kind": "snapshot", "id": sid, "serial": m.serial, "created_at": m.created_at,
                "parent": m.parent, "rollback_of": m.rollback_of, "run_id": m.run_id,
                "editor": m.editor, "head": sid == head}
               for sid, m in committed(snapshots)]
    with project.ledger() as ledger:
        entries += [{"kind": "run", "id": r["run_id"], "created_at": r["started_at"],
                     "command": r["command"], "outcome": r.get("outcome"),
                     "editor": r.get("editor")} for r in ledger.runs()]
    return sorted(entries, key=lambda e: (e["created_at"], e.get("serial", 0)), reverse=True)


def show(project, ref: str) -> dict:
    """One snapshot (manifest) or one run (with its edits, gate checks and events)."""
    snapshots = SnapshotStore(project.kbsync_dir)
    try:
        sid = snapshots.resolve(ref)
    except KbsyncError:
        sid = None
    if sid is not None:
        return {"kind": "snapshot", "id": sid, **snapshots.read(sid).model_dump()}
    with project.ledger() as ledger:
        return {"kind": "run", **ledger.run(ref)}


def audit_verify(project) -> list[str]:
    """Every problem found: the ledger's hash chain, every manifest and object. Empty = clean."""
    snapshots = SnapshotStore(project.kbsync_dir)
    problems = snapshots.verify() + ObjectStore(project.kbsync_dir).verify_all()
    anchors = {}
    for sid in snapshots.ids():
        try:
            manifest = snapshots.read(sid)
        except IntegrityError:
            continue        # a damaged manifest is already among the problems
        if manifest.ledger_head:
            anchors[f"snapshot {sid[:12]}"] = manifest.ledger_head
    with project.ledger() as ledger:
        problems += ledger.verify(anchors)
    return problems


def require_clean(project) -> None:
    problems = audit_verify(project)
    if problems:
        raise IntegrityError(f"audit failed: {problems[0]}" +
                             (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def ask(project, prompt: str, snapshot: str | None = None, max_new_tokens: int = 12) -> dict:
    from kbsync.editing.rebuild import load_at
    from kbsync.lm.score import greedy

    snapshots = SnapshotStore(project.kbsync_dir)
    sid = snapshots.resolve(snapshot) if snapshot else snapshots.head()
    lm, _ = load_at(project, sid, with_editor=False)
    return {"prompt": prompt, "snapshot": sid, "answer": greedy(lm, [prompt], max_new_tokens)[0]}


def rollback(project, ref: str, *, lock_timeout: float = 0) -> dict:
    """Move HEAD (and the applied facts) back to the state of snapshot `ref`, as a new
    snapshot; history is never rewritten."""
    with ProjectLock(project.kbsync_dir, timeout=lock_timeout, operation="rollback"):
        snapshots = SnapshotStore(project.kbsync_dir)
        target = snapshots.resolve(ref)
        previous = snapshots.head()
        if target not in {sid for sid, _ in committed(snapshots)}:
            raise KbsyncError(f"snapshot {target[:12]} was never committed: the run that wrote "
                              "it was interrupted before its commit point",
                              hint="`kbsync log` lists the snapshots you can roll back to")
        with project.ledger() as ledger:
            run_id = ledger.start_run("rollback", base_snapshot=previous, target=target)
            manifest = snapshots.rollback_manifest(target, run_id=run_id,
                                                   ledger_head=ledger.head_hash())
            sid = snapshots.write(manifest)
            snapshots.set_head(sid)                         # the commit point
            with ledger.transaction():
                ledger.record_snapshot(sid, run_id, previous, manifest.serial, rollback_of=target)
                ledger.event(run_id, "rollback", target=target, snapshot=sid)
                ledger.event(run_id, "run_committed", snapshot=sid)
    return {"snapshot": sid, "rollback_of": target, "previous": previous}


def export(project, directory: Path | str, ref: str | None = None) -> dict:
    """A standard HF model directory (safetensors) with the snapshot's edits baked in.
    A side-memory editor's memory goes next to the weights (kbsync-memory.safetensors):
    plain transformers loads the unedited base from such a directory, kbsync.load_model
    the model as the snapshot answers."""
    from safetensors.torch import save_file

    from kbsync.editing.rebuild import load_at
    from kbsync.editing.side.memory import attached, memory_tensors
    from kbsync.lm.load import MEMORY_FILE

    snapshots = SnapshotStore(project.kbsync_dir)
    sid = snapshots.resolve(ref) if ref else snapshots.head()
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise KbsyncError(f"{directory} is not empty", hint="export into a new folder")
    lm, _ = load_at(project, sid, with_editor=False)
    lm.model.save_pretrained(directory, safe_serialization=True)
    lm.tokenizer.save_pretrained(directory)
    memory = memory_tensors(lm.model)
    if memory:
        save_file(memory, directory / MEMORY_FILE)
    kinds = sorted({kind for kind, _ in attached(lm.model)})
    (directory / "kbsync.json").write_text(json.dumps(
        {"snapshot": sid, "base_model": lm.fingerprint, "side_memory": kinds,
         "loader": "kbsync.load_model" if kinds else "transformers"}) + "\n")
    return {"snapshot": sid, "directory": str(directory), "side_memory": kinds}
