"""ProjectLock: another process holding the lock -> LockHeld naming it; kill -9 frees it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from kbsync.errors import LockHeld
from kbsync.store.lock import ProjectLock, read_lock_info

HOLDER = textwrap.dedent("""
    import sys, time
    from kbsync.store.lock import ProjectLock
    with ProjectLock(sys.argv[1], operation="apply"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
""")


def _start_holder(kbsync_dir, hold_seconds: float = 60) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(kbsync_dir), str(hold_seconds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_held_by_other_process_then_killed(tmp_path):
    kdir = tmp_path / ".kbsync"
    holder = _start_holder(kdir)
    try:
        with pytest.raises(LockHeld) as info:
            with ProjectLock(kdir, timeout=0, operation="plan"):
                pass
        message = str(info.value)
        assert f"pid {holder.pid}" in message and "(apply)" in message
        assert info.value.exit_code == 3
        assert read_lock_info(kdir)["pid"] == holder.pid
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    # the kernel released the flock; the stale info file is simply overwritten
    started = time.monotonic()
    with ProjectLock(kdir, timeout=0, operation="apply") as lock:
        assert time.monotonic() - started < 1
        assert read_lock_info(kdir) == lock.info and lock.info["pid"] == os.getpid()
    assert read_lock_info(kdir) is None


def test_waits_for_holder_with_timeout(tmp_path):
    kdir = tmp_path / ".kbsync"
    holder = _start_holder(kdir, hold_seconds=0.5)
    try:
        with ProjectLock(kdir, timeout=20, operation="apply") as lock:
            assert lock.held
    finally:
        holder.wait(10)
    assert not lock.held


def test_second_lock_in_same_process_is_refused(tmp_path):
    with ProjectLock(tmp_path, operation="apply"):
        with pytest.raises(LockHeld, match=f"pid {os.getpid()}"):
            ProjectLock(tmp_path, timeout=0).acquire()
    with ProjectLock(tmp_path):  # released on exit, also after the failure above
        pass


def test_released_on_exception(tmp_path):
    with pytest.raises(ValueError):
        with ProjectLock(tmp_path):
            raise ValueError
    with ProjectLock(tmp_path):
        pass
