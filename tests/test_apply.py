"""apply / log / show / audit / ask / rollback / export on a tiny random Llama, on CPU.

Every project here is a folder in tmp_path with kbsync.yaml, facts/kb.yaml and .kbsync/,
the model a tiny random Llama saved as an HF directory (tests/kbproject.py). Prompts end
with the subject (DESIGN.md §9), so the editors really change the answers and `ask` can
check them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from kbproject import (FACTS, GATES, cli_env, json_lines, key, make_project, prompt,
                       register_broken, run_cli, write_config, write_facts)
from kbsync.apply import apply
from kbsync.cli import main
from kbsync.errors import GateFailed, LockHeld
from kbsync.facts.schema import KnowledgeBase
from kbsync.history import ask, audit_verify, export, log, rollback
from kbsync.lm.score import answers_match
from kbsync.project import Project, compute_plan
from kbsync.store.ledger import Ledger
from kbsync.store.lock import ProjectLock
from kbsync.store.objects import ObjectStore
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import read_applied_state


# ------------------------------------------------------------------ fixtures and helpers

@pytest.fixture(autouse=True)
def _cache(kb_cache, monkeypatch):
    monkeypatch.setenv("KBSYNC_CACHE", str(kb_cache))     # never the user's cache


@pytest.fixture(scope="module")
def applied_template(tmp_path_factory, tiny_llama_dir, kb_cache):
    """A project after `apply` of FACTS with MEMIT (built once, copied per test)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KBSYNC_CACHE", str(kb_cache))
        project = make_project(tmp_path_factory.mktemp("applied") / "proj", tiny_llama_dir)
        result = apply(project)
    assert sorted(result.applied) == sorted(key(s) for s in FACTS) and not result.rejected
    return project.root, result


@pytest.fixture
def applied(applied_template, tmp_path) -> Project:
    root = tmp_path / "proj"
    shutil.copytree(applied_template[0], root)
    return Project(root)


NEW = "League"          # the object an update changes Danube to


def cli(project: Project | Path, *args: str):
    root = project.root if isinstance(project, Project) else project
    return CliRunner().invoke(main, ["-C", str(root), *args])


def head(project: Project) -> str | None:
    return SnapshotStore(project.kbsync_dir).head()


def answer(project: Project, subject: str, snapshot: str | None = None) -> str:
    return ask(project, prompt(subject), snapshot)["answer"]


def applied_objects(project: Project) -> dict[str, str]:
    return {k: f.object for k, f in read_applied_state(project.kbsync_dir).kb.facts.items()}


def runs(project: Project) -> list[dict]:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return ledger.runs()


def latest_edit(project: Project, fact_key: str) -> dict:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return ledger.edits_for(fact_key)[-1]


def first_phrase(text: str) -> str:
    from kbsync.apply import _first_phrase
    return _first_phrase(text)


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
        "locality_kl": True, "ppl_drift": True}       # no retention: nothing earlier
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


# ------------------------------------------------------------------ 5. audit

def _flip_object_byte(project: Project) -> str:
    sha = SnapshotStore(project.kbsync_dir).read(head(project)).patch
    path = ObjectStore(project.kbsync_dir).path(sha)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    return sha


def _edit_ledger_row(project: Project) -> str:
    db = sqlite3.connect(project.kbsync_dir / "ledger.db")
    seq = db.execute("SELECT min(seq) FROM edits WHERE status = 'applied'").fetchone()[0]
    sql = db.execute("SELECT sql FROM sqlite_master WHERE name = 'edits_no_update'").fetchone()[0]
    db.execute("DROP TRIGGER edits_no_update")
    db.execute("UPDATE edits SET new_object = 'Atlantis' WHERE seq = ?", [seq])
    db.execute(sql)                     # put the trigger back: only the hash chain can tell
    db.commit()
    db.close()
    return f"seq {seq} (edits): row_hash mismatch"


def _edit_manifest(project: Project) -> str:
    sid = head(project)
    path = SnapshotStore(project.kbsync_dir)._path(sid)
    path.chmod(0o644)
    path.write_text(path.read_text().replace('"serial":1', '"serial":1 '))
    return sid


@pytest.mark.parametrize("tamper", [_flip_object_byte, _edit_ledger_row, _edit_manifest])
def test_audit_verify_names_tampered_object_row_or_manifest(applied, tamper):
    assert cli(applied, "audit", "verify").exit_code == 0
    named = tamper(applied)
    result = cli(applied, "audit", "verify")
    assert result.exit_code == 5, result.output
    assert named in result.stderr
    report = json.loads(cli(applied, "audit", "verify", "--json").stdout)
    assert not report["ok"] and named in report["problems"][0]


