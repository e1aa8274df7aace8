"""What an apply edits: each planned request sorted into work to edit, facts the model
already knows, and removes left alone (kbsync never edited them); the edit spec of a fact
(its relation's templates, or a question-form fact's own prompt) and what the model said
before kbsync first edited it. kbsync/scheduler.py's Scheduler decides how to edit the work
and records the rest."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kbsync.editing.request import EditSpec
from kbsync.facts.schema import Fact, KnowledgeBase
from kbsync.plan.plan import EditRequest, drift_request
from kbsync.store.ledger import Ledger

if TYPE_CHECKING:
    from kbsync.lm.load import LoadedModel


@dataclass
class Work:
    """One edit to make: the request, what to teach, and what the model said before."""
    request: EditRequest
    spec: EditSpec
    fact: Fact | None            # the fact as it will be applied (None for a remove)
    pre_answer: str | None = None
    repair: bool = False         # an earlier fact re-taught because this batch lost it


def spec_for(fact: Fact, target: str, desired: KnowledgeBase,
             applied: KnowledgeBase) -> EditSpec:
    """The edit that teaches `fact` with object `target`: a question-form fact's own prompt,
    else its relation's first template (from the desired facts, or the applied ones for a
    relation since removed), the other templates and the fact's paraphrases as paraphrases."""
    if fact.prompt is not None:
        template, subject = fact.prompt_template()
        return EditSpec(template, subject, target, key=fact.key,
                        paraphrases=tuple(fact.paraphrases))
    relation = desired.relations.get(fact.relation) or applied.relations[fact.relation]
    others = [t.format(subject=fact.subject) for t in relation.templates[1:]]
    return EditSpec(relation.templates[0], fact.subject, target, key=fact.key,
                    paraphrases=tuple(others + list(fact.paraphrases)))


def repair_work(key: str, applied: KnowledgeBase) -> Work:
    """The edit that teaches back an applied fact a batch made the model lose."""
    fact = applied.facts[key]
    return Work(drift_request(key, fact), spec_for(fact, fact.object, applied, applied), fact,
                repair=True)


def first_applied_edit(ledger: Ledger, fact_key: str) -> dict | None:
    """The earliest edit kbsync applied to this fact: its pre_answer is what the model said
    before kbsync ever touched it."""
    applied = [e for e in ledger.edits_for(fact_key) if e["status"] == "applied"]
    return applied[0] if applied else None



@dataclass
class Triage:
    """The plan's requests sorted: `work` to edit (pre_answer filled in), `known` (the
    model already answers them) and `skipped` removes (the fact's key: kbsync never
    edited it, so the model keeps what it knew)."""
    work: list[Work] = field(default_factory=list)
    known: list[Work] = field(default_factory=list)
    skipped: list[EditRequest] = field(default_factory=list)


def triage(lm: LoadedModel, requests: list[EditRequest], desired: KnowledgeBase,
           applied: KnowledgeBase, ledger: Ledger) -> Triage:
    """Sort `requests`: a remove undoes kbsync's first edit of the fact (teaches back the
    answer recorded before it), or is skipped when kbsync never edited it; an add or change
    teaches the desired object; every edit the model already answers (one batched greedy
    probe) is known, not work."""
    from kbsync.lm.score import first_phrase, probe_answers

    out, candidates = Triage(), []
    for req in requests:
        if req.op == "remove":
            edit = first_applied_edit(ledger, req.fact_key)
            old = applied.facts.get(req.fact_key)
            if edit is None or not edit.get("pre_answer") or old is None:
                out.skipped.append(req)
                continue
            candidates.append(Work(req, spec_for(old, edit["pre_answer"], desired, applied),
                                   None))
        else:
            fact = desired.facts[req.fact_key]
            candidates.append(Work(req, spec_for(fact, fact.object, desired, applied), fact))
    if not candidates:
        return out
    answers = probe_answers(lm, [w.spec.text for w in candidates],
                            [w.spec.target for w in candidates])
    for w, (is_known, answer) in zip(candidates, answers):
        w.pre_answer = first_phrase(answer)
        (out.known if is_known else out.work).append(w)
    return out
