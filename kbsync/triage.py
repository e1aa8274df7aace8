"""What an apply edits, one request at a time: the edit spec of a fact (its relation's
templates, or a question-form fact's own prompt) and the record of what the model said
before kbsync first edited it. kbsync/apply.py's Scheduler decides how to edit them."""

from __future__ import annotations

from dataclasses import dataclass

from kbsync.editing.request import EditSpec
from kbsync.facts.schema import Fact, KnowledgeBase
from kbsync.plan.plan import EditRequest
from kbsync.store.ledger import Ledger


@dataclass
class Work:
    """One edit to make: the request, what to teach, and what the model said before."""
    request: EditRequest
    spec: EditSpec
    fact: Fact | None            # the fact as it will be applied (None for a remove)
    pre_answer: str | None = None


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


def first_applied_edit(ledger: Ledger, fact_key: str) -> dict | None:
    """The earliest edit kbsync applied to this fact: its pre_answer is what the model said
    before kbsync ever touched it."""
    applied = [e for e in ledger.edits_for(fact_key) if e["status"] == "applied"]
    return applied[0] if applied else None

