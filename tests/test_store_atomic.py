"""atomic_write_*: old content survives any failure; no temp file is left behind."""

from __future__ import annotations

import errno
import os

import pytest

from kbsync.store.atomic import (atomic_write_bytes, atomic_write_text, is_temp_name,
                                 remove_temp_files)


def _enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_write_replaces_content_and_keeps_mode(tmp_path):
    target = tmp_path / "HEAD"
    atomic_write_text(target, "old\n")
    target.chmod(0o600)
    atomic_write_bytes(target, b"new\n")
    assert target.read_bytes() == b"new\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert os.listdir(tmp_path) == ["HEAD"]


def test_explicit_mode_and_parent_creation(tmp_path):
    target = tmp_path / "a" / "b" / "blob"
    atomic_write_bytes(target, b"x", mode=0o444)
    assert target.read_bytes() == b"x"
    assert target.stat().st_mode & 0o777 == 0o444


def test_enospc_mid_write_leaves_old_content(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write_text(target, "old content")
    real_write = os.write
    calls = []

    def write_then_fail(fd, data):
        if calls:  # the first chunk lands, the second hits a full disk
            _enospc()
        calls.append(fd)
        return real_write(fd, bytes(data[:4]))

    monkeypatch.setattr(os, "write", write_then_fail)
    with pytest.raises(OSError) as info:
        atomic_write_text(target, "a much longer new content")
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert target.read_text() == "old content"
    assert os.listdir(tmp_path) == ["state.json"]  # temp file removed


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failure_before_rename_leaves_old_content(tmp_path, monkeypatch, failing):
    target = tmp_path / "f"
    atomic_write_bytes(target, b"old")
    monkeypatch.setattr(os, failing, _enospc)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_failure_on_new_file_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "write", _enospc)
    with pytest.raises(OSError):
        atomic_write_bytes(tmp_path / "new", b"data")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_keyboard_interrupt_cleans_temp(tmp_path, monkeypatch):
    def interrupted(_fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "f", b"data")
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def test_remove_temp_files_only_removes_temps(tmp_path):
    (tmp_path / ".HEAD.abc123.tmp").write_text("partial")
    (tmp_path / "HEAD").write_text("keep")
    (tmp_path / "notes.tmp").write_text("not ours: no leading dot")
    removed = remove_temp_files(tmp_path)
    assert [p.name for p in removed] == [".HEAD.abc123.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["HEAD", "notes.tmp"]
    assert is_temp_name(".x.tmp") and not is_temp_name("x.tmp")
