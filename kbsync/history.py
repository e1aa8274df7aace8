"""Reading and moving through what was applied: log, show, audit, ask, rollback, export,
gc (and where the ledger's Datasette metadata lives).
Each is a library function; the CLI only prints what they return.

Only committed snapshots (HEAD's history) are ever shown, asked, exported or rolled back
to: a manifest a killed run wrote before its commit point never took effect (`gc`
removes it). Reading commands never create a ledger where there is none."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from kbsync.errors import IntegrityError, KbsyncError
from kbsync.store.anchor import ANCHOR_SUFFIX
from kbsync.store.lock import ProjectLock
from kbsync.store.manifest import REBASE
from kbsync.store.objects import ObjectStore
from kbsync.store.snapshots import MIN_PREFIX, SnapshotStore


def committed(snapshots: SnapshotStore) -> list[tuple]:
    """(id, manifest) of every snapshot that was ever HEAD, oldest first. History is linear,
    so they are HEAD's `parent` line; a manifest outside it was written by a run killed
    before its commit point and never took effect."""
    head = snapshots.head()
    return snapshots.history(head) if head else []


def resolve_committed(snapshots: SnapshotStore, ref: str) -> str:
    """The full id of `ref` (as SnapshotStore.resolve takes it), refused unless it was
    committed."""
    sid = snapshots.resolve(ref)
    if sid not in {s for s, _ in committed(snapshots)}:
        raise KbsyncError(f"snapshot {sid[:12]} was never committed: the run that wrote "
                          "it was interrupted before its commit point",
                          hint="`kbsync log` lists the snapshots; `kbsync gc` removes this one")
    return sid


def _existing_ledger(project):
    """The project's ledger, or None where there is none yet (reading must not make one)."""
    return project.ledger() if (project.kbsync_dir / "ledger.db").exists() else None


SNAPSHOT_ABBREV = 12      # shortest snapshot id `kbsync log` prints (longer where needed)


def abbreviations(ids, min_length: int = SNAPSHOT_ABBREV) -> dict[str, str]:
    """Each id's shortest prefix, at least `min_length` long, that no other id starts
    with (git's abbreviated hashes). An id's longest common prefix with any other is the
    one with a neighbour in sorted order, so looking at the neighbours is enough."""
    ordered = sorted(set(ids))
    short = {}
    for i, this in enumerate(ordered):
        length = min_length
        for other in ordered[max(i - 1, 0):i] + ordered[i + 1:i + 2]:
            common = next((n for n, (a, b) in enumerate(zip(this, other)) if a != b),
                          min(len(this), len(other)))
            length = max(length, common + 1)
        short[this] = this[:length]
    return short


def log(project, limit: int | None = None) -> list[dict]:
    """Runs and (committed) snapshots, newest first; the newest `limit` entries when given.

    A snapshot's `bytes` is what it added to the store (SnapshotStore.added_bytes). Run
    ids are given in full (they are short, and two runs a minute apart share most of
    their timestamp); each entry's `short` is the id as `kbsync log` prints it: for a
    snapshot the shortest prefix of at least 12 hex digits no other snapshot shares, which
    `show`, `rollback`, `ask --snapshot` and `export` accept."""
    if limit is not None and limit < 0:
        raise KbsyncError(f"--limit must be 0 or more, not {limit}")
    snapshots = SnapshotStore(project.kbsync_dir)
    head = snapshots.head()
    short = abbreviations(snapshots.ids())
    history = committed(snapshots)
    known = dict(history)        # each manifest read once, for the sizes too
    entries = [{"kind": "snapshot", "id": sid, "short": short.get(sid, sid), "serial": m.serial,
                "created_at": m.created_at, "parent": m.parent, "rollback_of": m.rollback_of,
                "rebase_of": m.meta.get(REBASE, {}).get("of"),
                "run_id": m.run_id, "editor": m.editor, "head": sid == head,
                "bytes": sum(snapshots.added_bytes(sid, known).values())}
               for sid, m in history]
    ledger = _existing_ledger(project)
    if ledger is not None:
        with ledger:
            entries += [{"kind": "run", "id": r["run_id"], "short": r["run_id"],
                         "created_at": r["started_at"], "command": r["command"],
                         "outcome": r.get("outcome"), "editor": r.get("editor")}
                        for r in ledger.runs()]
    entries.sort(key=lambda e: (e["created_at"], e.get("serial", 0)), reverse=True)
    return entries if limit is None else entries[:limit]


