"""Crash safety around a run: refusing a plan that is stale or is not what its facts
give (`check_plan`: what is applied is what was reviewed), reconciling the ledger with
HEAD, recording runs that never finished, and the one writer of a committed batch's ledger
rows (used by the commit and by recovery alike, both from the snapshot's manifest).

Invariant: every snapshot on HEAD's history (every snapshot ever committed) has its
ledger rows. HEAD moves first (the commit point), its rows follow, so a kill, a busy
ledger or a full disk can leave HEAD ahead of the ledger; `recover`, under the project
lock before anything else moves HEAD, writes what is missing from the manifests, and a
run whose HEAD moved ends `run_interrupted` (committed batches stay), never `run_failed`.
`audit verify` (kbsync.history) names a snapshot on the chain with no ledger row, unless
its run is still open: that is the crash window, which the next `recover` closes.
"""

from __future__ import annotations

from collections.abc import Callable

from kbsync.errors import IntegrityError
from kbsync.plan.plan import Plan
from kbsync.store.ledger import Ledger
from kbsync.store.manifest import Manifest
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import AppliedState


def check_plan(plan: Plan, desired, state: AppliedState) -> None:
    """Refuse (IntegrityError, exit 5) a plan that is not exactly what `desired` (the
    facts the run will apply) and `state` (the applied state under the lock) give: made
    at another state (stale), from other facts, against a git revision, or with requests
    that are not those facts' diff: a saved plan edited by hand (an object changed, a
    request dropped, duplicated or made up) must not reach the model or the ledger.

    Drift requests (`--refresh`) come from probing the model, which is not redone here:
    each must name a committed fact (applied and desired alike) once, and be the request
    the planner makes for it."""
    if plan.base_serial != state.serial or plan.base_snapshot != state.snapshot_id:
        raise IntegrityError(f"plan is stale: it was made at state serial {plan.base_serial}, "
                             f"the project is now at serial {state.serial}",
                             hint="run `kbsync plan` again")
    if plan.from_rev is not None:
        raise IntegrityError("this plan diffs two git revisions, not the applied state",
                             hint="run `kbsync plan -o FILE` without --from")
    if desired.content_hash() != plan.facts_hash:
        raise IntegrityError("plan is stale: the facts changed since it was made",
                             hint="run `kbsync plan` again")
    expected = [r.model_dump(mode="json") for r in _expected_requests(plan, desired, state)]
    given = [r.model_dump(mode="json") for r in plan.requests]
    if given != expected:
        raise IntegrityError(f"plan does not match the facts it was made from: "
                             f"{_first_difference(given, expected)}",
                             hint="a plan file is applied as `kbsync plan -o FILE` wrote it; "
                                  "make it again")


def _expected_requests(plan: Plan, desired, state: AppliedState) -> list:
    """The diff of the applied state and `desired`, then the plan's drift requests as
    the planner makes them (kbsync.sync.refresh), each checked to be a committed fact."""
    from kbsync.plan.diff import diff
    from kbsync.sync.refresh import Drifted, RefreshReport, committed_keys, drift_requests

    drift = [r for r in plan.requests if r.reason == "drift"]
    committed, keys = set(committed_keys(desired, state.kb)), [r.fact_key for r in drift]
    for key in keys:
        if key not in committed or keys.count(key) > 1:
            why = "named twice" if key in committed else "not a committed fact"
            raise IntegrityError(f"plan does not match the facts it was made from: drift "
                                 f"request for {key!r} is {why}",
                                 hint="make the plan again with `kbsync plan --refresh -o FILE`")
    report = RefreshReport(state.snapshot_id, len(committed),
                           [Drifted(r.fact_key, desired.facts[r.fact_key].object, r.observed)
                            for r in drift])
    return diff(state.kb, desired) + drift_requests(report, desired)


