"""What counts as a change to the facts, when a burst of changes is over, and whether the
facts' content really changed.

Kept apart from the observer so each piece can be tested with synthetic events and a fake
clock. The rules follow how editors save (watchdog's README, "About using watchdog with
editors like Vim"; vim/vim#15733): we watch the folder, never a file, because an atomic
save replaces the file by a rename (the watched inode never sees "modified") and Vim
renames the original away first; temp, swap and backup files are ignored by name; and
since watchdog 7 matches glob patterns against the whole path, we filter by name ourselves
instead of with `PatternMatchingEventHandler`.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from kbsync.errors import FactsError
from kbsync.facts.load import fact_files, is_fact_file

__all__ = ["FactsTarget", "event_matters", "Debouncer", "ChangeHandler", "facts_digest"]

# inotify reports opens and reads too; they change nothing
IGNORED_EVENT_TYPES = frozenset({"opened", "closed_no_write"})


class FactsTarget:
    """The facts as configured (a folder, or one file) and where to watch for them."""

    def __init__(self, facts_path: Path):
        self.path = Path(facts_path).resolve()
        self.is_dir = self.path.is_dir()
        self.watch_dir = self.path if self.is_dir else self.path.parent
        self.recursive = self.is_dir       # the loader reads sub-folders too

    def concerns(self, path: str, is_directory: bool) -> bool:
        """Whether a created/changed/removed `path` can change what the loader reads:
        a fact file (by suffix, not hidden) inside the facts folder, or a sub-folder
        that may hold some. Editors' temp files (`.x.yaml.tmp`, `.goutputstream-*`,
        `x.yaml~`, `x.swp`, `4913`) fail the suffix or hidden-name test."""
        p = Path(path)
        if not self.is_dir:
            return not is_directory and p == self.path
        try:
            rel = p.relative_to(self.path)
        except ValueError:
            return False
        if not rel.parts or any(part.startswith(".") for part in rel.parts):
            return False
        return is_directory or is_fact_file(p)


def event_matters(target: FactsTarget, event: FileSystemEvent) -> bool:
    """True for events that may have changed the facts. A move counts if either end does,
    so both `tmp -> kb.yaml` (atomic save) and `kb.yaml -> kb.yaml~` (Vim) do. A folder's
    own "modified" fires for any file inside it, temp files included, so it is ignored:
    the file's own event says more."""
    if event.event_type in IGNORED_EVENT_TYPES:
        return False
    if event.is_directory and event.event_type == "modified":
        return False
    paths = [event.src_path] + ([event.dest_path] if event.dest_path else [])
    return any(target.concerns(os.fsdecode(p), event.is_directory) for p in paths)


class Debouncer:
    """Collects "maybe changed" marks from the observer thread; `take()` in the worker
    returns True once, when `quiet` seconds passed since the last mark. A burst of saves
    (an editor writing twice, a script rewriting ten files) thus gives one cycle."""

    def __init__(self, quiet: float, clock: Callable[[], float] = time.monotonic):
        self.quiet, self.clock = quiet, clock
        self._lock = threading.Lock()
        self._pending, self._last = False, 0.0

    def mark(self) -> None:
        with self._lock:
            self._pending, self._last = True, self.clock()

    def take(self) -> bool:
        with self._lock:
            if self._pending and self.clock() - self._last >= self.quiet:
                self._pending = False
                return True
            return False


class ChangeHandler(FileSystemEventHandler):
    """Runs on the observer's thread and only marks the debouncer: the model, the ledger
    and the GPU belong to the worker (main) thread."""

    def __init__(self, target: FactsTarget, debouncer: Debouncer):
        super().__init__()
        self.target, self.debouncer = target, debouncer
        self.root_gone = False          # the watched folder itself was removed or moved

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("deleted", "moved") and \
                Path(os.fsdecode(event.src_path)) == self.target.watch_dir:
            self.root_gone = True       # inotify and polling stop watching a removed root
            self.debouncer.mark()
        elif event_matters(self.target, event):
            self.debouncer.mark()


def facts_digest(facts_path: Path) -> str:
    """sha256 over the path and bytes of every fact file the loader would read, in its
    order. Equal digests mean equal input, so a save that changed nothing (a `touch`, a
    rewrite with the same text, a file removed and re-created) starts no cycle. A missing
    folder or a file that vanishes while being read hashes as such: it changed."""
    h = hashlib.sha256()
    try:
        files = fact_files(facts_path)
    except FactsError:
        return "missing"
    base = Path(facts_path) if Path(facts_path).is_dir() else Path(facts_path).parent
    for f in files:
        try:
            data = f.read_bytes()
        except OSError:
            data = None
        name = f.relative_to(base).as_posix().encode()
        h.update(len(name).to_bytes(8, "big") + name)
        h.update(b"\x00gone" if data is None else len(data).to_bytes(8, "big") + data)
    return h.hexdigest()
