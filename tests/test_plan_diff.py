"""diff / apply_diff: table cases and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kbsync.facts.schema import Fact, KnowledgeBase, LocalityProbe, Relation
from kbsync.plan.diff import apply_diff, diff
from kbsync.plan.plan import EditRequest

RELATIONS = {rid: Relation(id=rid, label=rid, templates=["{subject} " + rid])
             for rid in ("P17", "P19", "P36")}


def F(subject: str, obj: str, relation: str = "P17", **extra) -> Fact:
    return Fact(subject=subject, relation=relation, object=obj, **extra)


def KB(*facts: Fact) -> KnowledgeBase:
    return KnowledgeBase(relations=RELATIONS, facts={f.key: f for f in facts})


def ops(requests: list[EditRequest]) -> list[tuple]:
    return [(r.op, r.fact_key, r.old_object, r.new_object) for r in requests]


@pytest.mark.parametrize("applied, desired, expected", [
    (KB(), KB(), []),
    (KB(), KB(F("A", "x")), [("add", "A/P17", None, "x")]),
    (KB(F("A", "x")), KB(), [("remove", "A/P17", "x", None)]),
    (KB(F("A", "x")), KB(F("A", "y")), [("update", "A/P17", "x", "y")]),
    # probes and paraphrases do not change what the model must know
    (KB(F("A", "x")), KB(F("A", "x", paraphrases=["p"])), []),
    # explicit id whose question changed: remove the old fact, add the new one
    (KB(F("A", "x", id="k")), KB(F("B", "x", id="k")),
     [("add", "k", None, "x"), ("remove", "k", "x", None)]),
    # order: adds, updates, removes; each by key
    (KB(F("B", "1"), F("D", "1"), F("E", "1")), KB(F("C", "1"), F("A", "1"), F("D", "2")),
     [("add", "A/P17", None, "1"), ("add", "C/P17", None, "1"), ("update", "D/P17", "1", "2"),
      ("remove", "B/P17", "1", None), ("remove", "E/P17", "1", None)]),
])
def test_diff_table(applied, desired, expected):
    assert ops(diff(applied, desired)) == expected


def test_requests_carry_the_desired_fact():
    fact = F("A", "y", paraphrases=["Where is A?"],
             locality=[LocalityProbe(prompt="B is in", answer="z")])
    [request] = diff(KB(F("A", "x")), KB(fact))
    assert request.fact == fact and request.reason == "diff"
    assert (request.subject, request.relation) == ("A", "P17")


def test_edit_request_checks_objects_against_op():
    with pytest.raises(ValueError, match="old_object must be None"):
        EditRequest(op="add", fact_key="k", subject="s", relation="r", old_object="a",
                    new_object="b")
    with pytest.raises(ValueError, match="new_object must be set"):
        EditRequest(op="update", fact_key="k", subject="s", relation="r", old_object="a",
                    new_object=None)


def test_apply_diff_without_fact_keeps_probes_and_ids():
    old = F("A", "x", paraphrases=["p"])
    update = EditRequest(op="update", fact_key="A/P17", subject="A", relation="P17",
                         old_object="x", new_object="y", reason="drift")
    add = EditRequest(op="add", fact_key="my-id", subject="B", relation="P17",
                      old_object=None, new_object="z")
    result = apply_diff(KB(old), [update, add], RELATIONS)
    assert result.facts["A/P17"] == F("A", "y", paraphrases=["p"])
    assert result.facts["my-id"] == F("B", "z", id="my-id")


def test_apply_diff_refuses_to_remove_a_missing_fact():
    remove = EditRequest(op="remove", fact_key="A/P17", subject="A", relation="P17",
                         old_object="x", new_object=None)
    with pytest.raises(KeyError):
        apply_diff(KB(), [remove], RELATIONS)


# ---------------------------------------------------------------- properties

_names = st.sampled_from(["A", "B", "C", "D", "E", "Paris", "no", "Ünïcode"])
_facts = st.builds(
    lambda s, r, o, para, fid: Fact(subject=s, relation=r, object=o, paraphrases=para, id=fid),
    _names, st.sampled_from(sorted(RELATIONS)), _names,
    st.lists(st.sampled_from(["p1", "p2"]), max_size=1), st.none() | st.sampled_from(["i1", "i2"]))
_kbs = st.lists(_facts, max_size=8, unique_by=lambda f: f.key).map(lambda fs: KB(*fs))


@settings(max_examples=100, deadline=None)
@given(_kbs)
def test_diff_with_itself_is_empty(kb):
    assert diff(kb, kb) == []


@settings(max_examples=150, deadline=None)
@given(_kbs, _kbs)
def test_apply_of_diff_reaches_desired(a, b):
    # Facts whose object did not change keep a's metadata (nothing to edit), so compare
    # against b with those facts taken from a; every key and object must match b exactly.
    result = apply_diff(a, diff(a, b), b.relations)
    unchanged = {k: a.facts[k] for k in b.facts
                 if k in a.facts and (a.facts[k].subject, a.facts[k].relation, a.facts[k].object)
                 == (b.facts[k].subject, b.facts[k].relation, b.facts[k].object)}
    assert result == KnowledgeBase(relations=b.relations, facts={**b.facts, **unchanged})
    assert diff(result, b) == []


@settings(max_examples=100, deadline=None)
@given(_kbs, _kbs)
def test_apply_of_diff_is_exact_when_metadata_agrees(a, b):
    # The contract: apply(diff(a, b), a) == b whenever shared facts carry the same metadata.
    b = KB(*[a.facts[k] if k in a.facts and a.facts[k].object == f.object
             and (a.facts[k].subject, a.facts[k].relation) == (f.subject, f.relation) else f
             for k, f in b.facts.items()])
    assert apply_diff(a, diff(a, b), b.relations) == b


@settings(max_examples=100, deadline=None)
@given(_kbs, _kbs)
def test_diff_is_deterministic_and_sorted(a, b):
    requests = diff(a, b)
    assert requests == diff(a, b)
    order = {"add": 0, "update": 1, "remove": 2}
    keys = [(order[r.op], r.fact_key) for r in requests]
    assert keys == sorted(keys)
