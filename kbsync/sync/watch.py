"""`kbsync watch`: keep the model in step with the facts files as they change.

    observer thread   file-system events -> ChangeHandler -> Debouncer.mark()
    main thread       every TICK: quiet for `debounce` s? -> digest of the facts files ->
                      differs from the last cycle's? -> one cycle (plan + apply + gates)

The main thread owns the model, the ledger connection and the GPU; the observer's thread
only marks the debouncer (SQLite connections and CUDA state are not to be shared across
threads). A cycle at start reconciles the model with the files as they are, and, like
any apply, records runs a crash or kill left unfinished and plans their remaining edits
again. inotify can be missing or exhausted (`OSError` ENOSPC/EMFILE from watchdog, e.g.
`fs.inotify.max_user_watches` reached): the watch then polls. A removed facts folder
stops any observer; it is watched again once it is back.

Stopping: SIGINT or SIGTERM sets a flag. Idle, the watch exits at once; in a cycle, the
batch being edited finishes (committed or rejected as usual) and the run ends at the
next batch boundary, recorded as interrupted, so no snapshot is ever half-committed. A
second signal stops at once, like a kill, which the store is built to survive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from typing import Callable, Iterator

from kbsync.editing.rebuild import KeptModel
from kbsync.errors import FactsError
from kbsync.sync.changes import ChangeHandler, Debouncer, FactsTarget, facts_digest
from kbsync.sync.cycle import run_cycle

__all__ = ["StopFlag", "stop_on_signals", "start_observer", "watch"]

Emit = Callable[[dict], None]
TICK = 0.05            # how often the main thread looks at the debouncer and the stop flag
LOCK_RETRY = 2.0       # seconds before a cycle that found the project locked is retried


class StopFlag:
    """A stop request. A plain attribute, not a threading.Event: it is set from a signal
    handler, and Event.set() takes a lock the interrupted main thread may hold."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@contextlib.contextmanager
def stop_on_signals(stop: StopFlag) -> Iterator[None]:
    """While inside: the first SIGINT/SIGTERM sets `stop`, a second raises
    KeyboardInterrupt. Handlers can only be installed from the main thread; elsewhere
    (tests driving a watch from a thread) this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _kind(observer: object) -> str:
    return type(observer).__name__.removesuffix("Observer").lower() or "native"


def start_observer(handler: ChangeHandler, target: FactsTarget, *, polling: bool = False,
                   poll_interval: float = 1.0, native: Callable | None = None):
    """(observer, kind, why it fell back or None). The native observer (inotify on Linux)
    first; if it cannot start (OSError: inotify watch or instance limit, no inotify on
    this filesystem) or `polling` is asked for (network filesystems), a PollingObserver."""
    from watchdog.observers.polling import PollingObserver

    fallback = None
    if not polling:
        if native is None:
            from watchdog.observers import Observer as native
        observer = None
        try:
            observer = native()
            observer.schedule(handler, str(target.watch_dir), recursive=target.recursive)
            observer.start()
            return observer, _kind(observer), None
        except OSError as err:
            fallback = f"{_kind(observer) if observer else 'native'} observer failed: " \
                       f"{err.strerror or err}; polling every {poll_interval:g}s"
            with contextlib.suppress(Exception):
                observer.stop()
    observer = PollingObserver(timeout=poll_interval)
    observer.schedule(handler, str(target.watch_dir), recursive=target.recursive)
    observer.start()
    return observer, "polling", fallback


def _halt(observer) -> None:
    observer.stop()
    with contextlib.suppress(RuntimeError):
        observer.join(timeout=5)


def watch(project, *, debounce: float = 1.0, polling: bool = False, poll_interval: float = 1.0,
          lock_timeout: float = 0.0, emit: Emit = lambda event: None,
          inner_emit: Emit = lambda event: None, stop: StopFlag | None = None,
          native: Callable | None = None) -> int:
    """Watch the project's facts and run a cycle per settled change until `stop` is set
    (by a signal, or by the caller). `emit` gets one "watching" event, one "cycle" event
    per cycle (kbsync.sync.cycle) and one "stopped" event; `inner_emit` gets apply's own
    events. Returns the number of cycles. Only a damaged store (IntegrityError) ends it
    early."""
    stop = stop or StopFlag()
    target = FactsTarget(project.facts_dir)
    if not target.watch_dir.is_dir():
        raise FactsError("no such file or directory", file=str(target.path),
                         hint="create it, or point `facts:` in kbsync.yaml at your facts")
    debouncer = Debouncer(debounce)
    handler = ChangeHandler(target, debouncer)
    kept = KeptModel()             # the model, loaded by the first cycle that edits
    cycles = 0
    with stop_on_signals(stop):
        observer, kind, fallback = start_observer(handler, target, polling=polling,
                                                  poll_interval=poll_interval, native=native)
        try:
            emit({"type": "watching", "facts": str(target.path), "observer": kind,
                  "fallback": fallback, "debounce": debounce, "pid": os.getpid()})

            def cycle(trigger: str) -> dict:
                nonlocal cycles
                cycles += 1
                event = run_cycle(project.root, cycles, trigger, stop=stop.is_set,
                                  lock_timeout=lock_timeout, emit=inner_emit, kept=kept)
                emit(event)
                return event

            last = facts_digest(target.path)
            retry_at = None
            if cycle("start")["outcome"] == "lock_held":
                last, retry_at = None, time.monotonic() + LOCK_RETRY
            while not stop.is_set():
                time.sleep(TICK)
                if handler.root_gone and target.watch_dir.is_dir():   # the folder is back
                    _halt(observer)
                    handler.root_gone = False
                    observer, _, _ = start_observer(handler, target, polling=polling,
                                                       poll_interval=poll_interval,
                                                       native=native)
                    debouncer.mark()
                retry = retry_at is not None and time.monotonic() >= retry_at
                if not (debouncer.take() or retry) or stop.is_set():
                    continue
                digest = facts_digest(target.path)
                if digest == last and not retry:
                    continue                     # saved, but the content is the same
                retry_at = None
                if cycle("retry" if retry else "change")["outcome"] == "lock_held":
                    retry_at = time.monotonic() + max(debounce, LOCK_RETRY)
                else:
                    last = digest
        finally:
            _halt(observer)
    emit({"type": "stopped", "cycles": cycles})
    return cycles
