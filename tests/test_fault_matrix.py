"""The fault matrix (issue 20, item 7) is exhaustive where tests/test_crash.py is
random: every write point of apply (also with recovery to do), rollback and gc, killed
and failed (ENOSPC, a busy ledger, EIO) in process; the table it prints is recorded in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

import pytest

from kbproject import head, key, make_project, write_facts
from kbsync.apply import apply
from kbsync.errors import LockHeld
from kbsync.history import audit_verify, committed, gc, rollback
from kbsync.project import Project
from kbsync.store.objects import ObjectStore
from kbsync.store.ledger import Ledger
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import read_applied_state
from crash_setup import OPEN_GATES, SUBJECTS

# (issue 20, item 7) Every write point of apply, rollback and gc, each killed and each
# failed, in process: a kill -9 is `Killed` raised at the point with every later write,
# ledger row and temp-file cleanup refused (a dead process does nothing more; the
# `finally` blocks that still run only close files and release the lock, as the kernel
# would); a failure (ENOSPC, a busy ledger, EIO on a removal) stays for the rest of the
# run, as a full disk or another writer would. After each: HEAD is the old snapshot or one
# the run committed on top of it, `audit verify` is clean, and the same command run again
# does exactly what is left. The random kill -9 test above covers real processes.

class Killed(KeyboardInterrupt):
    """A simulated kill -9 (apply and rollback record nothing for a KeyboardInterrupt)."""


# the faults of each kind of point: a file write (its rename: kbsync.store.atomic._replace),
# the BEGIN of a ledger transaction, a removal by gc (kbsync.store.gc._remove)
FAULTS = {"write": ("kill", "enospc"), "begin": ("busy",), "remove": ("kill", "eio")}
COLUMNS = ("kill", "enospc", "busy", "eio")
WIDTH = 66


class Faults:
    """Counts the write points of one run (`points`, in order) and, when armed with
    (index, fault), fails that one."""

    def __init__(self, mp: pytest.MonkeyPatch, kbsync_dir, arm: tuple[int, str] | None = None):
        self.dir, self.arm = kbsync_dir, arm
        self.points: list[tuple[str, str, list | None, int]] = []   # kind, what, txn, commits
        self.dead, self.failing, self.commits = False, None, 0
        self.txn: list[str] | None = None          # what the open ledger transaction appends
        self.anchor = ""
        self._hook_files(mp)
        self._hook_ledger(mp)

    def point(self, kind: str, what: str) -> None:
        if self.dead:
            raise Killed("already dead")
        index = len(self.points)
        self.points.append((kind, what, self.txn, self.commits))
        if self.failing == kind:
            raise self._error(kind)
        if self.arm is not None and self.arm[0] == index:
            if self.arm[1] == "kill":
                self.dead = True
                raise Killed(what)
            self.failing = kind
            raise self._error(kind)

    def label(self, index: int) -> str:
        kind, what, txn, commits = self.points[index]
        rows = f" [{', '.join(dict.fromkeys(txn)) or 'no rows'}]" if txn is not None else ""
        return f"{what}{rows} @{commits}".replace("ledger.anchor", "anchor")

    def _error(self, kind: str) -> BaseException:
        if kind == "begin":
            return LockHeld("ledger is locked by another writer (injected)")
        code = errno.ENOSPC if kind == "write" else errno.EIO
        return OSError(code, os.strerror(code))

    def _what(self, path) -> str:
        from kbsync.store.atomic import is_temp_name

        rel = os.path.relpath(path, self.dir)
        kinds = {"objects": "object", "snapshots": "manifest"}
        what = ("temp file" if is_temp_name(os.path.basename(rel))
                else kinds.get(rel.split(os.sep)[0], rel))
        return f"{what} {self.anchor}".strip()

    def _hook_files(self, mp: pytest.MonkeyPatch) -> None:
        import kbsync.store.atomic as atomic
        import kbsync.store.gc as store_gc

        replace, unlink, remove = atomic._replace, atomic._unlink_quietly, store_gc._remove

        def hooked_replace(tmp, path):
            self.point("write", self._what(path))
            replace(tmp, path)
            self.commits += os.path.basename(path) == "HEAD"

        def hooked_remove(path):
            self.point("remove", "remove " + self._what(path))
            remove(path)

        mp.setattr(atomic, "_replace", hooked_replace)
        mp.setattr(atomic, "_unlink_quietly", lambda p: None if self.dead else unlink(p))
        mp.setattr(store_gc, "_remove", hooked_remove)

    def _hook_ledger(self, mp: pytest.MonkeyPatch) -> None:
        from contextlib import contextmanager

        transaction, append, store = Ledger._transaction, Ledger.append, Ledger._store_anchor

        @contextmanager
        def hooked_transaction(ledger, **kwargs):
            if ledger.db.conn.in_transaction:
                with transaction(ledger, **kwargs) as inner:
                    yield inner
                return
            self.txn = []
            self.point("begin", "ledger BEGIN")
            try:
                with transaction(ledger, **kwargs) as inner:
                    yield inner
            finally:
                self.txn = None

        def hooked_append(ledger, table, row):
            if self.dead:
                raise Killed("already dead")
            with ledger.transaction():
                self.txn.append(row.get("kind") or table)
                return append(ledger, table, row)

        def hooked_store(ledger, head, prev):
            self.anchor = "settled" if head == prev else "pending"
            try:
                store(ledger, head, prev)
            finally:
                self.anchor = ""

        mp.setattr(Ledger, "_transaction", hooked_transaction)
        mp.setattr(Ledger, "append", hooked_append)
        mp.setattr(Ledger, "_store_anchor", hooked_store)


def _copy(base, root):
    import shutil

    shutil.copytree(base, root)
    return Project(root)


def _faulted(project: Project, operation, arm) -> tuple[Faults, str]:
    """Run `operation` with `arm` injected; (the hooks, what it raised)."""
    with pytest.MonkeyPatch.context() as mp:
        faults = Faults(mp, project.kbsync_dir, arm)
        try:
            operation(project)
            raised = "-"
        except (Killed, OSError, LockHeld) as exc:
            raised = type(exc).__name__
    return faults, raised


def _runs(project: Project) -> list[dict]:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return ledger.runs()


def _applied_rows(project: Project, seq: int) -> list[str]:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return [r["fact_key"] for r in ledger.rows("edits", "seq > ? AND status = 'applied'",
                                                   [seq])]


def _check_head(snapshots: SnapshotStore, old: str, where: str) -> int:
    """HEAD is `old` or snapshots of one run on top of it; returns how many."""
    new = snapshots.head()
    lineage = [sid for sid, _ in snapshots.history(new)]
    assert old in lineage, where
    after = lineage[lineage.index(old) + 1:]
    assert len({snapshots.read(s).run_id for s in after}) <= 1, where
    return len(after)


def _no_open_runs_and_clean(project: Project, where: str) -> None:
    """The rerun left no open run, never called a run that moved HEAD failed, and gc
    after it leaves the store verified."""
    from kbsync.store.gc import find_garbage

    every = _runs(project)
    assert all(r["outcome"] is not None for r in every), where
    moved = {m.run_id for _, m in committed(SnapshotStore(project.kbsync_dir))}
    assert not [r for r in every if r["outcome"] == "run_failed" and r["run_id"] in moved], where
    gc(project)
    assert audit_verify(project) == [] and find_garbage(SnapshotStore(project.kbsync_dir)).empty, where


def _apply_cell(project: Project, arm, where: str, wanted: dict[str, str]) -> str:
    snapshots = SnapshotStore(project.kbsync_dir)
    old, seq = snapshots.head(), _ledger_seq(project)
    _faulted(project, apply, arm)
    assert audit_verify(project) == [], where
    moved = _check_head(snapshots, old, where)
    state = read_applied_state(project.kbsync_dir).kb
    remaining = sorted(k for k, o in wanted.items() if state.facts[k].object != o)
    rerun = apply(project)
    assert sorted(rerun.applied) == remaining and not rerun.rejected, where
    state = read_applied_state(project.kbsync_dir).kb
    assert {k: f.object for k, f in state.facts.items()} == wanted, where
    assert sorted(_applied_rows(project, seq)) == sorted(wanted), where     # each exactly once
    _no_open_runs_and_clean(project, where)
    return f"{'old' if not moved else f'+{moved}'}>{len(remaining)}"


def _rollback_cell(project: Project, arm, where: str, target: str) -> str:
    snapshots = SnapshotStore(project.kbsync_dir)
    old = snapshots.head()
    _faulted(project, lambda p: rollback(p, target), arm)
    assert audit_verify(project) == [], where
    moved = _check_head(snapshots, old, where)
    again = rollback(project, target)
    assert again["changed"] == (not moved), where
    assert _check_head(snapshots, old, where) == 1, where
    assert snapshots.read(snapshots.head()).rollback_of == target, where
    _no_open_runs_and_clean(project, where)
    return "old>done" if not moved else "new>noop"


def _gc_cell(project: Project, arm, where: str) -> str:
    from kbsync.store.gc import find_garbage

    snapshots = SnapshotStore(project.kbsync_dir)
    old = snapshots.head()
    needed = {sha for _, m in committed(snapshots) for sha in m.objects().values()}
    _faulted(project, gc, arm)
    assert snapshots.head() == old and audit_verify(project) == [], where
    assert all(snapshots.objects.exists(sha) for sha in needed), where
    left = find_garbage(snapshots)
    count = len(left.temp_files) + len(left.manifests) + len(left.objects)
    gc(project)
    assert find_garbage(snapshots).empty and audit_verify(project) == [], where
    return f"{count} left>0"


def _ledger_seq(project: Project) -> int:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return ledger.head_seq()


def _matrix(name: str, base, tmp_path, operation, cell, until: str | None = None
            ) -> tuple[list[str], Faults]:
    """Dry-run `operation` on a copy of `base` for its points, then every (point, fault)
    on a fresh copy, up to the first point labelled `until` (its rest already covered
    elsewhere); returns the printed table and the dry run's points."""
    slug = "".join(c if c.isalnum() else "-" for c in name)
    faults, raised = _faulted(_copy(base, tmp_path / f"{slug}-dry"), operation, None)
    assert raised == "-", raised
    started = time.monotonic()
    rows = [f"  {'#':>3} {'point':<{WIDTH}}" + "".join(f"{c:>10}" for c in COLUMNS)]
    labels = [faults.label(i) for i in range(len(faults.points))]
    points = labels.index(until) if until in labels else len(labels)
    for index, (kind, *_rest) in enumerate(faults.points[:points]):
        cells = {}
        for fault in FAULTS[kind]:
            where = f"{name} point {index} ({faults.label(index)}), {fault}"
            root = tmp_path / f"{slug}-{index}-{fault}"
            cells[fault] = cell(_copy(base, root), (index, fault), where)
        rows.append(f"  {index:>3} {faults.label(index):<{WIDTH}}"
                    + "".join(f"{cells.get(c, ''):>10}" for c in COLUMNS))
    title = (f"{name}: {points} write points, "
             f"{sum(len(FAULTS[p[0]]) for p in faults.points[:points])} cells, "
             f"{time.monotonic() - started:.0f}s")
    return [title] + rows, faults


