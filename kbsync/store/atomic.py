"""Crash-safe file replacement.

Guarantee: after `atomic_write_bytes(path, data)` returns, `path` holds exactly `data`
and survives a power cut; if it raises (ENOSPC, EIO, KeyboardInterrupt) or the process is
killed at any moment, `path` holds its old content (or still does not exist). Readers never
see a partial file.

How: write a uniquely named temp file in the same directory (a rename is only atomic
within one filesystem), fsync it, `os.replace` it over the target, then fsync the directory
so the rename itself is durable. A temp file left by a kill is named `.<name>.<random>.tmp`
(`is_temp_name`), never referenced by anything, and removed by `remove_temp_files` while
the project lock is held.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"
DEFAULT_MODE = 0o644


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` by `data` atomically and durably; `mode` defaults to the old file's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _target_mode(path) if mode is None else mode
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename/creation in `directory` durable (no-op where the FS cannot)."""
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some filesystems (and non-Linux platforms) refuse fsync on directories.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def remove_temp_files(directory: str | os.PathLike, *, recursive: bool = False) -> list[Path]:
    """Delete leftover temp files of interrupted writes; call only while holding the lock."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    removed = [p for p in candidates if p.is_file() and is_temp_name(p.name)]
    for p in removed:
        _unlink_quietly(p)
    return removed


def _write_all(fd: int, data: bytes) -> None:
    # os.write may write fewer bytes than asked (signals, pipes, some filesystems).
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _target_mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return DEFAULT_MODE


def _unlink_quietly(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
