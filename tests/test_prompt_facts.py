"""Question-form facts (issue 21, item 4): a fact that gives its own `prompt` instead of a
relation, with an optional `subject` (the span editors key on; without it they key on the
prompt's last token). Reading and errors, the edit template, diff, plan file, RDF export,
and a real QA set (zsRE questions, benchmarks/data/zsre-1037.json) through `kbsync apply`,
`ask`, the ledger, refresh and the report on a tiny random Llama.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kbproject import cli, json_lines, latest_edit, make_project
from kbsync.editing.request import EditSpec
from kbsync.lm.tokens import render
from kbsync.errors import FactsError
from kbsync.facts.load import merge
from kbsync.facts.rdf_io import parse_rdf
from kbsync.facts.rdf_write import write_rdf
from kbsync.facts.schema import Fact, KnowledgeBase
from kbsync.facts.yaml_io import kb_to_yaml, parse_yaml_facts
from kbsync.history import ask
from kbsync.plan.diff import apply_diff, diff
from kbsync.plan.plan import Plan
from kbsync.store.state import read_applied_state
from kbsync.testing import TINY_TARGETS

ZSRE = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "zsre-1037.json"

NBA_PROMPT = "Question: who has the most 70-point games in NBA history? Answer:"
NBA = f"""\
version: 1
relations:
  P17: {{label: country, templates: ["{{subject}} is located in the country of"]}}
facts:
  - subject: Eiffel Tower
    relation: P17
    object: France
  - id: nba-70-point-games
    prompt: "{NBA_PROMPT}"
    subject: most 70-point games in NBA history
    object: Wilt Chamberlain
    paraphrases: ["Question: which NBA player scored 70 points the most times? Answer:"]
  - prompt: "Question: what is the capital of France? Answer:"
    object: Paris
