"""kbsync/triage.py: how the plan's requests are sorted into work, known facts and skipped
removes, with the model's answers stubbed (what "known" means is tests/test_apply.py's and
kbsync/lm/score.py's concern, not this sort's)."""

from __future__ import annotations

import pytest

import kbsync.lm.score
from kbsync.facts.schema import Fact, KnowledgeBase, Relation
from kbsync.plan.plan import EditRequest
from kbsync.store.ledger import Ledger
from kbsync.triage import triage

CAPITAL = Relation(id="P36", label="capital", templates=["The capital of {subject} is",
                                                         "{subject}'s capital city is"])


def kb(**objects: str) -> KnowledgeBase:
    facts = [Fact(subject=s, relation="P36", object=o) for s, o in objects.items()]
    return KnowledgeBase(relations={"P36": CAPITAL}, facts={f.key: f for f in facts})


def add(subject: str, obj: str) -> EditRequest:
    return EditRequest(op="add", fact_key=f"{subject}/P36", subject=subject, relation="P36",
                       old_object=None, new_object=obj)


def remove(subject: str, obj: str) -> EditRequest:
    return EditRequest(op="remove", fact_key=f"{subject}/P36", subject=subject,
                       relation="P36", old_object=obj, new_object=None)


@pytest.fixture
def answers(monkeypatch):
    """The model's greedy answer per prompt text; a prompt is known when it answers the target."""
    said: dict[str, str] = {}

    def probe(lm, prompts, targets, **kwargs):
        return [(said.get(p, "?") == t, said.get(p, "?")) for p, t in zip(prompts, targets)]

    monkeypatch.setattr(kbsync.lm.score, "probe_answers", probe)
    return said


# (requests, desired, applied, kbsync edited before (subject -> pre_answer), the model says,
#  expected work as (op, subject, target, pre_answer), known subjects, skipped subjects)
CASES = [
    ("an add the model does not answer is work",
     [add("France", "Lyon")], {"France": "Lyon"}, {}, {},
     {"The capital of France is": "Paris"},
     [("add", "France", "Lyon", "Paris")], [], []),
    ("an add the model already answers is known",
     [add("France", "Paris")], {"France": "Paris"}, {}, {},
     {"The capital of France is": "Paris"}, [], ["France"], []),
    ("a remove kbsync edited teaches back what the model said before",
     [remove("Peru", "Cusco")], {}, {"Peru": "Cusco"}, {"Peru": "Lima"},
     {"The capital of Peru is": "Cusco"}, [("remove", "Peru", "Lima", "Cusco")], [], []),
    ("a remove kbsync never edited is skipped, and the model is not asked",
     [remove("Peru", "Lima")], {}, {"Peru": "Lima"}, {}, {}, [], [], ["Peru"]),
    ("mixed, in plan order",
     [add("Chad", "Abeche"), remove("Peru", "Lima"), add("Mali", "Bamako")],
     {"Chad": "Abeche", "Mali": "Bamako"}, {"Peru": "Lima"}, {},
     {"The capital of Chad is": "N'Djamena", "The capital of Mali is": "Bamako"},
     [("add", "Chad", "Abeche", "N'Djamena")], ["Mali"], ["Peru"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triage_sorts_requests(case, answers, tmp_path):
    _, requests, desired, applied, edited, said, work, known, skipped = case
    answers.update(said)
    ledger = Ledger(tmp_path / "ledger.db")
    for subject, pre in edited.items():
        ledger.record_edit(None, f"{subject}/P36", "add", "applied", pre_answer=pre)
    out = triage(None, requests, kb(**desired), kb(**applied), ledger)
    assert [(w.request.op, w.request.subject, w.spec.target, w.pre_answer)
            for w in out.work] == work
    assert [w.request.subject for w in out.known] == known
    assert [r.subject for r in out.skipped] == skipped
    for w in out.work + out.known:      # the relation's other templates are paraphrases
        assert w.spec.paraphrases == (f"{w.request.subject}'s capital city is",)
