"""apply / log / show / ask / rollback / export and the gates, on a tiny random Llama (CPU).

Every project here is a folder in tmp_path with kbsync.yaml, facts/kb.yaml and .kbsync/,
the model a tiny random Llama saved as an HF directory (tests/kbproject.py). Prompts end
with the subject (DESIGN.md §9), so the editors really change the answers and `ask` can
check them. Integrity, locks and crashes: test_apply_safety.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kbproject import (FACTS, GATES, NEW, answer, applied_objects, cli, cli_env,
                       head, json_lines, key, latest_edit, make_project, prompt,
                       register_broken, runs, write_config, write_facts,
                       assert_kept_model_is_head)
from kbsync.apply import apply
from kbsync.errors import GateFailed
from kbsync.facts.schema import KnowledgeBase
from kbsync.history import audit_verify, export, log, rollback
from kbsync.lm.score import answers_match, first_phrase
from kbsync.project import Project, compute_plan
from kbsync.store.ledger import Ledger
from kbsync.store.objects import ObjectStore
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import read_applied_state


# ------------------------------------------------------------------ 1. the whole cycle

@pytest.mark.parametrize("editor", ["memit", "alphaedit"])
def test_whole_cycle_apply_update_log_audit_rollback_export(tmp_path, tiny_llama_dir, editor):
    project = make_project(tmp_path / "proj", tiny_llama_dir, editor=editor)
    wanted = {key(s): o for s, o in FACTS.items()}
    assert not any(answers_match(answer(project, s), o) for s, o in FACTS.items())

    first = apply(project)
    assert sorted(first.applied) == sorted(wanted) and not (first.rejected or first.known)
    assert head(project) == first.snapshot and applied_objects(project) == wanted
    for s, o in FACTS.items():
        assert answers_match(answer(project, s), o), s

    # the same facts again: no changes, no run, HEAD unchanged
    again = apply(project)
    assert again.run_id is None and again.snapshot == first.snapshot == head(project)
    assert len(runs(project)) == 1

    # one object changed in the YAML -> one update -> the new answer
    write_facts(project.root, {**FACTS, "Danube": NEW})
    plan = compute_plan(project)
    assert [(r.op, r.fact_key, r.old_object, r.new_object) for r in plan.requests] == \
        [("update", key("Danube"), FACTS["Danube"], NEW)]
    second = apply(project)
    assert second.applied == [key("Danube")] and head(project) == second.snapshot
    assert answers_match(answer(project, "Danube"), NEW)
    for s in ("Volga", "Rhine", "Thames"):                 # retention across runs
        assert answers_match(answer(project, s), FACTS[s]), s

    entries = log(project)
    assert [e["id"] for e in entries if e["kind"] == "run"] == [second.run_id, first.run_id]
    snaps = [e for e in entries if e["kind"] == "snapshot"]
    assert [e["id"] for e in snaps] == [second.snapshot, first.snapshot]   # newest first
    assert [e["head"] for e in snaps] == [True, False]
    assert audit_verify(project) == []

    # rollback to the first snapshot: old answer, old applied state, recorded
    back = rollback(project, first.snapshot[:12])
    assert back["rollback_of"] == first.snapshot and head(project) == back["snapshot"]
    assert answers_match(answer(project, "Danube"), FACTS["Danube"])
    state = read_applied_state(project.kbsync_dir)
    store = SnapshotStore(project.kbsync_dir)
    first_kb = KnowledgeBase.from_json(store.objects.get_text(store.read(first.snapshot).facts))
    assert state.kb == first_kb and state.snapshot_id == back["snapshot"]
    assert [(r.op, r.new_object) for r in compute_plan(project).requests] == [("update", NEW)]
    assert runs(project)[-1]["command"] == "rollback" and runs(project)[-1]["outcome"] == "run_committed"
    assert audit_verify(project) == []

    # export: a plain HF directory that answers like the snapshot
    from transformers import AutoModelForCausalLM
    from kbsync.editing.rebuild import load_at
    from kbsync.lm.load import load_model
    from kbsync.lm.score import greedy

    out = tmp_path / "exported"
    assert export(project, out)["snapshot"] == back["snapshot"]
    exported = AutoModelForCausalLM.from_pretrained(out)
    lm, _ = load_at(project, back["snapshot"], with_editor=False)
    ids = lm.tokenizer([prompt(s) for s in FACTS], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(exported(**ids).logits, lm.model(**ids).logits, rtol=0, atol=0)
    assert answers_match(greedy(load_model(out, device="cpu"), [prompt("Danube")])[0], FACTS["Danube"])


def test_cli_log_show_ask_audit_rollback_export(applied, tmp_path):
    result = cli(applied, "log")
    assert result.exit_code == 0 and "(HEAD)" in result.stdout and "run_committed" in result.stdout
    result = cli(applied, "log", "--json")
    assert result.exit_code == 0, result.stderr
    entries = json_lines(result.stdout)
    run = next(e for e in entries if e["kind"] == "run")
    snap = next(e for e in entries if e["kind"] == "snapshot")
    assert snap["head"] and run["outcome"] == "run_committed"

    shown = json.loads(cli(applied, "show", run["id"][:15], "--json").stdout)
    assert {e["fact_key"] for e in shown["edits"] if e["status"] == "applied"} == \
        {key(s) for s in FACTS}
    assert {g["metric"] for g in shown["gates"]} >= {"finite", "efficacy", "locality", "ppl_drift"}
    assert json.loads(cli(applied, "show", snap["id"][:12], "--json").stdout)["run_id"] == run["id"]

    asked = json.loads(cli(applied, "ask", prompt("Volga"), "--json").stdout)
    assert asked["snapshot"] == snap["id"] and answers_match(asked["answer"], FACTS["Volga"])
    result = cli(applied, "audit", "verify")
    assert result.exit_code == 0 and "audit ok" in result.stdout

    result = cli(applied, "export", "HEAD", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "config.json").is_file()
    assert cli(applied, "export", str(tmp_path / "out")).exit_code == 1        # not empty
    assert cli(applied, "rollback", "--json", snap["id"]).exit_code == 0
    assert cli(applied, "show", "nope", "--json").exit_code == 1


# ------------------------------------------------------------------ 2. remove

def test_remove_restores_pre_edit_answer_and_skips_a_fact_never_edited(applied, monkeypatch):
    # A random model's continuation is several tokens of noise, which no edit teaches back
    # (only the first token after the subject is steerable); kbsync reads "what the model
    # said" from a 6-token greedy continuation, so here that continuation is its first token.
    import kbsync.lm.score as score
    real_greedy = score.greedy
    monkeypatch.setattr(score, "greedy", lambda lm, prompts, max_new_tokens=8:
                        real_greedy(lm, prompts, min(max_new_tokens, 1)))
    # subjects whose keys are far from FACTS' (cosine < 0.2 at layers 1-2: an edit of a
    # near twin such as Nile/Danube, 0.9, overwrites the other and fails retention), and a
    # known answer that survives the other edit (a random model's answers have tiny margins)
    edited, known = "Jordan", "Niger"
    said = {s: first_phrase(answer(applied, s)) for s in (edited, known)}
    assert all(w.isalpha() for w in said.values()) and said[edited] != "University", said

    write_facts(applied.root, {**FACTS, edited: "University", known: said[known]})
    added = apply(applied)
    assert added.applied == [key(edited)] and added.known == [key(known)]
    assert latest_edit(applied, key(edited))["pre_answer"] == said[edited]
    assert answers_match(answer(applied, edited), "University")

    # remove both: the edited one answers as before, the never-edited one is skipped
    write_facts(applied.root, FACTS)
    removed = apply(applied)
    assert removed.applied == [key(edited)] and removed.skipped == [key(known)]
    assert answers_match(answer(applied, edited), said[edited])
    for s, o in FACTS.items():
        assert answers_match(answer(applied, s), o), s
    assert applied_objects(applied) == {key(s): o for s, o in FACTS.items()}
    edit = latest_edit(applied, key(edited))
    assert (edit["op"], edit["status"], edit["old_object"]) == ("remove", "applied", "University")
    assert latest_edit(applied, key(known))["status"] == "skipped"
    assert compute_plan(applied).requests == [] and audit_verify(applied) == []


def test_python_m_kbsync_cli_has_every_command(kb_cache):
    done = subprocess.run([sys.executable, "-m", "kbsync.cli", "--help"], capture_output=True,
                          text=True, env=cli_env(kb_cache))
    assert done.returncode == 0
    for command in ("apply", "log", "show", "audit", "ask", "rollback", "export"):
        assert f"  {command} " in done.stdout, command


# ------------------------------------------------------------------ 3./4. gates

@pytest.mark.parametrize("mode", ["nan_patch", "nan_solve"])
def test_nan_edit_is_rejected_and_cli_exits_4(tmp_path, tiny_llama_dir, monkeypatch, mode):
    register_broken(monkeypatch)
    project = make_project(tmp_path / "proj", tiny_llama_dir, editor="broken",
                           facts={"Danube": FACTS["Danube"], "Volga": FACTS["Volga"]},
                           hparams={"break_mode": mode, "bad_subjects": ["*"]})
    result = cli(project, "apply", "--auto-approve")
    assert result.exit_code == 4, (result.stderr, result.exception)
    assert "rejected every edit" in result.stderr
    assert head(project) is None and SnapshotStore(project.kbsync_dir).ids() == []
    assert ObjectStore(project.kbsync_dir).list() == []
    for s in ("Danube", "Volga"):
        edit = latest_edit(project, key(s))
        assert edit["status"] == "rejected" and edit["reason"] == "gates failed: finite"
        assert edit["metrics"]["finite"] == 0.0
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        assert ledger.runs()[-1]["outcome"] == "run_committed"      # finished, nothing kept
        finite = ledger.rows("gates", "metric = 'finite'")
    assert finite and not any(g["passed"] for g in finite)


@pytest.mark.parametrize("editor", ["broken", "broken_alphaedit"])
def test_bisect_rejects_exactly_the_bad_edit_and_commits_the_rest(tmp_path, tiny_llama_dir,
                                                                 monkeypatch, editor):
    register_broken(monkeypatch)
    project = make_project(tmp_path / "proj", tiny_llama_dir, editor=editor,
                           hparams={"break_mode": "nan_patch", "bad_subjects": ["Volga"]})
    result = apply(project)
    assert result.rejected == [key("Volga")]
    assert sorted(result.applied) == sorted(key(s) for s in FACTS if s != "Volga")
    assert applied_objects(project) == {key(s): o for s, o in FACTS.items() if s != "Volga"}
    for s in ("Danube", "Rhine", "Thames"):
        assert answers_match(answer(project, s), FACTS[s]), s
    assert not answers_match(answer(project, "Volga"), FACTS["Volga"])
    edit = latest_edit(project, key("Volga"))
    assert edit["status"] == "rejected" and "finite" in edit["reason"]
    assert audit_verify(project) == []
    # the rejected fact is still wanted: the next plan asks for it again
    assert [r.fact_key for r in compute_plan(project).requests] == [key("Volga")]


def test_gate_figures_of_a_good_batch(applied):
    """The thresholds in kbproject.GATES are met with a margin by a good MEMIT batch."""
    gates = SnapshotStore(applied.kbsync_dir).read(head(applied)).gates
    assert {m: g["passed"] for m, g in gates.items()} == {
        "finite": True, "efficacy": True, "generalization": True, "locality": True,
        "locality_kl": True, "ppl_drift": True,
        "general_knowledge": True}                    # no retention: nothing earlier
    assert gates["efficacy"]["value"] == 1.0
    assert gates["locality"]["value"] >= GATES["locality_min"] + 0.2
    assert gates["locality_kl"]["value"] < 0.75 * GATES["kl_max"]
    assert abs(gates["ppl_drift"]["value"]) < 0.5 * GATES["ppl_drift_max"]


@pytest.mark.parametrize("scale, failing", [
    (0.0, {"efficacy"}),                               # an edit that changes nothing
    (30.0, {"locality_kl", "ppl_drift", "retention"}),  # a blunt edit that damages the model
])
def test_broken_edit_fails_the_meaningful_gates(applied, monkeypatch, scale, failing):
    register_broken(monkeypatch)
    write_config(applied.root, Path(applied.config.model), editor="broken", batch_size=1,
                 hparams={"break_mode": "scale", "scale": scale, "bad_subjects": ["*"]})
    applied = Project(applied.root)
    write_facts(applied.root, {**FACTS, "Nile": "University"})
    with pytest.raises(GateFailed):
        apply(applied)
    edit = latest_edit(applied, key("Nile"))
    assert edit["status"] == "rejected"
    failed = set(edit["reason"].removeprefix("gates failed: ").split(", "))
    assert failing <= failed, edit["metrics"]
    for s, o in FACTS.items():                          # nothing committed: old answers
        assert answers_match(answer(applied, s), o)



def test_a_kept_model_is_the_model_a_fresh_rebuild_of_head_gives(tmp_path, tiny_llama_dir):
    """Two applies through one KeptModel, as `kbsync watch` runs them: what stays in
    memory is exactly what load_at(HEAD) rebuilds (weights and editor state)."""
    assert_kept_model_is_head(make_project(tmp_path / "proj", tiny_llama_dir, editor="alphaedit"))