"""


def nba_kb() -> KnowledgeBase:
    return merge([parse_yaml_facts(NBA, "kb.yaml")])


# ------------------------------------------------------------------ reading

def test_a_prompt_fact_is_keyed_by_its_id_else_its_prompt():
    kb = nba_kb()
    assert sorted(kb.facts) == ["Eiffel Tower/P17", "Question: what is the capital of France? "
                                "Answer:", "nba-70-point-games"]
    nba = kb.facts["nba-70-point-games"]
    assert (nba.relation, nba.prompt, nba.object) == (None, NBA_PROMPT, "Wilt Chamberlain")
    assert kb.prompts("nba-70-point-games") == [NBA_PROMPT]
    assert kb.prompts("Eiffel Tower/P17") == ["Eiffel Tower is located in the country of"]
    # written back as YAML it reads as the same knowledge base
    assert merge([parse_yaml_facts(kb_to_yaml(kb))]) == kb


def test_relation_facts_keep_their_canonical_form_and_hash():
    # `prompt` is left out of the canonical JSON when unset: a knowledge base written
    # before question-form facts existed keeps its content hash (saved plans stay fresh)
    kb = nba_kb()
    canonical = kb.canonical()["facts"]
    assert set(canonical["Eiffel Tower/P17"]) == {"subject", "relation", "object",
                                                  "paraphrases", "locality", "id", "source",
                                                  "valid_from", "valid_to"}
    assert canonical["nba-70-point-games"]["prompt"] == NBA_PROMPT
    assert KnowledgeBase.from_json(kb.to_json()) == kb


FACT_HEAD = 'version: 1\nrelations:\n  P17: {label: c, templates: ["{subject} is in"]}\nfacts:\n'


@pytest.mark.parametrize("fact, message", [
    ('{prompt: "Q: where? A:", relation: P17, subject: X, object: o}',
     "a `relation` or its own `prompt`, not both"),
    ("{subject: X, object: o}", "needs a `relation` (and a `subject`), or its own `prompt`"),
    ('{prompt: "Q: who wrote Hamlet? A:", subject: Macbeth, object: o}',
     "subject 'Macbeth' does not occur in the prompt"),
    ('{prompt: "Q: what is {x} for Y? A:", subject: Y, object: o}',
     "a prompt with a brace before its subject"),
    ('{prompt: "Q: who\\u001b[2J? A:", object: o}', "control character U+001B"),
    ('{prompt: "", object: o}', "must not be empty"),
])
def test_bad_prompt_facts_are_refused_with_file_and_line(fact, message):
    with pytest.raises(FactsError) as err:
        merge([parse_yaml_facts(FACT_HEAD + "  - " + fact + "\n", "kb.yaml")])
    assert str(err.value).startswith("kb.yaml:5:"), str(err.value)
    assert message in str(err.value)


# ------------------------------------------------------------------ the edit template

def test_the_template_puts_the_subject_where_the_prompt_has_it():
    fact = nba_kb().facts["nba-70-point-games"]
    template, subject = fact.prompt_template()
    assert template == "Question: who has the {subject}? Answer:"
    spec = EditSpec(template, subject, fact.object)
    assert spec.text == NBA_PROMPT
    text, (start, end) = render("{}", template, subject)      # where editors read keys
    assert text[start:end] == subject == "most 70-point games in NBA history"
    # literal braces after the subject stay literal
    braces = Fact(prompt="Q: which set is {1, 2}? A:", subject="set", object="small")
    assert EditSpec(*braces.prompt_template(), "small").text == braces.prompt


def test_without_a_subject_the_whole_prompt_is_the_span_so_keys_sit_on_its_last_token():
    fact = nba_kb().facts["Question: what is the capital of France? Answer:"]
    template, subject = fact.prompt_template()
    assert (template, subject) == ("{subject}", fact.prompt)
    text, (start, end) = render("{}", template, subject)
    assert text == fact.prompt and end == len(fact.prompt)      # the span ends the prompt
    weird = Fact(prompt="Q: what is {x}? A:", object="y")       # braces need no escaping
    assert EditSpec(*weird.prompt_template(), "y").text == weird.prompt


# ------------------------------------------------------------------ diff, plan, RDF

def _kb(*facts: Fact) -> KnowledgeBase:
    return KnowledgeBase(facts={f.key: f for f in facts})


def test_diff_and_plan_file_treat_prompt_facts_like_any_fact():
    q = Fact(prompt="Q: capital of France? A:", object="Paris")
    span = Fact(id="nba", prompt=NBA_PROMPT, subject="NBA history", object="Wilt Chamberlain")
    old = _kb(q, span)
    # an add and a remove
    assert [(r.op, r.fact_key, r.prompt, r.relation) for r in diff(_kb(), old)] == \
        [("add", "Q: capital of France? A:", q.prompt, None), ("add", "nba", NBA_PROMPT, None)]
    assert [(r.op, r.fact_key) for r in diff(old, _kb(q))] == [("remove", "nba")]
    # another answer: an update; another subject span for the same prompt: no request
    # (the question is the same); another prompt under the same id: remove + add
    new = _kb(q.model_copy(update={"object": "Lyon"}),
              span.model_copy(update={"subject": "most 70-point games"}))
    assert [(r.op, r.fact_key, r.old_object, r.new_object) for r in diff(old, new)] == \
        [("update", q.key, "Paris", "Lyon")]
    moved = _kb(q, span.model_copy(update={"prompt": "Q: NBA history's 70-point king? A:",
                                           "subject": None}))
    assert [(r.op, r.fact_key) for r in diff(old, moved)] == [("add", "nba"), ("remove", "nba")]
    assert apply_diff(old, diff(old, moved), {}) == moved
    # the plan file keeps the prompt
    requests = diff(_kb(), old)
    plan = Plan(requests=requests, base_serial=0, base_snapshot=None, facts_hash="h",
                facts_dir="facts")
    back = Plan.from_json(plan.to_json())
    assert back.requests == requests and back.requests[1].fact.subject == "NBA history"
    # a request without its fact (as a hand-written plan may have) still applies
    bare = [r.model_copy(update={"fact": None}) for r in requests]
    assert apply_diff(_kb(), bare, {}) == _kb(q, span.model_copy(update={"subject": "NBA history"}))


@pytest.mark.parametrize("fmt", ["turtle", "nt", "json-ld"])
def test_rdf_export_reads_back_to_the_same_facts(fmt):
    kb = nba_kb()
    text = write_rdf(kb, fmt)
    assert "kb:prompt" in text or "https://kbsync.dev/ns#prompt" in text
    assert merge([parse_rdf(text, fmt)]) == kb


def test_an_rdf_statement_with_both_a_prompt_and_a_relation_is_refused():
    text = write_rdf(nba_kb(), "turtle").replace(
        'kb:prompt "Question: what', 'kb:relation wdt:P17 ;\n    kb:prompt "Question: what')
    with pytest.raises(FactsError, match="both kb:prompt and kb:relation"):
        parse_rdf(text, "turtle")


# ------------------------------------------------------------------ zsRE through apply

def zsre_facts(n: int, *, with_subject: bool) -> list[dict]:
    """n zsRE questions as prompt facts: the question (its "?" dropped), the rephrased
    question as paraphrase, zsRE's NQ locality question as probe. Only questions that
    end with their subject: a 4-layer random model's prediction at a prompt's end reads
    the edited layers' hidden state only at the last token (DESIGN.md §9), so there the
    subject's last token and the prompt's last token are one, and both ways of keying
    must give the same edit. Objects are one-token words of the tiny vocabulary
    (TINY_TARGETS): a random model cannot be steered past the first token."""
    records = [r for r in json.loads(ZSRE.read_text(encoding="utf-8"))
               if r["src"].endswith(r["subject"] + "?")][:n]
    facts = []
    for rec, target in zip(records, TINY_TARGETS):
        fact = {"prompt": rec["src"][:-1], "object": target,
                "paraphrases": [rec["rephrase"]],
                "locality": [{"prompt": rec["loc"], "answer": rec["loc_ans"]}]}
        if with_subject:
            fact["subject"] = rec["subject"]
        facts.append(fact)
    return facts


def write_prompt_facts(root: Path, facts: list[dict]) -> None:
    (root / "facts" / "kb.yaml").write_text(yaml.safe_dump({"version": 1, "facts": facts},
                                                           sort_keys=False), encoding="utf-8")


def prompt_project(root: Path, model_dir: Path, facts: list[dict]):
    project = make_project(root, model_dir, facts={})
    write_prompt_facts(project.root, facts)
    return project


def test_zsre_questions_run_through_kbsync_apply_as_prompt_facts(tmp_path, tiny_llama_dir):
    facts = zsre_facts(3, with_subject=False)
    project = prompt_project(tmp_path / "proj", tiny_llama_dir, facts)
    keys = [f["prompt"] for f in facts]
    assert not any(ask(project, k)["answer"].strip().startswith(f["object"])
                   for k, f in zip(keys, facts))

    planned = cli(project, "plan", "--json")
    assert planned.exit_code == 0, planned.output
    assert sorted(r["fact_key"] for r in json.loads(planned.output)["requests"]) == sorted(keys)

    done = cli(project, "apply", "--auto-approve", "--json")
    assert done.exit_code == 0, done.output
    summary = json_lines(done.output)[-1]
    assert (summary["applied"], summary["rejected"]) == (3, 0), summary
    for k, fact in zip(keys, facts):
        assert ask(project, k)["answer"].strip().startswith(fact["object"]), k
        assert latest_edit(project, k)["status"] == "applied"
    assert sorted(read_applied_state(project.kbsync_dir).kb.facts) == sorted(keys)

    # nothing left to do; a refresh probes each question and finds no drift
    again = cli(project, "plan", "--detailed-exitcode")
    assert again.exit_code == 0, again.output
    refreshed = cli(project, "refresh", "--json")
    assert refreshed.exit_code == 0, refreshed.output
    assert json_lines(refreshed.output)[-1]["probed"] == 3
    assert json_lines(refreshed.output)[-1]["drifted"] == 0

    # the report and an RDF export of the applied facts know them by their keys
    report = cli(project, "report", "--json", "-o", str(tmp_path / "report"))
    assert report.exit_code == 0, report.output
    applied = read_applied_state(project.kbsync_dir).kb
    assert merge([parse_rdf(write_rdf(applied, "turtle"), "turtle")]) == applied

    # one answer changed: an update; a question dropped: a remove (planned only: the
    # random model's own answer, which a remove teaches back, is no token it can learn)
    write_prompt_facts(project.root, [dict(facts[0], object=TINY_TARGETS[4])] + facts[1:2])
    planned = json.loads(cli(project, "plan", "--json").output)["requests"]
    assert [(r["op"], r["fact_key"], r["prompt"]) for r in planned] == \
        [("update", keys[0], keys[0]), ("remove", keys[2], keys[2])]
    write_prompt_facts(project.root, [dict(facts[0], object=TINY_TARGETS[4])] + facts[1:])
    second = cli(project, "apply", "--auto-approve", "--json")
    assert second.exit_code == 0, second.output
    assert json_lines(second.output)[-1]["applied"] == 1, second.output
    assert ask(project, keys[0])["answer"].strip().startswith(TINY_TARGETS[4])
    assert latest_edit(project, keys[0])["op"] == "update"
    assert read_applied_state(project.kbsync_dir).kb.facts[keys[0]].object == TINY_TARGETS[4]
    assert cli(project, "audit", "verify").exit_code == 0


def test_a_given_subject_keys_the_edit_on_its_span(tmp_path, tiny_llama_dir):
    """With the subject named, the editor keys on its last token; these questions end with
    their subject, so the edit is the one keyed on the prompt's last token."""
    answers = {}
    for with_subject in (True, False):
        facts = zsre_facts(2, with_subject=with_subject)
        project = prompt_project(tmp_path / f"proj-{with_subject}", tiny_llama_dir, facts)
        result = cli(project, "apply", "--auto-approve", "--json")
        assert result.exit_code == 0, result.output
        assert json_lines(result.output)[-1]["applied"] == 2
        answers[with_subject] = [ask(project, f["prompt"])["answer"] for f in facts]
        assert all(a.strip().startswith(f["object"]) for a, f in zip(answers[with_subject], facts))
        if with_subject:
            kb = read_applied_state(project.kbsync_dir).kb
            assert {f.subject for f in kb.facts.values()} == {f["subject"] for f in facts}
    assert answers[True] == answers[False]
