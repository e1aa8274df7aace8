"""kill -9 at random points of a running `kbsync apply`, many times over.

After every kill the store must verify (`audit verify`: ledger chain, manifests, objects)
and HEAD must name a complete snapshot: the one before the run or one the run committed
(each batch is its own commit), never anything in between. At the end one uninterrupted
apply finishes the work: no open runs are left, every killed run is recorded as
interrupted, every committed snapshot is in the ledger, and the applied state is the
desired facts minus the rejected ones.

Starting Python and importing torch costs ~3 s per process while the apply itself takes
under a second, so most kills hit processes forked from a "zygote" that has done the
imports once: each is a real process running the real CLI (`kbsync apply --auto-approve
--json`), killed with SIGKILL, and every kill lands inside the apply. A few kills hit
plain `python3` processes at any point of their life, start-up included.

KBSYNC_CRASH_SEED=N replays one sequence of delays.

The fault matrix, exhaustive where this one is random, is tests/test_fault_matrix.py.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

from kbproject import KBSYNC, cli_env, json_lines, key, make_project, prompt, write_facts
from kbsync.apply import apply
from kbsync.errors import GateFailed
from kbsync.history import ask, audit_verify
from kbsync.lm.score import answers_match
from kbsync.store.ledger import Ledger
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import read_applied_state
from crash_setup import OPEN_GATES, SUBJECTS

FORK_KILLS = 30          # kills inside the apply (forked processes)
PROCESS_KILLS = 3        # kills anywhere in a fresh python3 process, start-up included
OBJECTS = ("British", "American", "November", "football", "League", "Wikipedia",
           "University", "band", "played", "known", "former", "work")   # one token each

ZYGOTE = r"""
import os, sys
import torch, transformers, safetensors, sqlite_utils           # the slow imports, once
from transformers import AutoModelForCausalLM, AutoTokenizer
import kbsync.apply, kbsync.editing.memit, kbsync.editing.rebuild, kbsync.evaluate.gates
from kbsync.cli.main import main
from kbsync.lm.load import load_model
load_model(sys.argv[1], device="cpu")          # imports the model and tokenizer classes
print("ready", flush=True)
for line in iter(sys.stdin.readline, ""):
    root, out = line.split()
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        code = 0
        try:
            main(["-C", root, "apply", "--auto-approve", "--json"], prog_name="kbsync")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        sys.stdout.flush()
        os._exit(code)
    print("pid", pid, flush=True)
    sys.stdin.readline()                      # reap only when asked: the pid stays ours
    print("exit", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Zygote:
    """A Python process with torch imported that forks one `kbsync apply` per request."""

    def __init__(self, cache, model):
        self.proc = subprocess.Popen([*KBSYNC[:1], "-c", ZYGOTE, str(model)], env=cli_env(cache),
                                     text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == "ready\n"

    def apply(self, root, out, kill_after: float | None = None) -> int:
        """Run one apply; SIGKILL it after `kill_after` seconds. Returns its exit code."""
        self.proc.stdin.write(f"{root} {out}\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline().split()[1])
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(pid, signal.SIGKILL)   # a zombie until the zygote reaps it: pid not reused
        self.proc.stdin.write("reap\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline().split()[1])

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def desired(i: int) -> dict[str, str]:
    """A fresh change of both facts for iteration i."""
    return {s: OBJECTS[(i + j * 5) % len(OBJECTS)] for j, s in enumerate(SUBJECTS)}


def test_kill_9_at_random_points_leaves_old_or_new_snapshot_and_rerun_completes(
        tmp_path, tiny_llama_dir, kb_cache):
    seed = int(os.environ.get("KBSYNC_CRASH_SEED", "20240611"))
    rng = random.Random(seed)
    # batch_size 1: every fact is its own commit, so a run has several commit points
    project = make_project(tmp_path / "proj", tiny_llama_dir, facts=desired(0), batch_size=1,
                           gates=OPEN_GATES)
    snapshots = SnapshotStore(project.kbsync_dir)
    out = tmp_path / "out.jsonl"

    # one whole run of each kind: how long a kill may wait
    start = time.monotonic()
    done = subprocess.run([*KBSYNC, "-C", str(project.root), "apply", "--auto-approve", "--json"],
                          env=cli_env(kb_cache), capture_output=True, text=True, timeout=300)
    process_time = time.monotonic() - start
    assert done.returncode == 0, done.stderr
    zygote = Zygote(kb_cache, tiny_llama_dir)
    fork_time = 0.0
    for i in (1, 2):
        write_facts(project.root, desired(i))
        start = time.monotonic()
        assert zygote.apply(project.root, out) == 0
        fork_time = max(fork_time, time.monotonic() - start)
        assert json_lines(out.read_text())[-1]["applied"] == len(SUBJECTS)

    open_runs, moved, kinds = set(), 0, []
    try:
        for i in range(3, 3 + FORK_KILLS + PROCESS_KILLS):
            write_facts(project.root, desired(i))
            old = snapshots.head()
            if i < 3 + PROCESS_KILLS:
                delay = rng.uniform(0, process_time)
                proc = subprocess.Popen([*KBSYNC, "-C", str(project.root), "apply",
                                         "--auto-approve", "--json"], env=cli_env(kb_cache),
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
                try:
                    code = proc.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    code = proc.wait()
            else:
                delay = rng.uniform(0, fork_time)
                code = zygote.apply(project.root, out, kill_after=delay)
            kinds.append(code)
            where = f"seed {seed}, iteration {i}, kill after {delay:.2f}s (exit {code})"

            assert code in (0, 4, -signal.SIGKILL), where
            assert audit_verify(project) == [], where
            new = snapshots.head()
            # HEAD is the old snapshot or one this run committed on top of it, never a mix
            lineage = [sid for sid, _ in snapshots.history(new)]
            assert old in lineage, where
            assert all(snapshots.read(s).run_id == snapshots.read(new).run_id
                       for s in lineage[lineage.index(old) + 1:]), where
            state = read_applied_state(project.kbsync_dir)      # complete and readable
            for s in SUBJECTS:                                  # objects wanted at some time
                assert state.kb.facts[key(s)].object in {desired(j)[s] for j in range(i + 1)}, where
            moved += new != old
            with Ledger(project.kbsync_dir / "ledger.db") as ledger:
                open_runs |= {r["run_id"] for r in ledger.open_runs()}
    finally:
        zygote.close()

    # the rerun: finishes the work, records every killed run as interrupted
    events = []
    try:
        apply(project, emit=events.append)
    except GateFailed:                  # every edit of the rerun rejected: still a full run
        pass
    summary = [e for e in events if e["type"] == "summary"]   # none: the killed run had
    rejected = summary[0]["rejected_keys"] if summary else []  # committed everything
    assert audit_verify(project) == []
    wanted = {key(s): o for s, o in desired(i).items() if key(s) not in rejected}
    state = read_applied_state(project.kbsync_dir)
    assert {k: f.object for k, f in state.kb.facts.items() if k in wanted} == wanted
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        runs = ledger.runs()
        assert ledger.open_runs() == []
        recorded = {r["snapshot_id"] for r in ledger.rows("snapshots")}
    assert {r["outcome"] for r in runs} <= {"run_committed", "run_interrupted"}
    assert {r["run_id"] for r in runs if r["outcome"] == "run_interrupted"} == open_runs
    # every committed snapshot is in the ledger, even one whose rows a kill cut off
    assert {sid for sid, _ in snapshots.history(snapshots.head())} <= recorded
    for s, obj in wanted.items():
        assert answers_match(ask(project, prompt(s.split("/")[0]))["answer"], obj), s
    # the loop really killed runs in the middle, and some of them had committed
    assert len(open_runs) >= FORK_KILLS // 4 and moved >= 1, (len(open_runs), moved, kinds)
    print(f"process {process_time:.2f}s, forked {fork_time:.2f}s: {len(open_runs)} runs killed "
          f"mid-way, {moved} kills after a commit, exits {kinds}")


# ====================================================================== the fault matrix
# (issue 20, item 7) Every write point of apply, rollback and gc, each killed and each
# failed, in process: a kill -9 is `Killed` raised at the point with every later write,
# ledger row and temp-file cleanup refused (a dead process does nothing more; the
# `finally` blocks that still run only close files and release the lock, as the kernel
# would); a failure (ENOSPC, a busy ledger, EIO on a removal) stays for the rest of the
# run, as a full disk or another writer would. After each: HEAD is the old snapshot or one
# the run committed on top of it, `audit verify` is clean, and the same command run again
# does exactly what is left. The random kill -9 test above covers real processes.
