"""What is applied is what was reviewed (issue 20, item 2), and housekeeping (item 6).

Item 2: `apply` reads the facts once, under the lock, and applies that copy: a file saved
while the confirmation prompt waits is not applied; a saved plan is applied only if its
requests are exactly what its facts give (recomputed under the lock), else exit 5 with
nothing started. Item 6: `kbsync gc`, new object folders fsynced in their parent, unique
temp names for path writers, `log` without a ledger, `rollback` after recovery and
idempotent, `ask --snapshot`/`export` refuse uncommitted manifests, objects hashed in
chunks. Same tiny-Llama projects as test_apply.py (tests/kbproject.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import tracemalloc
from pathlib import Path

import pytest
import torch

from kbproject import (FACTS, NEW, answer, applied_objects, cli, head, key, kill_before_head,
                       latest_edit, make_project, prompt, runs, write_facts)
from kbsync.apply import apply
from kbsync.errors import IntegrityError
from kbsync.history import audit_verify, committed, gc, rollback
from kbsync.lm.score import answers_match
from kbsync.plan.plan import EditRequest
from kbsync.project import Project, compute_plan
from kbsync.recovery import check_plan
from kbsync.store.ledger import Ledger
from kbsync.store.objects import ObjectStore
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import read_applied_state

OTHER = "Wikipedia"      # a second object, neither FACTS' nor NEW


# ------------------------------------------------------------------ 2. the reviewed facts

def test_a_file_saved_while_the_prompt_waits_is_not_applied(applied):
    """The reproduction: `-> NEW` approved, the file saved with OTHER at the prompt. The
    run applies NEW (model, applied state and ledger agree); the next plan shows OTHER."""
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    shown = []

    def confirm(plan) -> bool:
        shown.append([(r.fact_key, r.new_object) for r in plan.requests])
        write_facts(applied.root, {**FACTS, "Danube": OTHER})    # saved while it waits
        return True

    result = apply(applied, confirm=confirm)
    assert shown == [[(key("Danube"), NEW)]] and result.applied == [key("Danube")]
    assert applied_objects(applied)[key("Danube")] == NEW
    assert latest_edit(applied, key("Danube"))["new_object"] == NEW
    assert answers_match(answer(applied, "Danube"), NEW)
    assert [(r.old_object, r.new_object) for r in compute_plan(applied).requests] == [(NEW, OTHER)]
    assert audit_verify(applied) == []


def _plan_file(project: Project, tmp_path: Path, facts: dict[str, str]) -> tuple[Path, dict]:
    write_facts(project.root, facts)
    path = tmp_path / "plan.json"
    assert cli(project, "plan", "-o", str(path)).exit_code == 0
    return path, json.loads(path.read_text())


def _set_object(data: dict, fact_too: bool) -> None:
    data["requests"][0]["new_object"] = "Atlantis"
    if fact_too:
        data["requests"][0]["fact"]["object"] = "Atlantis"


def _unknown_key(data: dict) -> None:
    forged = copy.deepcopy(data["requests"][0])
    forged.update(fact_key="Nile/R1", subject="Nile")
    forged["fact"]["subject"] = "Nile"
    data["requests"].append(forged)


FORGERIES = {
    "object edited": lambda d: _set_object(d, False),
    "object and fact edited": lambda d: _set_object(d, True),
    "request dropped": lambda d: d["requests"].pop(),
    "request duplicated": lambda d: d["requests"].append(d["requests"][0]),
    "unknown key": _unknown_key,
    "requests reordered": lambda d: d["requests"].reverse(),
    "paraphrase added": lambda d: d["requests"][0]["fact"]["paraphrases"].append("Atlantis"),
    "op changed": lambda d: d["requests"][0].update(op="add", old_object=None),
    "drift made up": lambda d: d["requests"].append(
        {**d["requests"][0], "reason": "drift", "old_object": d["requests"][0]["new_object"]}),
}


@pytest.mark.parametrize("forgery", FORGERIES)
def test_a_forged_saved_plan_exits_5_with_head_unchanged(applied, tmp_path, forgery):
    path, data = _plan_file(applied, tmp_path, {**FACTS, "Danube": NEW, "Volga": OTHER})
    FORGERIES[forgery](data)
    path.write_text(json.dumps(data))
    before = (head(applied), len(runs(applied)))
    result = cli(applied, "apply", str(path))
    assert result.exit_code == 5, (result.output, result.exception)
    assert "does not match the facts it was made from" in result.stderr
    assert (head(applied), len(runs(applied))) == before
    assert audit_verify(applied) == []


def test_the_saved_plan_unedited_still_applies(applied, tmp_path):
    path, _ = _plan_file(applied, tmp_path, {**FACTS, "Danube": NEW})
    result = cli(applied, "apply", str(path))
    assert result.exit_code == 0, result.stderr
    assert latest_edit(applied, key("Danube"))["new_object"] == NEW


def _drift(state, fact_key: str) -> EditRequest:
    fact = state.kb.facts[fact_key]
    return EditRequest(op="update", fact_key=fact_key, subject=fact.subject,
                       relation=fact.relation, old_object=fact.object, new_object=fact.object,
                       reason="drift", fact=fact, observed="noise")


def test_drift_requests_must_name_committed_facts_once(applied):
    """A refreshed plan's drift requests are not re-probed, only checked: a committed fact
    (applied and desired with the same object), named once."""
    from kbsync.facts.load import load_knowledge_base

    write_facts(applied.root, {**FACTS, "Danube": NEW})
    desired, state = load_knowledge_base(applied.facts_dir), read_applied_state(applied.kbsync_dir)
    plan = compute_plan(applied)
    volga = _drift(state, key("Volga"))
    check_plan(plan.model_copy(update={"requests": plan.requests + [volga]}), desired, state)
    for bad in ([volga, volga], [_drift(state, key("Danube"))]):      # twice; not committed
        forged = plan.model_copy(update={"requests": plan.requests + bad})
        with pytest.raises(IntegrityError, match="drift request"):
            check_plan(forged, desired, state)


# ------------------------------------------------------------------ 6. housekeeping

def test_gc_removes_what_killed_runs_left_and_nothing_committed(applied, monkeypatch):
    first = head(applied)
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    apply(applied)
    rollback(applied, first)                        # history: first, update, rollback
    orphan = kill_before_head(applied, monkeypatch, {**FACTS, "Danube": OTHER})
    kb = applied.kbsync_dir
    temps = [kb / ".HEAD.x1.tmp", kb / "objects" / ".tensors.x2.tmp", kb / "snapshots" / ".a.x3.tmp"]
    for t in temps:
        t.write_text("half a write")
    snapshots = SnapshotStore(kb)
    kept = {sid: m for sid, m in committed(snapshots)}
    needed = {sha for m in kept.values() for sha in m.objects().values()}
    orphan_objects = set(snapshots.read(orphan).objects().values()) - needed
    before = sorted(p for p in kb.rglob("*") if p.is_file())

    listed = gc(applied, dry_run=True)
    assert sorted(p for p in kb.rglob("*") if p.is_file()) == before      # nothing removed
    assert listed["manifests"] == [orphan] and set(listed["objects"]) == orphan_objects
    assert sorted(listed["temp_files"]) == sorted(map(str, temps)) and listed["bytes"] > 0

    assert gc(applied) == {**listed, "dry_run": False}
    assert snapshots.ids() == sorted(kept) and head(applied) != orphan
    assert all(snapshots.objects.exists(sha) for sha in needed)
    assert not any(t.exists() for t in temps) and audit_verify(applied) == []
    assert not [d for d in (kb / "objects").iterdir() if d.is_dir() and not any(d.iterdir())]
    again = gc(applied)
    assert not (again["manifests"] or again["objects"] or again["temp_files"])
    assert answers_match(answer(applied, "Danube"), FACTS["Danube"])     # the rollback's model


def test_gc_cli_dry_run_json_and_the_lock(applied, monkeypatch):
    from kbsync.store.lock import ProjectLock

    kill_before_head(applied, monkeypatch, {**FACTS, "Danube": NEW})
    result = cli(applied, "gc", "--dry-run")
    assert result.exit_code == 0 and "Would remove 0 temp file(s), 1 uncommitted" in result.stdout
    with ProjectLock(applied.kbsync_dir, operation="apply"):
        assert cli(applied, "gc").exit_code == 3                     # a run may be writing
    result = cli(applied, "gc", "--json")
    assert result.exit_code == 0 and len(json.loads(result.stdout)["manifests"]) == 1
    assert json.loads(cli(applied, "gc", "--json").stdout)["manifests"] == []


def test_a_new_object_folder_is_fsynced_in_its_parent(tmp_path, monkeypatch):
    import kbsync.store.atomic as atomic

    synced = []
    real = atomic.fsync_dir
    monkeypatch.setattr(atomic, "fsync_dir", lambda d: (synced.append(Path(d)), real(d)))
    for root, put in ((tmp_path / "a", lambda s: s.put_bytes(b"payload")),
                      (tmp_path / "b", lambda s: s.put_tensors({"w": torch.ones(3)}))):
        synced.clear()
        store = ObjectStore(root)
        folder = store.path(put(store)).parent
        # objects/ gained objects/ab, .kbsync gained objects/: both entries made durable
        assert {folder, store.dir, root} <= set(synced), synced


def test_path_writers_get_unique_temp_names(tmp_path):
    """Two processes sharing a cache write the same file at once: each gets its own temp
    file (a fixed `name.tmp` would be written by both and renamed half-written)."""
    from kbsync.store.atomic import atomic_write_with

    target, temps, both = tmp_path / "cache" / "stats.bin", [], threading.Barrier(2)

    def writer(data: bytes):
        def write(tmp: Path) -> None:
            temps.append(tmp)
            both.wait(timeout=10)                  # both temps exist before either renames
            tmp.write_bytes(data)
        atomic_write_with(target, write, mode=0o644)

    threads = [threading.Thread(target=writer, args=(bytes([i]) * 1000,)) for i in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(temps)) == 2 and target.read_bytes() in (b"\x01" * 1000, b"\x02" * 1000)
    assert [p.name for p in target.parent.iterdir()] == ["stats.bin"]


def test_log_and_show_without_a_ledger_do_not_create_one(tmp_path, tiny_llama_dir):
    project = make_project(tmp_path / "proj", tiny_llama_dir)
    result = cli(project, "log")
    assert result.exit_code == 0 and result.stdout == ""
    assert cli(project, "show", "20260101").exit_code == 1
    assert not (project.kbsync_dir / "ledger.db").exists()


def test_rollback_records_an_interrupted_commit_first_and_is_idempotent(applied, monkeypatch):
    """Recovery runs before a rollback moves HEAD (already so before issue 20, checked
    here), and rolling back to the state HEAD has changes nothing."""
    first = head(applied)
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    with monkeypatch.context() as mp:                    # killed between HEAD and its rows
        def killed(*args, **kwargs):
            raise KeyboardInterrupt
        mp.setattr(Ledger, "record_snapshot", killed)
        with pytest.raises(KeyboardInterrupt):
            apply(applied)
    update = head(applied)
    done = rollback(applied, first)
    with Ledger(applied.kbsync_dir / "ledger.db") as ledger:
        order = [r["snapshot_id"] for r in ledger.rows("snapshots")]
    assert order == [first, update, done["snapshot"]] and done["changed"]
    assert [r["outcome"] for r in runs(applied)][-2:] == ["run_interrupted", "run_committed"]
    snapshots, count = SnapshotStore(applied.kbsync_dir), len(runs(applied))
    for ref in (first, done["snapshot"]):             # a rollback of `first`, or HEAD itself
        again = rollback(applied, ref[:12])
        assert not again["changed"] and again["snapshot"] == head(applied) == done["snapshot"]
    assert len(runs(applied)) == count and len(snapshots.ids()) == 3
    assert audit_verify(applied) == []


def test_ask_snapshot_and_export_refuse_a_manifest_never_committed(applied, monkeypatch,
                                                                   tmp_path):
    orphan = kill_before_head(applied, monkeypatch, {**FACTS, "Danube": NEW})
    result = cli(applied, "ask", "--snapshot", orphan[:12], prompt("Danube"))
    assert result.exit_code == 1 and "never committed" in result.stderr
    result = cli(applied, "export", orphan[:12], str(tmp_path / "out"))
    assert result.exit_code == 1 and "never committed" in result.stderr
    assert not (tmp_path / "out").exists()
    assert cli(applied, "ask", "--snapshot", head(applied)[:12], prompt("Danube")).exit_code == 0


def test_tensor_objects_are_hashed_in_chunks_with_the_ids_of_before(tmp_path, monkeypatch):
    """put_tensors and verify never hold an object whole: the peak Python allocation while
    storing a 16 MB tensor stays under a quarter of it (it was twice its size), and the
    object id is still the sha256 of safetensors' `save` bytes."""
    from safetensors.torch import save

    store = ObjectStore(tmp_path)
    tensors = {"w": torch.arange(4 << 20, dtype=torch.float32)}
    size = tensors["w"].nbytes
    tracemalloc.start()
    try:
        sha = store.put_tensors(tensors, metadata={"k": "v"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < size / 4, (peak, size)
    assert sha == hashlib.sha256(save(tensors, metadata={"k": "v"})).hexdigest()
    assert store.put_tensors(tensors, metadata={"k": "v"}) == sha         # deduplicated
    assert [p.name for p in store.dir.iterdir()] == [sha[:2]]               # no temp left

    def whole(self):
        raise AssertionError(f"read whole: {self}")
    monkeypatch.setattr(Path, "read_bytes", whole)
    assert store.verify_all() == [] and SnapshotStore(tmp_path).verify() == []
