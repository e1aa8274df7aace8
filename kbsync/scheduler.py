"""The scheduler: run a checked plan through the editor, the gates and the store
(kbsync/apply.py reads the facts, makes or checks the plan and hands it here).

    classify: already known (no edit) / remove of a fact kbsync never edited (no edit)
    -> batches: edit -> candidate -> gates -> commit snapshot | revert and retry (below)
    -> ledger rows for every edit, gate, attempt and snapshot

A failing batch costs a bounded number of editor calls, not a bisection tree
(`commit_or_retry`): an attempt (batch or lone edit) that failed retention alone is made
once more with the earlier facts it made the model lose taught back (`retry.repair`);
otherwise the edits that fail their own check (efficacy, paraphrases) are dropped and
the rest edited once more as a batch (then one at a time, if the batch still fails a gate
no single edit owns); each dropped edit is retried alone with more effort
(`retry.effort` x the optimisation steps), then with `retry.fallback_editor` if one is
named, and only then rejected. Every attempt is its own batch number in the ledger, with a
`batch_retry` event saying which batch it retries and why. Past the wall (a cumulative
gate's budget nearly spent) the batches go to the fallback editor from the start
(kbsync/wall.py, a `past_the_wall` event) until a rebase restores the budget.

Each committed batch is its own snapshot (kbsync/commit.py: HEAD moves only by `set_head`
after the patch and the manifest are on disk, so a kill at any point leaves HEAD at a
complete snapshot). The next run records the killed one as interrupted and plans again
from HEAD: what was committed is in the applied state and is not applied twice. A stop
asked for ends the run at a batch boundary (RunAbandoned).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

from kbsync.commit import commit_batch, next_applied
from kbsync.editing.rebuild import load_at
from kbsync.editing.patch import stored_precision
from kbsync.errors import EditorError, GateFailed, KbsyncError
from kbsync.evaluate.gates import GateCheck, Probes, Verdict, check, parent_reference
from kbsync.evaluate.probes import GENERAL_PROMPTS, general_prompts
from kbsync.facts.schema import Fact, KnowledgeBase
from kbsync.plan.plan import EditRequest, Plan
from kbsync.rebase import gate_reference
from kbsync.recovery import end_failed_run
from kbsync.retry import Attempt, RetryEditors
from kbsync.store.ledger import Ledger
from kbsync.store.objects import ObjectStore
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import read_applied_state
from kbsync.triage import Work, repair_work, triage
from kbsync.wall import RunCapacity

Emit = Callable[[dict], None]
UNRELATED_SAMPLE = 20
# A batch of more than this many edits (GRACE's 50 past the wall) that fails a gate no edit
# owns (locality, general knowledge) is retried in parts of this size before edit by edit:
# its gates cost about 13 s an attempt on the default model whatever the batch's size, so
# 50 lone attempts for one culprit cost 11 min, parts of 10 about 3 (benchmarks/RESULTS.md,
# "Past the wall in batches of the fallback's size").
PART_SIZE = 10


@dataclass
class ApplyResult:
    run_id: str | None
    snapshot: str | None
    applied: list[str] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    deferred: list[str] = field(default_factory=list)   # left for the next run (--max-edits)
    repaired: list[str] = field(default_factory=list)   # earlier facts a batch lost, re-taught

    def to_dict(self) -> dict:
        return {"type": "summary", "run_id": self.run_id, "snapshot": self.snapshot,
                "applied": len(self.applied), "known": len(self.known),
                "skipped": len(self.skipped), "rejected": len(self.rejected),
                "deferred": len(self.deferred), "repaired": len(self.repaired),
                "rejected_keys": self.rejected}


class RunAbandoned(KbsyncError):
    """A stop was asked for (`kbsync watch` got SIGINT/SIGTERM): the run ended at a batch
    boundary. Batches committed before it stay committed and recorded; the rest are
    recorded as interrupted and planned again by the next run."""

    def __init__(self, run_id: str | None):
        super().__init__("stopped on request before the next batch")
        self.run_id = run_id


class Scheduler:
    def __init__(self, project, plan: Plan, desired: KnowledgeBase, ledger: Ledger, emit: Emit,
                 command: str, *, stop: Callable[[], bool] | None = None,
                 loaded: tuple | None = None, max_edits: int | None = None):
        """`desired`: the facts `plan` was checked against (check_plan), never re-read."""
        self.stop, self.loaded, self.work = stop or (lambda: False), loaded, []
        self.max_edits = max_edits

        self.project, self.plan, self.ledger, self.emit = project, plan, ledger, emit
        self.cfg = project.config
        self.desired = desired
        state = read_applied_state(project.kbsync_dir)
        self.applied, self.head, self.serial = state.kb, state.snapshot_id, state.serial
        self.snapshots = SnapshotStore(project.kbsync_dir)
        self.objects = ObjectStore(project.kbsync_dir)
        self.command = command
        self.result = ApplyResult(None, self.head)
        self.batch_no = 0
        self.edit_seconds = 0.0     # editing + gates + commit, retries included (report)
        self.pending: dict[str, Fact | None] = {}   # applied-state changes not yet committed
        self.editor_calls = 0       # every edit attempted, retries included
        self.tries = 0              # attempts of the batch in hand

    # -- setup ------------------------------------------------------------------------
    def run(self) -> ApplyResult:
        self.lm, self.editor = self.loaded or load_at(self.project, self.head)
        self.retry = RetryEditors(self.project, self.lm, self.editor)
        if self.stop():
            raise RunAbandoned(None)                 # nothing started, nothing to record
        self.run_id = self.ledger.start_run(
            self.command, facts_hash=self.plan.facts_hash, plan=self.plan.to_dict(),
            editor=self.editor.name, hparams=self.editor.hp.to_dict(),
            base_snapshot=self.head, state_serial=self.serial)
        self.result.run_id = self.run_id
        drift = [r.fact_key for r in self.plan.requests if r.reason == "drift"]
        if drift:
            self.ledger.event(self.run_id, "drift_found", keys=drift, refresh=self.plan.refresh)
        try:
            # the cumulative gates' reference: the base model, or the last rebase
            self.gate = gate_reference(self.project, self.lm, self.head,
                                       self.cfg.gates.general_knowledge_margin)
            self.capacity = RunCapacity(self.cfg.gates, self.ledger, self.emit, self.run_id)
            self.capacity.at_head(self.snapshots, self.head, self.gate.snapshot)
            work = self.work = self.defer(self.classify())
            self.emit({"type": "edits", "total": len(work), "known": len(self.result.known),
                       "skipped": len(self.result.skipped), "batch_size": self.batch_size(None)})
            start = 0
            while start < len(work):
                if self.stop():       # a batch boundary: nothing of the next batch is done yet
                    raise RunAbandoned(self.run_id)
                routed = self.capacity.past_the_wall(lambda: self.retry.fallback(self.head))
                batch = work[start:start + self.batch_size(routed)]
                began = time.perf_counter()
                self.commit_or_retry(batch, routed)
                self.edit_seconds += time.perf_counter() - began
                start += len(batch)
            if self.pending:
                self.commit(None, [], [])
            self.ledger.event(self.run_id, "run_committed", snapshot=self.result.snapshot,
                              edit_seconds=round(self.edit_seconds, 3),
                              editor_calls=self.editor_calls,
                              **{k: len(v) for k, v in self.result.__dict__.items()
                                 if isinstance(v, list)})
        except RunAbandoned:
            self._abandon()
            raise
        except BaseException as exc:
            if not isinstance(exc, KeyboardInterrupt):   # run_failed, or interrupted if HEAD moved
                end_failed_run(self.project, self.ledger, self.run_id, exc)
            raise
        self.emit(self.result.to_dict())
        if self.result.rejected and not (self.result.applied or self.result.known
                                         or self.result.skipped):
            raise GateFailed(f"the gates rejected every edit ({len(self.result.rejected)}); "
                             "nothing was committed", hint="`kbsync show " + self.run_id[:12]
                             + "` lists the figures")
        return self.result

    def defer(self, work: list[Work]) -> list[Work]:
        """The first `max_edits` edits; the others are recorded as deferred, left out of
        the applied state, so the next plan has them again."""
        if self.max_edits is None or len(work) <= self.max_edits:
            return work
        later = work[self.max_edits:]
        self.result.deferred = [w.request.fact_key for w in later]
        self.ledger.event(self.run_id, "edits_deferred", keys=self.result.deferred,
                          max_edits=self.max_edits)
        self.emit({"type": "deferred", "count": len(later), "max_edits": self.max_edits})
        return work[:self.max_edits]

    def _abandon(self) -> None:
        """Record a stopped run: its edits not yet committed or rejected as interrupted,
        then the run itself, so the ledger says at once what the next run plans again."""
        done = set(self.result.applied) | set(self.result.rejected)
        with self.ledger.transaction():
            for w in self.work:
                if w.request.fact_key not in done:
                    self._record(w.request, "interrupted", pre_answer=w.pre_answer,
                                 reason="stopped before its batch; planned again next run")
            self.ledger.event(self.run_id, "run_interrupted", detail="stopped on request",
                              snapshot=self.result.snapshot)

    # -- what to do per request ----------------------------------------------------------
    def classify(self) -> list[Work]:
        """The work to edit; known facts and skipped removes recorded as such."""
        sorted_ = triage(self.lm, self.plan.requests, self.desired, self.applied, self.ledger)
        for req in sorted_.skipped:
            self._record(req, "skipped", reason="not edited by kbsync: left as the model "
                         "knew it")
            self.pending[req.fact_key] = None
            self.result.skipped.append(req.fact_key)
        for w in sorted_.known:
            self._record(w.request, "known", reason="the model already answers this",
                         pre_answer=w.pre_answer)
            self.pending[w.request.fact_key] = w.fact
            self.result.known.append(w.request.fact_key)
        return sorted_.work

    # -- batches -------------------------------------------------------------------------
    def probes(self, batch: list[Work]) -> Probes:
        keys = {w.request.fact_key for w in batch}
        para = [(p, w.spec.target, i) for i, w in enumerate(batch) for p in w.spec.paraphrases]
        local = [p.prompt for w in batch if w.fact for p in w.fact.locality]
        # earlier facts: the applied state plus what this run found known or committed
        kb = self._next_applied()
        others = sorted(k for k in kb.facts if k not in keys)
        rng = random.Random(self.cfg.seed)
        unrelated = rng.sample(others, min(UNRELATED_SAMPLE, len(others)))
        local += [kb.prompts(k)[0] for k in unrelated] + list(GENERAL_PROMPTS)
        retained = rng.sample(others, min(self.cfg.gates.retention_sample, len(others)))
        return Probes([w.spec.text for w in batch], [w.spec.target for w in batch],
                      [p for p, _, _ in para], [t for _, t, _ in para], local,
                      [kb.prompts(k)[0] for k in retained],
                      [kb.facts[k].object for k in retained],
                      para_owner=[i for _, _, i in para], general_prompts=general_prompts(),
                      retention_keys=retained)

    def batch_size(self, routed) -> int:
        """kbsync.yaml's batch_size, else the editor's own; past the wall the fallback
        editor's own: a GRACE batch of 10 spends 94 % of its time in the gates
        (benchmarks/RESULTS.md, "Past the wall in batches of the fallback's size")."""
        if routed is not None:
            return routed.default_batch_size
        return self.cfg.batch_size or self.editor.default_batch_size

    def commit_or_retry(self, batch: list[Work], routed=None, of: Attempt | None = None) -> None:
        """Commit what of `batch` passes, at a bounded cost: at most 2 * (2 + 3 * len(batch))
        editor calls for a batch of up to PART_SIZE (each attempt may be repaired once),
        where the bisection this replaces edited the whole batch again at every level of
        its tree (issue 22). A bigger batch that fails a gate no single edit owns is retried
        in parts of PART_SIZE, each under this rule, instead of edit by edit. `routed`: the
        fallback editor that makes the batch past the wall, or None (the run's editor);
        `of`: the attempt this batch is a part of."""
        strategy = "part" if of else "batch" if routed is None else "past_the_wall"
        first = self.attempt_repaired(batch, strategy, of=of, editor=routed)
        if first.passed:
            return
        if len(batch) == 1:
            self._retry_alone(batch[0], first, routed)
            return
        dropped = [w for w in batch if first.own_failed(w.request.fact_key)]
        rest = [w for w in batch if w not in dropped]
        if dropped and rest and self.attempt_repaired(rest, "without_failing", of=first,
                                                      editor=routed).passed:
            rest = []
        if len(rest) > PART_SIZE:
            for start in range(0, len(rest), PART_SIZE):
                self.commit_or_retry(rest[start:start + PART_SIZE], routed, of=first)
            rest = []
        for w in rest:     # the batch failed a gate no single edit owns: one at a time
            alone = self.attempt_repaired([w], "one_by_one", of=first, editor=routed)
            if not alone.passed:
                self._retry_alone(w, alone, routed)
        for w in dropped:
            self._retry_alone(w, first, routed)

    def attempt_repaired(self, batch: list[Work], strategy: str, *, of: Attempt | None = None,
                         editor=None) -> Attempt:
        """`attempt`, and if that fails retention alone, once more with the earlier facts
        it lost taught back (drift edits, as `refresh` plans them): in a small knowledge
        base one lost fact is already below the gate (1 of 30 is 0.967 < 0.98), and
        rejecting an edit for it costs a fact that the lost one could have kept. Tried at
        every stage of the retry (a lone edit loses earlier facts too), never twice in a row."""
        tried = self.attempt(batch, strategy, of=of, editor=editor)
        if tried.passed or not (self.cfg.retry.repair and tried.lost
                                and tried.failed_only("retention")):
            return tried
        repairs = [repair_work(key, self._next_applied()) for key in tried.lost]
        return self.attempt(batch + repairs, "with_repair", of=tried, editor=editor)

    def _retry_alone(self, w: Work, last: Attempt, routed=None) -> None:
        """An edit that failed: with more effort if it failed its own check (more steps
        cannot fix a batch's drift), then with the fallback editor; only then rejected.
        `routed`: the fallback editor made the batch already (past the wall)."""
        if routed is not None:
            self._reject(w, last.batch, last.checks)
            return
        if last.own_failed(w.request.fact_key) and self.cfg.retry.effort > 1:
            last = self.attempt_repaired([w], "more_effort", of=last,
                                         editor=self.retry.effort())
            if last.passed:
                return
        fallback = self.retry.fallback(self.head)
        if fallback is not None:
            last = self.attempt_repaired([w], "fallback", of=last, editor=fallback)
            if last.passed:
                return
        self._reject(w, last.batch, last.checks)

    def attempt(self, batch: list[Work], strategy: str, *, of: Attempt | None = None,
                editor=None) -> Attempt:
        """Edit `batch` with `editor` (default: the run's), gate it, and commit it if every
        gate passes; otherwise leave the model as it was. `of`: the attempt it retries."""
        editor = editor or self.editor
        self.batch_no += 1
        number, origin = self.batch_no, of.origin if of else self.batch_no
        self.tries = self.tries + 1 if of else 1
        keys = [w.request.fact_key for w in batch]
        self.emit({"type": "batch_start", "batch": number, "size": len(batch), "keys": keys,
                   "attempt": self.tries, "strategy": strategy, "of": origin})
        if of is not None:
            self.ledger.event(self.run_id, "batch_retry", batch=number, of=origin,
                              attempt=self.tries, strategy=strategy, keys=keys,
                              editor=editor.name, after_failed=[c.metric for c in of.checks
                                                                if not c.passed])
        probes = self.probes(batch)
        parent = parent_reference(self.lm, probes)
        patch, verdict = self._edit_and_check(editor, batch, probes, parent, number)
        checks = verdict.checks
        with self.ledger.transaction():     # one write for the batch's gate rows, not one each
            for c in checks:
                self.ledger.record_gate(self.run_id, number, c.metric, c.value, c.threshold,
                                        c.passed, attempt=self.tries, strategy=strategy,
                                        of=origin)
        self.emit({"type": "gates", "batch": number, "checks": [c.to_dict() for c in checks],
                   "attempt": self.tries, "strategy": strategy})
        passed = all(c.passed for c in checks)
        if passed:
            self.retry.accepting(editor).accept(patch)
            self.commit(patch, batch, checks, editor)
        own = None if verdict.own is None else {
            w.request.fact_key: ok for w, ok in zip(batch, verdict.own)}
        return Attempt(number, origin, checks, passed, own, verdict.lost)

    def _edit_and_check(self, editor, batch: list[Work], probes: Probes, parent: dict,
                        number: int) -> tuple:
        """(patch, verdict): the patch left applied only if every gate passed."""
        self.editor_calls += 1
        try:
            patch = stored_precision(editor.edit(self.lm, [w.spec for w in batch]),
                                     self.cfg.patch_precision)
        except EditorError as exc:
            self.ledger.event(self.run_id, "editor_error", batch=number, error=str(exc))
            return None, Verdict([GateCheck("finite", 0.0, 1.0, False)])
        saved = patch.checkpoint(self.lm.model)
        patch.apply(self.lm.model)
        verdict = check(self.lm, probes, parent, self.cfg.gates, self.gate.perplexity,
                        self.gate.text, patch.checked_tensors(self.lm.model),
                        base_general=self.gate.general)
        if not verdict.passed:
            patch.restore(self.lm.model, saved)
        return patch, verdict

    def _reject(self, w: Work, batch: int, checks: list[GateCheck]) -> None:
        failed = [c.metric for c in checks if not c.passed]
        self._record(w.request, "rejected", batch=batch, reason="gates failed: " + ", ".join(failed),
                     metrics={c.metric: c.value for c in checks}, pre_answer=w.pre_answer)
        self.result.rejected.append(w.request.fact_key)
        self.emit({"type": "rejected", "key": w.request.fact_key, "failed": failed})

    # -- commit --------------------------------------------------------------------------
    def commit(self, patch, batch: list[Work], checks: list[GateCheck], editor=None) -> None:
        editor = editor or self.editor
        for w in batch:
            self.pending[w.request.fact_key] = w.fact
        kb = self._next_applied()
        snapshot, manifest = commit_batch(
            self.project, self.lm, self.ledger, self.snapshots, self.objects,
            head=self.head, serial=self.serial, applied=self.applied, kb=kb,
            pending=self.pending, patch=patch, editor=editor, checks=checks,
            run_id=self.run_id, batch_no=self.batch_no, batch=batch, gate_base=self.gate.snapshot)
        for w in batch:
            (self.result.repaired if w.repair else self.result.applied).append(w.request.fact_key)
        self.applied, self.head, self.serial = kb, snapshot, manifest.serial
        self.pending = {}
        self.result.snapshot = snapshot
        self.emit({"type": "commit", "snapshot": snapshot, "serial": manifest.serial,
                   "edits": len(batch)})
        if checks:      # the budget is spent from the reference on (a rebase resets it)
            done = len(self.result.applied) + len(self.result.rejected)
            self.capacity.committed(max(len(kb.facts) - self.gate.facts, 0), checks,
                                    pending=max(len(self.work) - done, 0))

    def _next_applied(self) -> KnowledgeBase:
        return next_applied(self.applied, self.pending, self.desired.relations)

    def _record(self, req: EditRequest, status: str, *, batch: int | None = None,
                reason: str | None = None, metrics: dict | None = None,
                pre_answer: str | None = None) -> None:
        if req.reason == "drift" and reason and not reason.startswith("drift"):
            reason = f"drift; {reason}"       # the ledger row keeps the drift marker
        self.ledger.record_edit(self.run_id, req.fact_key, req.op, status,
                                old_object=req.old_object, new_object=req.new_object,
                                batch=batch, reason=reason or req.reason, metrics=metrics,
                                pre_answer=pre_answer)
