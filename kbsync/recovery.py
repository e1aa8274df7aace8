"""Crash safety around a run: refusing a stale saved plan, recording runs that never
finished, and the one writer of a committed batch's ledger rows (used by the commit and
by recovery alike, both from the snapshot's manifest)."""

from __future__ import annotations

from typing import Callable

from kbsync.errors import IntegrityError
from kbsync.plan.plan import Plan
from kbsync.store.ledger import Ledger
from kbsync.store.snapshots import Manifest, SnapshotStore
from kbsync.store.state import read_applied_state


def check_fresh(plan: Plan, project) -> None:
    """Refuse a saved plan whose base state or facts changed since it was made."""
    from kbsync.facts.load import load_knowledge_base

    state = read_applied_state(project.kbsync_dir)
    if plan.base_serial != state.serial or plan.base_snapshot != state.snapshot_id:
        raise IntegrityError(f"plan is stale: it was made at state serial {plan.base_serial}, "
                             f"the project is now at serial {state.serial}",
                             hint="run `kbsync plan` again")
    current = load_knowledge_base(project.facts_dir).content_hash()
    if current != plan.facts_hash:
        raise IntegrityError("plan is stale: the facts changed since it was made",
                             hint="run `kbsync plan` again")


def recover(project, ledger: Ledger, emit: Callable[[dict], None]) -> list[str]:
    """Record runs that never finished (killed, crashed) as interrupted.

    A run killed after a commit point (HEAD moved) but before that batch's ledger rows
    were written leaves a committed snapshot the ledger does not know: its snapshot row
    and its applied edits (with their pre-edit answers, kept in the manifest's meta) are
    recorded here first, so history and later removes see what was really applied."""
    from kbsync.history import committed as committed_snapshots

    open_runs = ledger.open_runs()
    if not open_runs:               # the usual case: no manifest needs reading
        return []
    committed = committed_snapshots(SnapshotStore(project.kbsync_dir))
    interrupted = []
    for run in open_runs:
        run_id = run["run_id"]
        recorded = {r["snapshot_id"] for r in ledger.rows("snapshots", "run_id = ?", [run_id])}
        with ledger.transaction():
            for sid, m in committed:
                if m.run_id == run_id and sid not in recorded:
                    record_committed(ledger, sid, m,
                                     reason="committed before the run was interrupted")
            ledger.event(run_id, "run_interrupted", detail="found unfinished by a later run")
        interrupted.append(run_id)
        emit({"type": "recovered", "run_id": run_id})
    return interrupted


def record_committed(ledger: Ledger, snapshot: str, manifest: Manifest,
                     reason: str | None = None) -> None:
    """The ledger rows of a committed batch, from its manifest: the snapshot, its applied
    edits with their pre-edit answers, the batch_committed event."""
    run_id, edits = manifest.run_id, manifest.meta.get("edits", [])
    with ledger.transaction():
        ledger.record_snapshot(snapshot, run_id, manifest.parent, manifest.serial,
                               rollback_of=manifest.rollback_of)
        for e in edits:
            ledger.record_edit(run_id, e["fact_key"], e["op"], "applied",
                               old_object=e.get("old_object"), new_object=e.get("new_object"),
                               batch=manifest.meta.get("batch"), reason=reason or e.get("reason"),
                               pre_answer=e.get("pre_answer"))
        ledger.event(run_id, "batch_committed", snapshot=snapshot, edits=len(edits),
                     **({"recovered": True} if reason else {}))
