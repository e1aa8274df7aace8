"""`kbsync watch` with a real watchdog observer on a temporary project (tiny random Llama).

Most tests drive `kbsync.sync.watch.watch` from a thread (signal handlers only exist in
the main thread, and torch is imported once); SIGTERM during a cycle runs the real CLI in
a subprocess, SIGINT while idle runs the watch in the test's main thread. Unit tests
cover the event filter, the debouncer (fake clock) and the content digest.
"""

from __future__ import annotations

import errno
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from watchdog.events import (DirModifiedEvent, FileClosedEvent, FileClosedNoWriteEvent,
                             FileCreatedEvent, FileDeletedEvent, FileModifiedEvent,
                             FileMovedEvent, FileOpenedEvent)

from kbproject import (FACTS, KBSYNC, NEW, answer, applied_objects, cli_env, facts_yaml, head,
                       json_lines, key, latest_edit, make_project, runs, write_config,
                       write_facts)
from kbsync.apply import apply
from kbsync.history import audit_verify
from kbsync.lm.score import answers_match
from kbsync.project import Project
from kbsync.store.ledger import Ledger
from kbsync.store.lock import ProjectLock
from kbsync.sync.changes import Debouncer, FactsTarget, event_matters, facts_digest
from kbsync.sync.watch import StopFlag, watch

DEBOUNCE = 0.4
WAIT = 90          # generous: the machine may be busy; a passing test takes seconds


class Watcher:
    """A watch running on a thread; its events arrive on a queue."""

    def __init__(self, project, **options):
        self.project, self.events = project, queue.Queue()
        self.stop, self.error = StopFlag(), None
        options.setdefault("debounce", DEBOUNCE)
        self.thread = threading.Thread(target=self._run, args=(options,), daemon=True)
        self.thread.start()
        self.watching = self.next("watching")
        self.start = self.next("cycle")

    def _run(self, options) -> None:
        try:
            watch(self.project, emit=self.events.put, stop=self.stop, **options)
        except BaseException as exc:       # surfaced by next() and close()
            self.error = exc
            self.events.put({"type": "crashed"})

    def next(self, kind: str = "cycle", timeout: float = WAIT) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            event = self.events.get(timeout=max(0.01, deadline - time.monotonic()))
            assert event["type"] != "crashed", self.error
            if event["type"] == kind:
                return event

    def cycles_within(self, seconds: float) -> list[dict]:
        """Cycle events that arrive in the next `seconds`."""
        time.sleep(seconds)
        found = []
        while not self.events.empty():
            event = self.events.get()
            assert event["type"] != "crashed", self.error
            found += [event] if event["type"] == "cycle" else []
        return found

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=WAIT)
        assert not self.thread.is_alive() and self.error is None, self.error


@pytest.fixture
def watcher(applied):
    """A watch on the applied project; its start cycle found nothing to do."""
    w = Watcher(applied)
    assert (w.start["trigger"], w.start["outcome"]) == ("start", "no_changes")
    yield w
    w.close()


def kb_file(project) -> Path:
    return project.root / "facts" / "kb.yaml"


def test_write_is_applied_and_ask_gives_the_new_answer(watcher):
    project = watcher.project
    write_facts(project.root, {**FACTS, "Danube": NEW})
    event = watcher.next()
    assert (event["trigger"], event["outcome"], event["applied"]) == ("change", "applied", 1)
    assert event["snapshot"] == head(project) != watcher.start["snapshot"]
    assert applied_objects(project)[key("Danube")] == NEW
    assert answers_match(answer(project, "Danube"), NEW)
    assert runs(project)[-1]["command"] == "watch" and audit_verify(project) == []


def test_rename_save_is_picked_up(watcher):
    """An atomic save: write a hidden temp file beside the target, rename it over it."""
    project = watcher.project
    tmp = kb_file(project).with_name(".kb.yaml.kbsync-tmp")
    tmp.write_text(facts_yaml({**FACTS, "Volga": NEW}))
    assert watcher.cycles_within(3 * DEBOUNCE) == []          # the temp file alone: nothing
    os.replace(tmp, kb_file(project))
    event = watcher.next()
    assert (event["outcome"], event["applied"]) == ("applied", 1)
    assert applied_objects(project)[key("Volga")] == NEW


