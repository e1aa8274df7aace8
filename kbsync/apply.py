"""`kbsync apply`: one run, from the facts on disk to committed snapshots.

    lock -> recover interrupted runs -> read the facts once -> plan (or a saved plan)
    -> check the plan: its state, its facts and its requests recomputed (recovery.check_plan)
    -> confirm (the plan shown) -> the scheduler (kbsync/scheduler.py) applies THOSE facts:
       the files are not read again

What is applied is what was reviewed: the facts are read once, under the lock, before the
plan is made or a saved plan is checked, and the run applies that copy, so a file saved
while the confirmation prompt waits is not applied (the next plan shows it), and a saved
plan whose requests are not exactly those facts' diff is refused (exit 5) before any run
starts. A run asked to stop (`stop`, polled at each batch boundary: `kbsync watch` on
SIGINT/SIGTERM) ends at a batch boundary, and records itself as interrupted before it goes.
"""

from __future__ import annotations

from typing import Callable

from kbsync.editing.rebuild import KeptModel, load_at
from kbsync.errors import KbsyncError
from kbsync.plan.plan import Plan
from kbsync.recovery import check_plan, recover
from kbsync.scheduler import ApplyResult, Emit, RunAbandoned, Scheduler
from kbsync.store.lock import ProjectLock
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import read_applied_state

__all__ = ["ApplyResult", "RunAbandoned", "apply"]


def apply(project, plan: Plan | None = None, *, lock_timeout: float = 0,
          emit: Emit = lambda event: None, confirm: Callable[[Plan], bool] | None = None,
          command: str = "apply", refresh: bool = False,
          stop: Callable[[], bool] | None = None, kept: KeptModel | None = None,
          max_edits: int | None = None) -> ApplyResult:
    """`refresh`: also plan drift edits (kbsync.sync.refresh), probing the model the run
    then edits. `max_edits`: edit at most this many facts, in plan order; the rest stay
    unapplied, so the next plan has them again (a big apply in slices). `stop`: polled before each batch; true ends the run (RunAbandoned).
    `kept`: a model kept from an earlier run in this process, used if it is HEAD's, and
    given the model this run leaves at its HEAD when it ends without an error."""
    with ProjectLock(project.kbsync_dir, timeout=lock_timeout, operation=command):
        ledger = project.ledger()
        try:
            recover(project, ledger, emit)
            head = SnapshotStore(project.kbsync_dir).head()
            loaded = kept.take(project, head) if kept else None
            result, lm_editor = _plan_and_run(project, plan, ledger, emit, confirm, command,
                                              refresh, stop, loaded, max_edits)
            if kept and lm_editor:
                kept.keep(project, result.snapshot, *lm_editor)
            return result
        finally:
            ledger.close()


def _plan_and_run(project, plan, ledger, emit, confirm, command, refresh, stop, loaded,
                  max_edits=None):
    """(result, the (lm, editor) now at result.snapshot, or None if none was loaded)."""
    from kbsync.facts.load import load_knowledge_base
    from kbsync.project import compute_plan

    desired = load_knowledge_base(project.facts_dir)     # the one read of the facts
    if plan is None:
        if refresh and loaded is None:
            loaded = load_at(project, SnapshotStore(project.kbsync_dir).head())
        plan = compute_plan(project, refresh=refresh, lm=loaded[0] if refresh else None,
                            progress=lambda done, total: emit(
                                {"type": "progress", "phase": "refresh",
                                 "done": done, "total": total}))
    # a plan made just now fails this only if a file was saved while it was made
    check_plan(plan, desired, read_applied_state(project.kbsync_dir))
    if plan.refresh is not None:
        emit({"type": "refresh", **plan.refresh})
    emit({"type": "plan", **plan.summary()})
    if not plan.has_changes:
        return ApplyResult(None, plan.base_snapshot), loaded
    if confirm is not None and not confirm(plan):
        raise KbsyncError("apply cancelled")
    scheduler = Scheduler(project, plan, desired, ledger, emit, command, stop=stop,
                          loaded=loaded, max_edits=max_edits)
    return scheduler.run(), (scheduler.lm, scheduler.editor)