def test_fault_matrix_every_write_point_of_apply_rollback_and_gc(tmp_path, tiny_llama_dir,
                                                                 monkeypatch, capsys):
    """Two facts, one per batch: two commit points per apply."""
    import kbsync.scheduler
    from kbsync.evaluate.gates import GateCheck, Verdict

    started = time.monotonic()
    # fsync guards against power loss, which this does not simulate; the gates are not
    # under test (a stub passes every batch): both only cost time, most of a run's
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    monkeypatch.setattr(kbsync.scheduler, "parent_reference", lambda lm, probes: {})
    monkeypatch.setattr(kbsync.scheduler, "check",
                        lambda *args, **kwargs: Verdict([GateCheck("finite", 1.0, 1.0, True)]))
    project = make_project(tmp_path / "base", tiny_llama_dir, batch_size=1, gates=OPEN_GATES,
                           facts=dict(zip(SUBJECTS, ("British", "American"))))
    apply(project)
    first, wanted = head(project), dict(zip(SUBJECTS, ("League", "November")))
    write_facts(project.root, wanted)
    goal = {key(s): o for s, o in wanted.items()}
    apply_base = _copy(project.root, tmp_path / "apply-base").root
    apply_cell = lambda p, arm, where: _apply_cell(p, arm, where, goal)   # noqa: E731
    table, dry = _matrix("apply", apply_base, tmp_path, apply, apply_cell)

    apply(project)                                   # then roll back from there to `first`
    table += _matrix("rollback", project.root, tmp_path, lambda p: rollback(p, first),
                     lambda p, arm, where: _rollback_cell(p, arm, where, first))[0]
    # a run killed between its first commit point and the batch's rows leaves recovery
    # work for the next apply, whose writes (those rows, run_interrupted) are points too;
    # from the run's start on, its points are those of the apply matrix
    cut = next(i for i, (_, what, _, commits) in enumerate(dry.points)
               if what == "ledger.anchor pending" and commits == 1)
    table += _matrix("apply after a kill: recovery", _killed_at(apply_base, tmp_path, cut),
                     tmp_path, apply, apply_cell,
                     until="ledger BEGIN [runs, run_started] @0")[0]
    head_write = next(i for i, p in enumerate(dry.points) if p[1] == "HEAD")
    table += _matrix("gc", _garbage_base(apply_base, tmp_path, head_write), tmp_path, gc,
                     _gc_cell)[0]
    cells = sum(row.count(">") for row in table)          # one ">" in every cell
    with capsys.disabled():
        print("\nfault matrix (cell: HEAD after the fault > what the rerun did; old>2: HEAD "
              "unchanged, the rerun applied 2 edits; +1>1: one commit stayed, the rerun "
              "applied the other; 3 left>0: 3 garbage files left, the rerun removed them)")
        print("\n".join(table))
        print(f"fault matrix: {cells} cells in {time.monotonic() - started:.0f}s")


def _killed_at(base, tmp_path, point: int) -> Path:
    """A copy of `base` after an apply killed at `point`."""
    project = _copy(base, tmp_path / f"killed-at-{point}")
    assert _faulted(project, apply, (point, "kill"))[1] == "Killed"
    return project.root


def _garbage_base(apply_base, tmp_path, head_write: int) -> Path:
    """The apply base after a run killed at its first commit point (`head_write`: its
    manifest, objects and HEAD temp file are left), plus a stray object and temp file."""
    root = _killed_at(apply_base, tmp_path, head_write)
    ObjectStore(root / ".kbsync").put_bytes(b"written by a run killed before its manifest")
    (root / ".kbsync" / "objects" / ".tensors.abc123.tmp").write_bytes(b"half")
    return root
