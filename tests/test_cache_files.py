"""Cache files are renamed into place from a temp file of their own: another process
filling the same entry (or a temp it left behind) never breaks or tears the write."""

from __future__ import annotations

import hashlib
import json

import pytest

from kbsync.evaluate.drift import base_perplexity
from kbsync.home import replace_cache_file
from kbsync.lm.load import file_fingerprint


@pytest.fixture
def cache(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("KBSYNC_CACHE", str(root))
    return root


def test_interleaved_writers_both_finish(tmp_path):
    target = tmp_path / "entry.json"

    def outer(tmp):
        tmp.write_text("outer")
        # a second writer of the same entry starts and finishes meanwhile
        replace_cache_file(target, lambda inner: inner.write_text("inner"))
        assert target.read_text() == "inner"

    replace_cache_file(target, outer)
    assert target.read_text() == "outer"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.json"]


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "entry.json"
    target.write_text("old")

    def broken(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        replace_cache_file(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["entry.json"]


def _block_fixed_temp(path):
    """What a fixed `<name>.tmp` scheme trips on: another writer's temp at that name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").mkdir()


def test_base_perplexity_cache_ignores_a_foreign_temp(cache):
    digest = hashlib.sha256(b"some text").hexdigest()[:16]     # drift.base_perplexity's key
    _block_fixed_temp(cache / "perplexity" / f"fp-{digest}.json")
    assert base_perplexity("fp", ["some text"], lambda: 12.5) == 12.5
    assert base_perplexity("fp", ["some text"], lambda: pytest.fail("not cached")) == 12.5


def test_fingerprint_cache_ignores_a_foreign_temp(cache, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    _block_fixed_temp(cache / "fingerprints.json")
    first = file_fingerprint(model)
    assert json.loads((cache / "fingerprints.json").read_text()) != {}
    assert file_fingerprint(model) == first