def resolve_ref(project, ref: str) -> tuple[str, str]:
    """("snapshot" | "run", full id) for HEAD, a full id, or a prefix that exactly one
    snapshot or run id starts with (like git). An ambiguous prefix is an error naming
    the candidates; so is one that matches nothing."""
    snapshots = SnapshotStore(project.kbsync_dir)
    if ref == "HEAD":
        return "snapshot", snapshots.resolve(ref)
    wanted = ref.strip().lower()
    if not wanted:
        raise KbsyncError("an empty id names nothing", hint="`kbsync log` lists the ids")
    is_hex = all(c in "0123456789abcdef" for c in wanted)
    found = [("snapshot", sid) for sid in snapshots.ids()
             if is_hex and len(wanted) >= MIN_PREFIX and sid.startswith(wanted)]
    ledger = _existing_ledger(project)
    if ledger is not None:
        with ledger:
            found += [("run", rid) for (rid,) in ledger.db.execute("SELECT run_id FROM runs")
                      if rid.lower().startswith(wanted)]
    exact = [m for m in found if m[1].lower() == wanted]
    if exact or len(found) == 1:
        return (exact or found)[0]
    if not found:
        hint = "`kbsync log` lists the ids"
        if is_hex and len(wanted) < MIN_PREFIX:
            hint = f"a snapshot prefix needs at least {MIN_PREFIX} hex digits; {hint}"
        raise KbsyncError(f"no snapshot or run matches {ref!r}", hint=hint)
    listed = ", ".join(f"{kind} {ident}" for kind, ident in found[:6])
    more = f" and {len(found) - 6} more" if len(found) > 6 else ""
    raise KbsyncError(f"{ref!r} is ambiguous: it starts {len(found)} ids ({listed}{more})",
                      hint="give more characters of the id")


def show(project, ref: str) -> dict:
    """One snapshot (manifest, plus the bytes it added to the store, in all and by field)
    or one run (with its edits, gate checks and events); `ref` as `resolve_ref` takes it."""
    kind, ident = resolve_ref(project, ref)
    if kind == "snapshot":
        snapshots = SnapshotStore(project.kbsync_dir)
        added = snapshots.added_bytes(ident)
        return {"kind": "snapshot", "id": ident, **snapshots.read(ident).model_dump(),
                "bytes": sum(added.values()), "bytes_by_field": added}
    with project.ledger() as ledger:
        return {"kind": "run", **ledger.run(ident)}


def audit_verify(project) -> list[str]:
    """Every problem found: the ledger's hash chain, its anchors and triggers, every
    manifest and object, and every committed snapshot the ledger does not know. Empty =
    clean."""
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
    missing = _missing_ledger(project, snapshots)
    if missing is not None:     # a check never creates what it checks
        return problems + missing
    with project.ledger() as ledger:
        problems += ledger.verify(anchors)
        problems += _unrecorded_problems(snapshots, ledger)
    return problems


def _missing_ledger(project, snapshots: SnapshotStore) -> list[str] | None:
    """None when the ledger file exists (verify it); else the problems its absence is: none
    in a project that never ran (nothing to verify, and opening it would create one), one
    when snapshots or the ledger's anchor say it once existed (deleted, or moved away)."""
    path = project.kbsync_dir / "ledger.db"
    if path.exists():
        return None
    traces = [f"{len(snapshots.ids())} snapshot(s)"] if snapshots.ids() else []
    if path.with_suffix(ANCHOR_SUFFIX).exists():
        traces.append(f"its anchor {path.with_suffix(ANCHOR_SUFFIX).name}")
    if not traces:
        return []
    return [f"ledger {path} is missing, yet it existed: found {' and '.join(traces)}"]


def _unrecorded_problems(snapshots: SnapshotStore, ledger) -> list[str]:
    """Snapshots on HEAD's history with no ledger row, except those of a run still open:
    killed between its commit point and its rows, which the next run's recovery records."""
    from kbsync.recovery import unrecorded

    try:
        missing = unrecorded(snapshots, ledger, full=True)
    except IntegrityError:
        return []           # a damaged HEAD or manifest is already among the problems
    open_runs = {r["run_id"] for r in ledger.open_runs()}
    return [f"snapshot {sid[:12]} (serial {m.serial}) is on HEAD's history but has no ledger "
            f"row: HEAD moved and the ledger was never told (run {m.run_id} is not open)"
            for sid, m in missing if m.run_id is None or m.run_id not in open_runs]