def test_tampered_patch_is_refused_by_ask_and_apply(applied):
    _flip_object_byte(applied)
    assert cli(applied, "ask", prompt("Danube")).exit_code == 5
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    result = cli(applied, "apply", "--auto-approve")
    assert result.exit_code == 5 and "corrupted" in result.stderr


# ------------------------------------------------------------------ 6. stale plans

def test_saved_plan_applies_once_then_is_stale(applied, tmp_path):
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    plan_file = tmp_path / "p.json"
    assert cli(applied, "plan", "-o", str(plan_file)).exit_code == 0
    result = cli(applied, "apply", str(plan_file))                  # no TTY needed: reviewed
    assert result.exit_code == 0, result.stderr
    assert applied_objects(applied)[key("Danube")] == NEW
    before = (head(applied), len(runs(applied)))
    result = cli(applied, "apply", str(plan_file))                  # the serial moved on
    assert result.exit_code == 5 and "stale" in result.stderr and "serial" in result.stderr
    assert (head(applied), len(runs(applied))) == before


def test_saved_plan_is_stale_when_facts_changed(applied, tmp_path):
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    plan_file = tmp_path / "p.json"
    assert cli(applied, "plan", "-o", str(plan_file)).exit_code == 0
    write_facts(applied.root, {**FACTS, "Danube": "Wikipedia"})
    before = (head(applied), len(runs(applied)))
    result = cli(applied, "apply", "--auto-approve", str(plan_file))
    assert result.exit_code == 5 and "stale" in result.stderr and "facts changed" in result.stderr
    assert (head(applied), len(runs(applied))) == before


# ------------------------------------------------------------------ 7. the lock

HOLD = ("import sys, time; from kbsync.store.lock import ProjectLock; "
        "lock = ProjectLock(sys.argv[1], operation='apply').acquire(); "
        "print('held', flush=True); "
        "time.sleep(120)")


def test_second_apply_waits_then_exits_3_naming_the_holder(tmp_path, tiny_llama_dir, kb_cache):
    project = make_project(tmp_path / "proj", tiny_llama_dir)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(project.kbsync_dir)],
                              stdout=subprocess.PIPE, text=True, env=cli_env(kb_cache))
    try:
        assert holder.stdout.readline().strip() == "held"
        start = time.monotonic()
        result = cli(project, "apply", "--auto-approve", "--lock-timeout", "0.5")
        waited = time.monotonic() - start
        assert result.exit_code == 3, result.output
        assert f"pid {holder.pid}" in result.stderr and "(apply)" in result.stderr
        assert waited >= 0.5
        with pytest.raises(LockHeld):
            apply(project, lock_timeout=0)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert head(project) is None and not (project.kbsync_dir / "ledger.db").exists()
    with ProjectLock(project.kbsync_dir, timeout=5):      # the kernel released it
        pass


# ------------------------------------------------------------------ 8. no TTY, --json

def test_apply_without_tty_needs_auto_approve(tmp_path, tiny_llama_dir):
    project = make_project(tmp_path / "proj", tiny_llama_dir)
    result = cli(project, "apply")
    assert result.exit_code == 1
    assert "no terminal to confirm on" in result.stderr and "--auto-approve" in result.stderr
    assert f"+ add  {key('Danube')}: {FACTS['Danube']}" in result.stderr          # the plan was shown
    assert head(project) is None and runs(project) == []

    result = cli(project, "apply", "--auto-approve")
    assert result.exit_code == 0, result.stderr
    assert "Apply complete: 4 edited, 0 already known, 0 skipped, 0 rejected." in result.stdout
    assert "batch 1: editing 4 fact(s)" in result.stderr and "committed snapshot" in result.stderr
    assert applied_objects(project) == {key(s): o for s, o in FACTS.items()}


def test_apply_json_prints_only_json_events_on_stdout(tmp_path, tiny_llama_dir, kb_cache):
    project = make_project(tmp_path / "proj", tiny_llama_dir)
    done = run_cli(project.root, "apply", "--auto-approve", "--json", cache=kb_cache)
    assert done.returncode == 0, done.stderr
    events = json_lines(done.stdout)                         # raises on any non-JSON line
    kinds = [e["type"] for e in events]
    assert kinds[0] == "plan" and kinds[-1] == "summary"
    assert {"batch_start", "gates", "commit"} <= set(kinds)
    assert events[0]["add"] == 4 and events[-1]["applied"] == 4
    commit = next(e for e in events if e["type"] == "commit")
    assert commit["snapshot"] == head(project) == events[-1]["snapshot"]
    gates = next(e for e in events if e["type"] == "gates")
    assert all(c["passed"] for c in gates["checks"])
    # a failure under --json is a JSON error object on stdout with the exit code
    write_facts(project.root, {**FACTS, "Danube": NEW})
    (project.root / "p.json").write_text("{}")
    done = run_cli(project.root, "apply", "--json", "p.json", cache=kb_cache)
    error = json_lines(done.stdout)[-1]
    assert error["type"] == "error" and done.returncode == error["exit_code"] == 5