def test_burst_of_ten_writes_gives_one_cycle_with_the_last_content(watcher):
    project = watcher.project
    objects = ["University", "football", "played", "New", "band", "known", "former", "work",
               "Wikipedia", NEW]
    for obj in objects:                                        # 10 writes, 20 ms apart
        write_facts(project.root, {**FACTS, "Rhine": obj})
        time.sleep(0.02)
    event = watcher.next()
    assert (event["outcome"], event["applied"]) == ("applied", 1)
    assert applied_objects(project)[key("Rhine")] == NEW
    assert watcher.cycles_within(4 * DEBOUNCE) == []           # and no second cycle
    assert len(runs(project)) == 2                             # the fixture's and this one


def test_the_model_is_loaded_once_for_many_cycles_and_again_after_a_config_change(
        applied, monkeypatch):
    import kbsync.scheduler as scheduler_module

    loads = []
    real = scheduler_module.load_at

    def counted(project, snapshot, **kw):
        loads.append(snapshot) if kw.get("with_editor", True) else None
        return real(project, snapshot, **kw)
    monkeypatch.setattr(scheduler_module, "load_at", counted)
    config = applied.root / "kbsync.yaml"       # gates that pass: this test is about loads
    settings = yaml.safe_load(config.read_text())
    settings["gates"].update(efficacy_min=0, locality_min=0, kl_max=1e9, retention_min=0,
                             ppl_drift_max=1e9)
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    w = Watcher(applied)
    try:
        changed = dict(FACTS)
        for subject in ("Danube", "Volga"):
            changed[subject] = NEW
            write_facts(applied.root, changed)
            assert (w.next()["outcome"], len(loads)) == ("applied", 1)
        config.write_text(config.read_text().replace("seed: 0", "seed: 1"))
        write_facts(applied.root, {**changed, "Rhine": NEW})
        assert (w.next()["outcome"], len(loads)) == ("applied", 2)
    finally:
        w.close()
    assert applied_objects(applied)[key("Rhine")] == NEW and audit_verify(applied) == []


def test_unchanged_content_removal_and_recreation_start_nothing(watcher):
    project, text = watcher.project, kb_file(watcher.project).read_text()
    kb_file(project).write_text(text)                          # same bytes
    os.utime(kb_file(project))                                 # touch
    kb_file(project).unlink()                                  # removed and re-created
    kb_file(project).write_text(text)
    for junk in ("kb.yaml~", ".kb.yaml.swp", "4913", ".goutputstream-X1Y2", "notes.txt"):
        (project.root / "facts" / junk).write_text("not facts")
    assert watcher.cycles_within(4 * DEBOUNCE) == []
    kb_file(project).write_text(text + "# a comment\n")         # new bytes, same facts
    event = watcher.next()
    assert (event["trigger"], event["outcome"]) == ("change", "no_changes")


def test_broken_file_reports_file_line_applies_nothing_and_watch_goes_on(watcher):
    project = watcher.project
    before, n_runs = head(project), len(runs(project))
    kb_file(project).write_text(facts_yaml(FACTS) + "  - subject: [unclosed\n")
    event = watcher.next()
    assert event["outcome"] == "error" and "kb.yaml:" in event["message"]
    assert event["error"]["file"].endswith("kb.yaml") and event["error"]["line"] >= 1
    assert head(project) == before and len(runs(project)) == n_runs
    write_facts(project.root, {**FACTS, "Danube": NEW})        # fixed: the watch goes on
    event = watcher.next()
    assert (event["outcome"], event.get("applied")) == ("applied", 1), event
    assert applied_objects(project)[key("Danube")] == NEW


def test_a_cycle_that_finds_the_project_locked_is_retried(watcher):
    project = watcher.project
    with ProjectLock(project.kbsync_dir, operation="test"):
        kb_file(project).write_text(kb_file(project).read_text() + "# locked\n")
        event = watcher.next()
        assert event["outcome"] == "lock_held"
        assert "(test)" in event["message"]
    event = watcher.next()
    assert (event["trigger"], event["outcome"]) == ("retry", "no_changes")