def _first_difference(given: list[dict], expected: list[dict]) -> str:
    """The first request that differs, in words."""
    for i, (a, b) in enumerate(zip(given, expected)):
        if a != b:
            fields = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
            return (f"request {i + 1} ({a['op']} {a['fact_key']!r}) differs in "
                    f"{', '.join(fields)}")
    if len(given) > len(expected):
        extra = given[len(expected)]
        return f"request {len(expected) + 1} ({extra['op']} {extra['fact_key']!r}) is not planned"
    missing = expected[len(given)]
    return f"the planned {missing['op']} of {missing['fact_key']!r} is missing"


RECOVERED = "committed before its ledger rows were written; recorded by recovery"


def recover(project, ledger: Ledger, emit: Callable[[dict], None]) -> list[str]:
    """Reconcile the ledger with HEAD and record runs that never finished (killed,
    crashed) as interrupted; returns those runs' ids. Call under the project lock.

    Every committed snapshot the ledger lacks gets its rows first (its snapshot row and
    applied edits with their pre-edit answers, kept in the manifest's meta), so history
    and later removes see what was really applied. A run that had ended (`run_failed`,
    by a kbsync before this invariant) but whose snapshot was missing ends
    `run_recovered`."""
    outcomes = {r["run_id"]: r["outcome"] for r in ledger.runs()}
    interrupted = [run_id for run_id, outcome in outcomes.items() if outcome is None]
    with ledger.transaction():
        missing = reconcile(SnapshotStore(project.kbsync_dir), ledger)
        ended = sorted({m.run_id for _, m in missing if outcomes.get(m.run_id) is not None})
        for run_id in ended:
            ledger.event(run_id, "run_recovered", detail="HEAD had moved; recovery wrote "
                         "the ledger rows of its commits",
                         snapshots=[sid for sid, m in missing if m.run_id == run_id])
        for run_id in interrupted:
            ledger.event(run_id, "run_interrupted", detail="found unfinished by a later run")
    for run_id in interrupted:
        emit({"type": "recovered", "run_id": run_id})
    return interrupted


def unrecorded(store: SnapshotStore, ledger: Ledger, *, full: bool = False
               ) -> list[tuple[str, Manifest]]:
    """Snapshots on HEAD's history with no ledger row, oldest first.

    Fast path (not `full`): history is linear, serial = position on it, and only committed
    snapshots get rows, so when HEAD's row has serial n and the ledger knows n snapshots it
    knows them all, and no manifest is read. `audit verify` walks the chain (`full`)."""
    head = store.head()
    if head is None:
        return []
    recorded = {r["snapshot_id"]: r["serial"] for r in ledger.rows("snapshots")}
    if not full and recorded.get(head) == len(recorded):
        return []
    return [(sid, m) for sid, m in store.history(head) if sid not in recorded]


def reconcile(store: SnapshotStore, ledger: Ledger) -> list[tuple[str, Manifest]]:
    """Write the ledger rows of every committed snapshot the ledger lacks; returns them."""
    missing = unrecorded(store, ledger)
    with ledger.transaction():
        for sid, manifest in missing:
            record_committed(ledger, sid, manifest, reason=RECOVERED)
    return missing


def end_failed_run(project, ledger: Ledger, run_id: str, error: BaseException) -> None:
    """Record a run that raised. If HEAD names one of its snapshots it committed batches,
    so it is not `run_failed`: the ledger is reconciled and the run ends `run_interrupted`
    (the rest is planned again). If the ledger cannot be written now either (still busy,
    disk still full), the run stays open and the next run's `recover` records it."""
    store = SnapshotStore(project.kbsync_dir)
    message = str(error)[:500]
    try:
        head = store.head()
        moved = head is not None and store.read(head).run_id == run_id
        with ledger.transaction():
            if moved:
                reconcile(store, ledger)
                ledger.event(run_id, "run_interrupted", error=message, snapshot=head,
                             detail="failed after a commit: its committed batches stay")
            else:
                ledger.event(run_id, "run_failed", error=message)
    except Exception:
        pass        # the caller re-raises `error`; recovery closes the run later


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