def require_clean(project) -> None:
    problems = audit_verify(project)
    if problems:
        raise IntegrityError(f"audit failed: {problems[0]}" +
                             (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


def ask(project, prompt: str, snapshot: str | None = None, max_new_tokens: int = 12) -> dict:
    """The greedy answer of the model at HEAD (or `snapshot`) to one prompt."""
    return ask_many(project, [prompt], snapshot, max_new_tokens)[0]


def ask_many(project, prompts: list[str], snapshot: str | None = None,
             max_new_tokens: int = 12) -> list[dict]:
    """Greedy answers to several prompts from one model load, in the prompts' order:
    [{"prompt", "snapshot", "answer"}, ...]."""
    from kbsync.editing.rebuild import load_at
    from kbsync.lm.score import greedy

    prompts = list(prompts)
    if not prompts:
        raise KbsyncError("no prompt to ask", hint="give a PROMPT or -f FILE (one prompt a line)")
    snapshots = SnapshotStore(project.kbsync_dir)
    sid = resolve_committed(snapshots, snapshot) if snapshot else snapshots.head()
    lm, _ = load_at(project, sid, with_editor=False)
    answers = greedy(lm, prompts, max_new_tokens)
    return [{"prompt": p, "snapshot": sid, "answer": a} for p, a in zip(prompts, answers)]


def read_prompts(text: str) -> list[str]:
    """Prompts from a file's text: one a line, blank lines skipped, trailing whitespace
    (and the newline) dropped; leading spaces are part of the prompt."""
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def datasette_metadata_path() -> Path:
    """The Datasette metadata file shipped with kbsync (kbsync/data/datasette-metadata.yml):
    descriptions of the ledger's tables and columns and canned queries. Use it as
    `datasette .kbsync/ledger.db -m PATH`."""
    from importlib.resources import files

    path = Path(str(files("kbsync") / "data" / "datasette-metadata.yml"))
    if not path.is_file():
        raise KbsyncError(f"the Datasette metadata file is missing from kbsync at {path}",
                          hint="reinstall kbsync")
    return path


def rollback(project, ref: str, *, lock_timeout: float = 0) -> dict:
    """Move HEAD (and the applied facts) back to the state of snapshot `ref`, as a new
    snapshot; history is never rewritten. Recovery runs first, so the ledger knows HEAD
    before it moves. A rollback to the state HEAD already has (HEAD itself, or a rollback
    of `ref`, e.g. one whose rows a kill cut off) changes nothing (`changed` false): run
    again after a failure, it does exactly what is left."""
    from kbsync.recovery import recover

    with ProjectLock(project.kbsync_dir, timeout=lock_timeout, operation="rollback"):
        snapshots = SnapshotStore(project.kbsync_dir)
        target = resolve_committed(snapshots, ref)
        previous = snapshots.head()
        with project.ledger() as ledger:
            recover(project, ledger, lambda event: None)
            if target == previous or snapshots.read(previous).rollback_of == target:
                return {"snapshot": previous, "rollback_of": target, "previous": previous,
                        "changed": False}
            sid = _commit_rollback(project, snapshots, ledger, target, previous)
    return {"snapshot": sid, "rollback_of": target, "previous": previous, "changed": True}


def _commit_rollback(project, snapshots: SnapshotStore, ledger, target: str,
                     previous: str) -> str:
    def manifest(run_id: str, ledger_head: str | None):
        return snapshots.rollback_manifest(target, run_id=run_id, ledger_head=ledger_head)

    return commit_run_snapshot(project, snapshots, ledger, "rollback", manifest,
                               previous=previous, event={"target": target}, target=target)


def commit_run_snapshot(project, snapshots: SnapshotStore, ledger, command: str,
                        manifest: Callable, *, previous: str, event: dict, **run) -> str:
    """A run that commits one snapshot and edits nothing (rollback, rebase): the run row,
    its manifest (`manifest(run_id, ledger_head)`), the commit point, its ledger rows (the
    snapshot, an event of kind `command` with `event` and the snapshot id, run_committed).
    A failure ends the run as apply's do (run_failed, or run_interrupted once HEAD moved)."""
    from kbsync.recovery import end_failed_run

    run_id = ledger.start_run(command, base_snapshot=previous, **run)
    try:
        made = manifest(run_id, ledger.head_hash())
        sid = snapshots.write(made)
        snapshots.set_head(sid)                             # the commit point
        with ledger.transaction():
            ledger.record_snapshot(sid, run_id, previous, made.serial,
                                   rollback_of=made.rollback_of)
            ledger.event(run_id, command, **event, snapshot=sid)
            ledger.event(run_id, "run_committed", snapshot=sid)
    except BaseException as exc:
        if not isinstance(exc, KeyboardInterrupt):     # killed: the next recovery records it
            end_failed_run(project, ledger, run_id, exc)
        raise
    return sid


def gc(project, *, dry_run: bool = False, lock_timeout: float = 0) -> dict:
    """Remove what killed runs left (kbsync.store.gc): temp files, uncommitted manifests,
    unreferenced objects; never anything a committed snapshot names. Under the project
    lock (so no run is writing); `dry_run` lists without removing."""
    from kbsync.store.gc import collect, find_garbage

    with ProjectLock(project.kbsync_dir, timeout=lock_timeout, operation="gc"):
        snapshots = SnapshotStore(project.kbsync_dir)
        garbage = find_garbage(snapshots)
        if not dry_run:
            collect(snapshots, garbage)
    return {"type": "gc", "dry_run": dry_run, **garbage.to_dict()}


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
    sid = resolve_committed(snapshots, ref) if ref else snapshots.head()
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