def test_facts_folder_removed_and_recreated_is_watched_again(watcher):
    project = watcher.project
    folder, text = project.root / "facts", kb_file(project).read_text()
    shutil.rmtree(folder)
    event = watcher.next()
    assert event["outcome"] == "error" and "no such file or directory" in event["message"]
    folder.mkdir()
    kb_file(project).write_text(text)
    assert watcher.next()["outcome"] == "no_changes"            # seen again, nothing to do
    write_facts(project.root, {**FACTS, "Danube": NEW})
    event = watcher.next()
    assert (event["outcome"], event.get("applied")) == ("applied", 1), event


def test_falls_back_to_polling_when_inotify_is_exhausted(applied):
    from watchdog.observers import Observer

    class Exhausted(Observer):
        def start(self):
            raise OSError(errno.ENOSPC, "inotify watch limit reached")

    w = Watcher(applied, native=Exhausted, poll_interval=0.1)
    try:
        assert w.watching["observer"] == "polling"
        assert "inotify watch limit reached" in w.watching["fallback"]
        kb_file(applied).write_text(kb_file(applied).read_text() + "# polled\n")
        assert w.next()["trigger"] == "change"
    finally:
        w.close()


def test_watch_start_records_an_interrupted_run_and_plans_only_the_rest(applied, monkeypatch):
    """Resume: a run killed after its first batch was committed (HEAD moved, its ledger
    rows not written). Starting the watch records it as interrupted, records what it
    committed, and applies only the edit it never reached: nothing is applied twice."""
    import kbsync.commit as commit_module

    write_config(applied.root, Path(applied.config.model), batch_size=1)
    applied = Project(applied.root)                    # the new config
    write_facts(applied.root, {**FACTS, "Danube": NEW, "Volga": "University"})
    with monkeypatch.context() as mp:
        def killed(*args, **kwargs):
            raise KeyboardInterrupt                    # like a kill: no terminal event
        mp.setattr(commit_module, "record_committed", killed)
        with pytest.raises(KeyboardInterrupt):
            apply(applied)
    first = [k for k, o in applied_objects(applied).items() if o in (NEW, "University")]
    assert len(first) == 1                             # one batch committed, one not

    w = Watcher(applied)
    w.close()
    event = w.start
    assert event["outcome"] == "applied" and len(event["recovered"]) == 1
    assert event["applied"] == 1                       # only the edit never reached
    killed_run, = [r for r in runs(applied) if r["run_id"] == event["recovered"][0]]
    assert killed_run["outcome"] == "run_interrupted"
    with Ledger(applied.kbsync_dir / "ledger.db") as ledger:
        for k in (key("Danube"), key("Volga")):
            applied_rows = [e for e in ledger.edits_for(k) if e["status"] == "applied"
                            and e["new_object"] in (NEW, "University")]
            assert len(applied_rows) == 1, k           # once: by the killed run or the watch
    assert applied_objects(applied)[key("Danube")] == NEW
    assert applied_objects(applied)[key("Volga")] == "University"
    assert audit_verify(applied) == []


