"""A batch that fails retention alone is edited once more with the earlier facts it lost
taught back (`retry.repair`, kbsync/apply.py Scheduler._repair), and the gates say which
earlier facts a candidate lost (Verdict.lost).

On the tiny random Llama of tests/kbproject.py: Danube and Volga are applied first; the
second apply's first gate verdict is made to report Danube lost (a real editor loses
earlier facts only by chance on a model this small), the rest of every verdict is real."""

from __future__ import annotations

import pytest
import torch

import kbsync.apply
import kbsync.evaluate.gates as gates_module
from kbproject import FACTS, answer, applied_objects, key, make_project, write_facts
from kbsync.apply import apply
from kbsync.config import Gates
from kbsync.evaluate.gates import GateCheck, Probes, Verdict, check
from kbsync.history import audit_verify
from kbsync.lm.score import answers_match
from kbsync.store.ledger import Ledger

FIRST = {s: FACTS[s] for s in ("Danube", "Volga")}


def lose_on_first_check(monkeypatch, lost: str) -> list[list[str]]:
    """Wrap the gates: the first verdict fails retention alone, with `lost` lost; returns
    the edit prompts of every check, in order."""
    seen: list[list[str]] = []

    def gated(lm, probes: Probes, *args, **kwargs) -> Verdict:
        verdict = check(lm, probes, *args, **kwargs)
        seen.append(list(probes.edit_prompts))
        if len(seen) > 1:
            return verdict
        assert lost in probes.retention_keys
        checks = [GateCheck(c.metric, 0.5, c.threshold, False) if c.metric == "retention"
                  else c for c in verdict.checks]
        assert [c.metric for c in checks if not c.passed] == ["retention"], verdict.checks
        return Verdict(checks, verdict.own, [lost])

    monkeypatch.setattr(kbsync.apply, "check", gated)
    return seen


def retries(project) -> list[tuple[str, list[str]]]:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return [(e["detail"]["strategy"], e["detail"]["keys"]) for e in ledger.rows("events")
                if e["kind"] == "batch_retry"]


@pytest.fixture
def applied_twice(tmp_path, tiny_llama_dir):
    def run(monkeypatch, **config):
        project = make_project(tmp_path / "proj", tiny_llama_dir, facts=FIRST, **config)
        assert sorted(apply(project).applied) == [key("Danube"), key("Volga")]
        write_facts(project.root, FACTS)
        seen = lose_on_first_check(monkeypatch, key("Danube"))
        return project, apply(project), seen
    return run


def test_a_batch_that_loses_an_earlier_fact_commits_with_it_taught_back(applied_twice,
                                                                        monkeypatch):
    project, result, seen = applied_twice(monkeypatch)

    new = [key("Rhine"), key("Thames")]
    assert sorted(result.applied) == new and not result.rejected
    assert result.repaired == [key("Danube")]
    assert retries(project) == [("with_repair", new + [key("Danube")])]
    assert seen[1] == seen[0] + ["The river Danube"]       # the lost fact among the edits
    assert applied_objects(project) == {key(s): o for s, o in FACTS.items()}
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        danube = ledger.edits_for(key("Danube"))
    assert [(e["status"], e["op"], e["reason"]) for e in danube] == [
        ("applied", "add", "diff"), ("applied", "update", "drift")]
    for s, o in FACTS.items():
        assert answers_match(answer(project, s), o), s
    assert audit_verify(project) == []


def test_without_repair_the_batch_is_retried_one_by_one(applied_twice, monkeypatch):
    project, result, _ = applied_twice(monkeypatch, retry={"repair": False})

    assert not result.repaired
    assert [strategy for strategy, _ in retries(project)] == ["one_by_one", "one_by_one"]


def test_verdict_names_the_earlier_facts_the_candidate_lost(monkeypatch):
    """Lost: the parent answered it and the candidate does not; a fact the parent did not
    answer is not lost, whatever the candidate says."""
    now = {"a": True, "b": False, "c": False, "d": True}
    monkeypatch.setattr(gates_module, "answered", lambda lm, prompts, targets: torch.tensor(
        [now.get(p, True) for p in prompts], dtype=torch.bool))
    monkeypatch.setattr(gates_module, "perplexity", lambda lm, text: 1.0)
    probes = Probes(["e"], ["x"], [], [], [], ["a", "b", "c", "d"], ["x"] * 4,
                    retention_keys=["ka", "kb", "kc", "kd"])
    parent = {"locality": None, "retention": torch.tensor([True, True, False, True])}
    verdict = check(None, probes, parent, Gates(), 1.0, [], [])
    assert verdict.lost == ["kb"]
    assert [c.value for c in verdict.checks if c.metric == "retention"] == [pytest.approx(2 / 3)]