# ------------------------------------------------------------------ 9. ENOSPC

@pytest.mark.parametrize("target", ["objects/", "snapshots/", ".HEAD."])
def test_enospc_while_writing_leaves_the_old_snapshot(applied, monkeypatch, target):
    """The disk fills up while a patch object, a manifest or HEAD itself is written."""
    import kbsync.store.atomic as atomic

    real_write_all = atomic._write_all
    where = str(applied.kbsync_dir / target)

    def full_disk(fd, data):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(where):
            real_write_all(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write_all(fd, data)

    old = head(applied)
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    with monkeypatch.context() as mp:
        mp.setattr(atomic, "_write_all", full_disk)
        with pytest.raises(OSError) as exc:
            apply(applied)
    assert exc.value.errno == errno.ENOSPC
    assert head(applied) == old and audit_verify(applied) == []
    assert list(applied.kbsync_dir.rglob(".*.tmp")) == []          # no half-written files
    assert answers_match(answer(applied, "Danube"), FACTS["Danube"])
    assert runs(applied)[-1]["outcome"] == "run_failed"
    assert [e["id"] for e in log(applied) if e["kind"] == "snapshot"] == [old]

    rerun = apply(applied)                                  # space again: it completes
    assert rerun.applied == [key("Danube")] and audit_verify(applied) == []
    assert answers_match(answer(applied, "Danube"), NEW)
    assert [r for r in runs(applied) if r["outcome"] is None] == []


# ------------------------------------------------------------------ crash windows

def test_kill_between_head_and_ledger_rows_is_recovered(applied, monkeypatch):
    """The narrowest crash window: HEAD moved, the ledger rows of the batch not yet
    written. The next apply must record the run as interrupted and the committed snapshot
    (with its edits and pre-edit answers) in the ledger, so history and removes stay right."""
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    with monkeypatch.context() as mp:
        def killed(*args, **kwargs):
            raise KeyboardInterrupt          # like a kill: no run_failed event is written
        mp.setattr(Ledger, "record_snapshot", killed)
        with pytest.raises(KeyboardInterrupt):
            apply(applied)
    committed = head(applied)
    assert applied_objects(applied)[key("Danube")] == NEW
    assert audit_verify(applied) == []

    events = []
    assert apply(applied, emit=events.append).run_id is None    # nothing left to do
    interrupted = runs(applied)[-1]
    assert interrupted["outcome"] == "run_interrupted"
    assert {"type": "recovered", "run_id": interrupted["run_id"]} in events
    with Ledger(applied.kbsync_dir / "ledger.db") as ledger:
        assert committed in [r["snapshot_id"] for r in ledger.rows("snapshots")]
    edit = latest_edit(applied, key("Danube"))
    assert (edit["status"], edit["new_object"]) == ("applied", NEW)
    assert edit["pre_answer"].startswith(FACTS["Danube"])
    assert audit_verify(applied) == []


def test_kill_before_head_moves_leaves_the_old_snapshot_and_no_visible_garbage(applied,
                                                                               monkeypatch):
    """Killed after the manifest was written, before HEAD named it: the old snapshot stays
    current, and the unreferenced manifest is neither listed nor a rollback target."""
    old = head(applied)
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    with monkeypatch.context() as mp:
        def killed(*args, **kwargs):
            raise KeyboardInterrupt
        mp.setattr(SnapshotStore, "set_head", killed)
        with pytest.raises(KeyboardInterrupt):
            apply(applied)
    orphan, = set(SnapshotStore(applied.kbsync_dir).ids()) - {old}
    assert head(applied) == old and audit_verify(applied) == []
    assert applied_objects(applied)[key("Danube")] == FACTS["Danube"]
    assert [e["id"] for e in log(applied) if e["kind"] == "snapshot"] == [old]
    result = cli(applied, "rollback", orphan[:12])
    assert result.exit_code == 1 and "never committed" in result.stderr

    rerun = apply(applied)
    assert rerun.applied == [key("Danube")] and runs(applied)[-2]["outcome"] == "run_interrupted"
    assert answers_match(answer(applied, "Danube"), NEW) and audit_verify(applied) == []
