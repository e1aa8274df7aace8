"""Plan: summary and the versioned JSON format."""

from __future__ import annotations

import json

import pytest

from kbsync.errors import IntegrityError, KbsyncError
from kbsync.facts.schema import Fact, KnowledgeBase, Relation
from kbsync.plan.diff import diff
from kbsync.plan.plan import FORMAT_VERSION, Plan

P17 = Relation(id="P17", label="country", templates=["{subject} is in"])


def make_plan(**overrides) -> Plan:
    old = KnowledgeBase(relations={"P17": P17}, facts={
        f.key: f for f in [Fact(subject="A", relation="P17", object="x"),
                           Fact(subject="B", relation="P17", object="x")]})
    new = KnowledgeBase(relations={"P17": P17}, facts={
        f.key: f for f in [Fact(subject="A", relation="P17", object="y", paraphrases=["A?"]),
                           Fact(subject="C", relation="P17", object="z")]})
    fields = dict(requests=diff(old, new), base_serial=3, base_snapshot="ab" * 32,
                  facts_hash=new.content_hash(), facts_dir="facts",
                  git={"commit": "c" * 40, "dirty": False})
    return Plan(**{**fields, **overrides})


def test_summary_and_changes():
    plan = make_plan()
    assert plan.summary() == {"add": 1, "change": 1, "remove": 1}
    assert plan.has_changes
    assert not make_plan(requests=[]).has_changes


def test_json_round_trip():
    plan = make_plan()
    text = plan.to_json()
    data = json.loads(text)
    assert data["format_version"] == FORMAT_VERSION == "1.2"
    assert data["summary"] == {"add": 1, "change": 1, "remove": 1}
    assert data["requests"][0]["op"] == "add"
    assert data["created_at"].endswith("+00:00")
    assert Plan.from_json(text) == plan


def test_unknown_keys_of_the_same_major_are_ignored():
    data = json.loads(make_plan().to_json())
    data["format_version"] = "1.7"
    data["future_field"] = {"x": 1}
    data["requests"][0]["future_request_field"] = 2
    plan = Plan.from_json(json.dumps(data))
    assert plan.format_version == "1.7" and plan.summary()["add"] == 1


@pytest.mark.parametrize("version", ["2.0", "0.9", 1, None, "x"])
def test_unknown_major_is_refused(version):
    data = json.loads(make_plan().to_json())
    data["format_version"] = version
    with pytest.raises(IntegrityError) as info:
        Plan.from_json(json.dumps(data))
    assert info.value.exit_code == 5


@pytest.mark.parametrize("text, message", [
    ("{not json", "invalid JSON"), ("[]", "expected a JSON object"),
    ('{"format_version": "1.0"}', "not a valid plan file: requests"),
])
def test_malformed_plan_files(text, message):
    with pytest.raises(KbsyncError, match=message):
        Plan.from_json(text)