def test_sigterm_during_a_cycle_exits_0_with_a_consistent_head(tmp_path, tiny_llama_dir,
                                                               kb_cache):
    """The real CLI in a subprocess, one fact per batch; SIGTERM once the first batch is
    committed. The batch in flight finishes, the run stops at the next batch boundary,
    recorded as interrupted; HEAD is a complete snapshot, the audit is clean, and the
    next apply finishes the rest without applying anything twice."""
    project = make_project(tmp_path / "proj", tiny_llama_dir, batch_size=1)
    proc = subprocess.Popen([*KBSYNC, "-C", str(project.root), "watch", "--json",
                             "--debounce", str(DEBOUNCE)], env=cli_env(kb_cache), text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + WAIT
        while head(project) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert head(project) is not None, proc.stderr.read() if proc.poll() is not None else ""
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    events = json_lines(out)                                   # stdout: JSON only
    assert [e["type"] for e in events] == ["watching", "cycle", "stopped"]
    cycle = events[1]
    assert cycle["outcome"] == "abandoned" and cycle["snapshot"] == head(project)
    assert audit_verify(project) == []
    run, = runs(project)
    assert run["outcome"] == "run_interrupted" and run["command"] == "watch"
    done = set(applied_objects(project))
    assert 1 <= len(done) < len(FACTS)
    assert {latest_edit(project, key(s))["status"] for s in FACTS
            if key(s) not in done} == {"interrupted"}

    rest = apply(project)                                      # the next start finishes
    assert sorted(rest.applied) == sorted({key(s) for s in FACTS} - done)
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        applied_keys = [e["fact_key"] for e in ledger.rows("edits", "status = 'applied'")]
    assert sorted(applied_keys) == sorted(key(s) for s in FACTS)   # each exactly once
    assert audit_verify(project) == []


def test_sigint_while_idle_stops_the_watch_and_restores_the_handler(applied):
    previous = signal.getsignal(signal.SIGINT)
    seen = []

    def emit(event: dict) -> None:
        seen.append(event)
        if event["type"] == "cycle":                           # idle after the start cycle
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()

    assert watch(applied, debounce=DEBOUNCE, emit=emit) == 1
    assert [e["type"] for e in seen] == ["watching", "cycle", "stopped"]
    assert signal.getsignal(signal.SIGINT) is previous


# ------------------------------------------------------------------ units

def test_event_filter_follows_editor_save_patterns(tmp_path):
    facts = tmp_path / "facts"
    (facts / "sub").mkdir(parents=True)
    target = FactsTarget(facts)
    f = lambda name: str(facts / name)                         # noqa: E731
    yes = [FileModifiedEvent(f("kb.yaml")), FileCreatedEvent(f("sub/more.ttl")),
           FileClosedEvent(f("kb.yaml")), FileDeletedEvent(f("kb.nt")),
           FileMovedEvent(f(".kb.yaml.tmp"), f("kb.yaml")),      # atomic save
           FileMovedEvent(f("kb.yaml"), f("kb.yaml~")),          # Vim moves the original away
           FileCreatedEvent(f("x.jsonld"))]
    no = [FileOpenedEvent(f("kb.yaml")), FileClosedNoWriteEvent(f("kb.yaml")),
          FileModifiedEvent(f(".kb.yaml.swp")), FileCreatedEvent(f("4913")),
          FileCreatedEvent(f("kb.yaml~")), FileCreatedEvent(f(".goutputstream-AB12")),
          FileModifiedEvent(f("notes.txt")), DirModifiedEvent(str(facts)),
          FileModifiedEvent(f(".git/kb.yaml")), FileModifiedEvent(str(tmp_path / "kb.yaml"))]
    assert [e for e in yes if not event_matters(target, e)] == []
    assert [e for e in no if event_matters(target, e)] == []
    (facts / "kb.yaml").write_text("x")
    single = FactsTarget(facts / "kb.yaml")                       # `facts:` names one file
    assert (single.watch_dir, single.recursive) == (facts, False)
    assert event_matters(single, FileMovedEvent(f(".kb.yaml.tmp"), f("kb.yaml")))
    assert not event_matters(single, FileModifiedEvent(f("other.yaml")))


def test_debouncer_fires_once_after_quiet_with_a_fake_clock():
    now = [0.0]
    d = Debouncer(1.0, clock=lambda: now[0])
    assert not d.take()
    for t in (0.0, 0.3, 0.6, 0.9):                             # a burst
        now[0] = t
        d.mark()
        assert not d.take()
    now[0] = 1.8
    assert not d.take()                                        # 0.9 s quiet: not yet
    now[0] = 2.0
    assert d.take() and not d.take()                           # once


def test_digest_sees_content_only(tmp_path, write_files):
    root = write_files({"facts/a.yaml": "x: 1\n", "facts/b.ttl": "y\n"})
    facts = root / "facts"
    first = facts_digest(facts)
    (facts / "a.yaml").write_text("x: 1\n")
    (facts / ".a.yaml.swp").write_text("junk")
    (facts / "readme.md").write_text("junk")
    assert facts_digest(facts) == first
    (facts / "a.yaml").write_text("x: 2\n")
    assert facts_digest(facts) != first
    (facts / "a.yaml").write_text("x: 1\n")
    assert facts_digest(facts) == first
    (facts / "b.ttl").rename(facts / "c.ttl")                  # same bytes, another file
    assert facts_digest(facts) != first
    assert facts_digest(tmp_path / "missing") == "missing"
