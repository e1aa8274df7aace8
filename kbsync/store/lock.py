"""The project lock: at most one kbsync process changes a `.kbsync` directory at a time.

Guarantees:
- exclusion comes from an OS lock (`filelock.FileLock`, flock on Unix) on `.kbsync/lock`,
  which the kernel releases when the holder dies, so a `kill -9` never leaves a stale lock;
- while held, `.kbsync/lock.info.json` says who holds it (lock id, pid, host, operation,
  since). It is only a message for the losers: a leftover info file proves nothing and is
  overwritten by the next holder;
- `ProjectLock(..., timeout=0)` fails at once, `timeout=T` waits up to T seconds, and
  `timeout=None` (or negative) waits forever; failing raises LockHeld naming the holder.

The lock is not re-entrant across ProjectLock objects: taking it twice in one process is a
bug and raises LockHeld like any other contention. Locks on network filesystems are
unreliable; keep `.kbsync` on a local disk.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path
from types import TracebackType

from kbsync.errors import LockHeld
from kbsync.store.atomic import atomic_write_text
from kbsync.store.canonical import utc_now

LOCK_NAME = "lock"
INFO_NAME = "lock.info.json"


class ProjectLock:
    def __init__(self, kbsync_dir: str | os.PathLike, timeout: float | None = 0,
                 operation: str = ""):
        self.dir = Path(kbsync_dir)
        self.timeout = -1 if timeout is None or timeout < 0 else timeout
        self.operation = operation
        self.info: dict | None = None
        self._lock = None

    def acquire(self) -> "ProjectLock":
        from filelock import FileLock, Timeout

        self.dir.mkdir(parents=True, exist_ok=True)
        # preserve_lock_file: the lock path stays put, so every process locks the same inode.
        lock = FileLock(self.dir / LOCK_NAME, timeout=self.timeout, preserve_lock_file=True)
        try:
            lock.acquire()
        except Timeout:
            raise self._held_error() from None
        self._lock = lock
        try:
            self._write_info()
        except BaseException:
            self.release()
            raise
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            # Remove our info first, so a reader never sees our info on someone else's lock.
            if read_lock_info(self.dir) == self.info:
                (self.dir / INFO_NAME).unlink(missing_ok=True)
        finally:
            self._lock.release()
            self._lock = None
            self.info = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def __enter__(self) -> "ProjectLock":
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def _write_info(self) -> None:
        from kbsync import __version__

        self.info = {"id": uuid.uuid4().hex, "pid": os.getpid(), "host": socket.gethostname(),
                     "operation": self.operation, "started_at": utc_now(), "version": __version__}
        atomic_write_text(self.dir / INFO_NAME, json.dumps(self.info, indent=2) + "\n")

    def _held_error(self) -> LockHeld:
        info = read_lock_info(self.dir)
        waited = f" after waiting {self.timeout:g}s" if self.timeout else ""
        if info is None:
            holder = "another kbsync process (it has not written its lock info yet)"
        else:
            op = f" ({info.get('operation')})" if info.get("operation") else ""
            holder = (f"pid {info.get('pid')} on {info.get('host')}{op} since "
                      f"{info.get('started_at')}, lock id {info.get('id')}")
        return LockHeld(f"{self.dir} is locked by {holder}{waited}",
                        hint="wait for it to finish, or pass --lock-timeout SECONDS")


def read_lock_info(kbsync_dir: str | os.PathLike) -> dict | None:
    """The current (or last, if its holder was killed) lock info, or None."""
    try:
        return json.loads((Path(kbsync_dir) / INFO_NAME).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
