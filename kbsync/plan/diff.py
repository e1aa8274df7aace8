"""Fact-level diff between the applied and the desired knowledge base.

Facts are compared by key (explicit id, else subject/relation): a new key is an add, a
vanished key a remove, the same key with another object an update. A key whose subject or
relation changed (possible with explicit ids), or whose prompt changed (a question-form
fact), asks a different question, so it becomes a remove of the old fact plus an add of
the new one. Paraphrases, probes and templates do
not change what the model must know, so they produce no request.
"""

from __future__ import annotations

from typing import Iterable, Mapping

from kbsync.facts.schema import Fact, KnowledgeBase, Relation
from kbsync.plan.plan import EditRequest

__all__ = ["OP_ORDER", "diff", "apply_diff"]

OP_ORDER = {"add": 0, "update": 1, "remove": 2}


def diff(applied: KnowledgeBase, desired: KnowledgeBase) -> list[EditRequest]:
    """Requests turning `applied` into `desired`, ordered by op (add, update, remove),
    then key."""
    requests: list[EditRequest] = []
    for key, new in desired.facts.items():
        old = applied.facts.get(key)
        if old is None:
            requests.append(_add(new))
        elif old.asks != new.asks:
            requests += [_remove(old), _add(new)]
        elif old.object != new.object:
            requests.append(EditRequest(op="update", fact_key=key, subject=new.subject,
                                        relation=new.relation, old_object=old.object,
                                        new_object=new.object, fact=new, prompt=new.prompt))
    requests += [_remove(old) for key, old in applied.facts.items() if key not in desired.facts]
    return sorted(requests, key=lambda r: (OP_ORDER[r.op], r.fact_key))


def _add(fact: Fact) -> EditRequest:
    return EditRequest(op="add", fact_key=fact.key, subject=fact.subject,
                       relation=fact.relation, old_object=None, new_object=fact.object,
                       fact=fact, prompt=fact.prompt)


def _remove(fact: Fact) -> EditRequest:
    return EditRequest(op="remove", fact_key=fact.key, subject=fact.subject,
                       relation=fact.relation, old_object=fact.object, new_object=None,
                       prompt=fact.prompt)


def apply_diff(kb: KnowledgeBase, requests: Iterable[EditRequest],
               desired_relations: Mapping[str, Relation] | Iterable[Relation]
               ) -> KnowledgeBase:
    """The knowledge base after applying `requests` to `kb` (removes first, so a
    remove + add of the same key replaces it). apply_diff(a, diff(a, b), b.relations)
    reproduces b up to metadata of facts whose object did not change."""
    facts = dict(kb.facts)
    for request in sorted(requests, key=lambda r: r.op != "remove"):
        if request.op == "remove":
            if facts.pop(request.fact_key, None) is None:
                raise KeyError(f"cannot remove {request.fact_key!r}: not in the knowledge base")
        else:
            facts[request.fact_key] = _desired_fact(request, facts.get(request.fact_key))
    relations = (dict(desired_relations) if isinstance(desired_relations, Mapping)
                 else {r.id: r for r in desired_relations})
    return KnowledgeBase(relations=relations, facts=facts)


def _desired_fact(request: EditRequest, current: Fact | None) -> Fact:
    if request.fact is not None:
        return request.fact
    if current is not None:  # a request without the fact (e.g. drift): keep its probes
        return current.model_copy(update={"object": request.new_object})
    implicit = request.prompt if request.prompt is not None else f"{request.subject}/{request.relation}"
    explicit_id = request.fact_key if request.fact_key != implicit else None
    return Fact(subject=request.subject, relation=request.relation, object=request.new_object,
                id=explicit_id, prompt=request.prompt)
