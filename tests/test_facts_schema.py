"""Fact model: validation, keys, prompts, canonical JSON and hash."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from kbsync.facts.schema import Fact, KnowledgeBase, LocalityProbe, Relation

P17 = Relation(id="P17", label="country",
               templates=["{subject} is located in the country of", "{subject}, located in"])


def kb(*facts: Fact, relations=(P17,)) -> KnowledgeBase:
    return KnowledgeBase(relations={r.id: r for r in relations}, facts={f.key: f for f in facts})


def test_relation_prompt():
    assert P17.prompt("Eiffel Tower") == "Eiffel Tower is located in the country of"
    assert P17.prompt("Eiffel Tower", 1) == "Eiffel Tower, located in"


def test_subject_with_braces_is_not_formatted_twice():
    assert P17.prompt("{weird}") == "{weird} is located in the country of"


@pytest.mark.parametrize("template, message", [
    ("located in", "exactly once (found 0)"),
    ("{subject} and {subject}", "exactly once (found 2)"),
    ("{subject} in {place}", "only use the placeholder {subject}"),
    ("{subject!r} in", "only use the placeholder {subject}"),
    ("{subject} in {", "not a valid format string"),
    ("{0} in", "exactly once (found 0)"),
])
def test_bad_templates(template, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        Relation(id="P1", label="x", templates=[template])


def test_literal_braces_are_allowed():
    r = Relation(id="P1", label="x", templates=["{{set}} of {subject} is"])
    assert r.prompt("A") == "{set} of A is"


def test_relation_needs_a_template():
    with pytest.raises(ValidationError, match="at least one template"):
        Relation(id="P1", label="x", templates=[])


@pytest.mark.parametrize("field, value", [
    ("object", ""), ("object", "   "), ("subject", ""), ("object", False), ("object", 3),
    ("relation", None),
])
def test_fact_rejects_empty_and_non_text(field, value):
    data = {"subject": "A", "relation": "P17", "object": "B", field: value}
    with pytest.raises(ValidationError):
        Fact(**data)


def test_fact_rejects_unknown_keys_and_is_frozen():
    with pytest.raises(ValidationError, match="objetc"):
        Fact(subject="A", relation="P17", object="B", objetc="C")
    fact = Fact(subject="A", relation="P17", object="B")
    with pytest.raises(ValidationError):
        fact.object = "C"


def test_whitespace_is_trimmed():
    assert Fact(subject=" A ", relation="P17", object="France\n").object == "France"


def test_key_is_id_or_subject_relation():
    assert Fact(subject="A", relation="P17", object="B").key == "A/P17"
    assert Fact(subject="A", relation="P17", object="B", id="a-country").key == "a-country"


def test_kb_prompts_first_is_main_prompt():
    k = kb(Fact(subject="Eiffel Tower", relation="P17", object="France"))
    assert k.prompts("Eiffel Tower/P17") == ["Eiffel Tower is located in the country of",
                                            "Eiffel Tower, located in"]


def test_kb_checks_keys_and_relations():
    fact = Fact(subject="A", relation="P17", object="B")
    with pytest.raises(ValidationError, match="stored under"):
        KnowledgeBase(relations={"P17": P17}, facts={"wrong": fact})
    with pytest.raises(ValidationError, match="unknown relation"):
        KnowledgeBase(relations={}, facts={"A/P17": fact})


def test_json_round_trip_and_order_independent_hash():
    a = Fact(subject="A", relation="P17", object="B", paraphrases=["p1", "p2"],
             locality=[LocalityProbe(prompt="X is in", answer="Y")], source="s")
    b = Fact(subject="C", relation="P17", object="D", id="c")
    one = KnowledgeBase(relations={"P17": P17}, facts={a.key: a, b.key: b})
    two = KnowledgeBase(relations={"P17": P17}, facts={b.key: b, a.key: a})
    assert one == two
    assert one.to_json() == two.to_json()
    assert one.content_hash() == two.content_hash()
    back = KnowledgeBase.from_json(one.to_json())
    assert back == one and back.to_json() == one.to_json()


def test_hash_sees_every_field():
    a = Fact(subject="A", relation="P17", object="B")
    changed = [a.model_copy(update={"object": "C"}),
               Fact(subject="A", relation="P17", object="B", paraphrases=["p"])]
    hashes = {kb(f).content_hash() for f in [a, *changed]}
    assert len(hashes) == 3


def test_canonical_json_is_made_once_and_never_shared_by_a_changed_copy():
    a = Fact(subject="A", relation="P17", object="B")
    base = kb(a)
    first = base.to_json()
    assert base.to_json() is first                   # kept: plan, check and apply reuse it
    other = base.model_copy(update={"facts": {a.key: a.model_copy(update={"object": "C"})}})
    assert other.content_hash() != base.content_hash() and '"C"' in other.to_json()
    assert base == kb(a) and base != other           # equality compares the facts only


def test_empty_kb():
    empty = KnowledgeBase()
    assert empty == KnowledgeBase(relations={}, facts={})
    assert KnowledgeBase.from_json(empty.to_json()) == empty
