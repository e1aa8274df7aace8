"""apply under bad conditions: tampering, stale plans, a held lock, no terminal, a full
disk, kills at the narrowest windows. Same tiny-Llama projects as test_apply.py."""

from __future__ import annotations

import errno
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from kbproject import (FACTS, NEW, answer, applied_objects, cli, cli_env, head, json_lines,
                       key, kill_before_head, latest_edit, make_project, prompt, run_cli, runs,
                       write_facts)
from kbsync.apply import apply
from kbsync.errors import LockHeld
from kbsync.history import audit_verify, log
from kbsync.lm.score import answers_match
from kbsync.project import Project
from kbsync.store.ledger import Ledger
from kbsync.store.lock import ProjectLock
from kbsync.store.objects import ObjectStore
from kbsync.store.snapshots import SnapshotStore


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
    orphan = kill_before_head(applied, monkeypatch, {**FACTS, "Danube": NEW})
    assert head(applied) == old and audit_verify(applied) == []
    assert applied_objects(applied)[key("Danube")] == FACTS["Danube"]
    assert [e["id"] for e in log(applied) if e["kind"] == "snapshot"] == [old]
    result = cli(applied, "rollback", orphan[:12])
    assert result.exit_code == 1 and "never committed" in result.stderr

    rerun = apply(applied)
    assert rerun.applied == [key("Danube")] and runs(applied)[-2]["outcome"] == "run_interrupted"
    assert answers_match(answer(applied, "Danube"), NEW) and audit_verify(applied) == []
