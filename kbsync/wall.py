"""The capacity budget during one apply run (kbsync.evaluate.capacity): where it stands at
HEAD and after each commit, the capacity warning (once a run, in the ledger too), and the
switch to the fallback editor past the wall.

Past the wall (a cumulative gate's budget less than WARN_SHARE left) every batch of a
weight editor fails `ppl_drift` and is retried edit by edit before the fallback editor
gets it, about 40 s a fact on the default model (benchmarks/RESULTS.md, "apply_scale at
N = 1,000"); a side memory such as GRACE spends no drift, so the batches go to it from
the start. A rebase (kbsync/rebase.py) restores the budget, and the run's editor with it.
"""

from __future__ import annotations

from typing import Callable

from kbsync.evaluate.capacity import capacity, recorded
from kbsync.evaluate.gates import GateCheck


class RunCapacity:
    def __init__(self, gates, ledger, emit: Callable[[dict], None], run_id: str):
        """`gates`: kbsync.yaml's gate thresholds."""
        self.gates, self.ledger, self.emit, self.run_id = gates, ledger, emit, run_id
        self.spent = False          # a cumulative gate's budget is nearly spent
        self._warned = False        # capacity_warning recorded
        self._routed = False        # past_the_wall recorded

    def at_head(self, snapshots, head: str | None, reference: str | None) -> None:
        """From HEAD's own gates, measured against `reference` (the reference in force),
        with kbsync.yaml's thresholds now. A rebase or a rollback has no gates: not spent."""
        self.spent = head is not None and head != reference and capacity(
            0, recorded(snapshots.read(head).gates, self.gates)).spent

    def committed(self, facts: int, checks: list[GateCheck], pending: int) -> None:
        """After a commit: `facts` committed since the reference, `pending` still to edit.
        The first warning of the run also goes to the ledger, after the commit's rows."""
        cap = capacity(facts, {c.metric: (c.value, c.threshold) for c in checks},
                       pending=pending).to_dict()
        self.emit({"type": "capacity", **cap})
        self.spent = cap["spent"]
        if cap["warn"] and not self._warned:
            self._warned = True
            self.ledger.event(self.run_id, "capacity_warning", **cap)

    def past_the_wall(self, fallback: Callable):
        """The fallback editor (`fallback()`: retry.fallback_editor, or None when none is
        named) while the budget is nearly spent; else None (the run's editor)."""
        if not self.spent:
            return None
        editor = fallback()
        if editor is not None and not self._routed:
            self._routed = True
            self.ledger.event(self.run_id, "past_the_wall", editor=editor.name)
            self.emit({"type": "past_the_wall", "editor": editor.name})
        return editor
