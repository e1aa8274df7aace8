"""Drift refresh: which committed facts does the model at HEAD no longer answer?

A fact is committed when the applied state (HEAD's facts) holds it with the object the
facts files still want; the model at HEAD should then answer it. It can stop doing so
when a later batch breaks it (the retention gate only samples earlier facts and allows a
small loss), so a diff against the applied state cannot see it: only probing the model
can. "Answers" is `kbsync.lm.score.probe_answers`, the same test apply uses to find facts
the model already knows, so a fact refresh calls drifted is one apply will edit, and a
fact apply calls known is one refresh will not flag.

Facts the files change (adds, updates, removes) are the diff's business, not drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from kbsync.facts.schema import KnowledgeBase
from kbsync.plan.plan import EditRequest, drift_request

__all__ = ["PROBE_BATCH", "Drifted", "RefreshReport", "committed_keys", "find_drift",
           "refresh", "drift_requests"]

PROBE_BATCH = 32          # facts per probe step (one forward + one greedy decode each)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Drifted:
    key: str
    object: str          # what the facts (and the applied state) say
    answer: str          # what the model answered instead (first phrase)

    def to_dict(self) -> dict[str, str]:
        return {"key": self.key, "object": self.object, "answer": self.answer}


@dataclass
class RefreshReport:
    snapshot: str | None            # the snapshot probed (HEAD)
    probed: int                     # committed facts probed
    drifted: list[Drifted] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What a refreshed plan records (Plan.refresh)."""
        return {"snapshot": self.snapshot, "probed": self.probed, "drifted": len(self.drifted)}

    def to_dict(self) -> dict[str, Any]:
        return {"type": "refresh", **self.summary(),
                "drift": [d.to_dict() for d in self.drifted]}


def committed_keys(desired: KnowledgeBase, applied: KnowledgeBase) -> list[str]:
    """Keys of the facts the files and the applied state agree on (same question: subject
    and relation, or prompt; same object): exactly those the diff plans nothing for."""
    keys = []
    for key, fact in desired.facts.items():
        old = applied.facts.get(key)
        if old is not None and (old.asks, old.object) == (fact.asks, fact.object):
            keys.append(key)
    return sorted(keys)


def find_drift(lm, kb: KnowledgeBase, keys: list[str], *, batch: int = PROBE_BATCH,
               progress: Progress | None = None) -> list[Drifted]:
    """The facts among `keys` that `lm` does not answer, probed `batch` at a time with
    each fact's main prompt (the one apply edits and the efficacy gate checks)."""
    from kbsync.lm.score import first_phrase, probe_answers

    drifted: list[Drifted] = []
    for start in range(0, len(keys), batch):
        chunk = keys[start:start + batch]
        targets = [kb.facts[k].object for k in chunk]
        # only a fact the model misses needs its greedy answer (the drift's `observed`)
        probes = probe_answers(lm, [kb.prompts(k)[0] for k in chunk], targets,
                               answers_for_known=False)
        drifted += [Drifted(k, target, first_phrase(answer))
                    for k, target, (answered, answer) in zip(chunk, targets, probes)
                    if not answered]
        if progress is not None:
            progress(min(start + batch, len(keys)), len(keys))
    return drifted


def refresh(project, *, desired: KnowledgeBase | None = None, state=None, lm=None,
            progress: Progress | None = None) -> RefreshReport:
    """Probe HEAD's model for every committed fact. Loads the model only if there is
    something to probe; `desired`, `state` and `lm` may be passed in when the caller
    already has them (apply --refresh reuses its model)."""
    from kbsync.facts.load import load_knowledge_base
    from kbsync.store.state import read_applied_state

    desired = desired if desired is not None else load_knowledge_base(project.facts_dir)
    state = state if state is not None else read_applied_state(project.kbsync_dir)
    keys = committed_keys(desired, state.kb)
    if keys and lm is None:
        from kbsync.editing.rebuild import load_at

        lm, _ = load_at(project, state.snapshot_id, with_editor=False)
    if progress is not None:
        progress(0, len(keys))
    drifted = find_drift(lm, desired, keys, progress=progress) if keys else []
    return RefreshReport(state.snapshot_id, len(keys), drifted)


def drift_requests(report: RefreshReport, desired: KnowledgeBase) -> list[EditRequest]:
    """One update (old object == new object, reason "drift") per drifted fact."""
    return [drift_request(d.key, desired.facts[d.key], d.answer) for d in report.drifted]
