"""Crash-safe file replacement.

Guarantee: after `atomic_write_bytes(path, data)` returns, `path` holds exactly `data`
and survives a power cut; if it raises (ENOSPC, EIO, KeyboardInterrupt) or the process is
killed at any moment, `path` holds its old content (or still does not exist). Readers never
see a partial file.

How: write a uniquely named temp file in the same directory (a rename is only atomic
within one filesystem), fsync it, `os.replace` it over the target, then fsync the directory
so the rename itself is durable. A temp file left by a kill is named `.<name>.<random>.tmp`
(`is_temp_name`), never referenced by anything, and removed by `remove_temp_files` while
the project lock is held (`kbsync gc`).

A folder this creates (an object's `objects/ab/`) is fsynced in its parent too: a rename
into a folder whose own entry is lost in a power cut is lost with it. `atomic_write_with`
does the same for writers that want a path (safetensors' `save_file`), with the same
unique temp names, so two processes sharing a folder (the cache) never write one temp.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path
from typing import Callable

TEMP_SUFFIX = ".tmp"
DEFAULT_MODE = 0o644


def is_temp_name(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Replace `path` by `data` atomically and durably; `mode` defaults to the old file's."""
    path = Path(path)
    make_dirs(path.parent)
    mode = _target_mode(path) if mode is None else mode
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        _replace(Path(tmp), path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str, *, mode: int | None = None) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)


def atomic_write_with(path: str | os.PathLike, write: Callable[[Path], None], *,
                      mode: int | None = None) -> None:
    """Like atomic_write_bytes, for a writer that takes a path: `write(tmp)` fills a
    uniquely named temp file next to `path`, which then replaces `path`."""
    path = Path(path)
    tmp = new_temp(path.parent, path.name)
    try:
        write(tmp)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    publish(tmp, path, mode=_target_mode(path) if mode is None else mode)


def new_temp(directory: str | os.PathLike, name: str) -> Path:
    """A new empty temp file `.<name>.<random>.tmp` in `directory`, its name taken by
    creating it (O_EXCL), so no other process can write the same temp file."""
    directory = Path(directory)
    make_dirs(directory)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    return Path(tmp)


def publish(tmp: str | os.PathLike, path: str | os.PathLike, *, mode: int) -> None:
    """Make the filled temp file `tmp` the file `path`: fsync it, set `mode`, rename it
    over `path` (same filesystem; folders may differ) and fsync `path`'s folder. `tmp` is
    removed if any of it fails."""
    tmp, path = Path(tmp), Path(path)
    try:
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(tmp, mode)
        make_dirs(path.parent)
        _replace(tmp, path)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(path.parent)


def make_dirs(directory: str | os.PathLike) -> None:
    """mkdir -p, fsyncing the parent of every folder it creates (top down), so a file
    renamed into a new folder does not vanish with the folder's entry in a power cut."""
    directory = Path(directory)
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:        # another process made it first: it fsyncs it too
            continue
        fsync_dir(folder.parent)


def _replace(tmp: Path, path: Path) -> None:
    # The rename of every write goes through here: tests inject kills and faults here.
    os.replace(tmp, path)


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
