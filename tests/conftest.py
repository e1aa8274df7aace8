"""Shared, generic fixtures. Keep this file small: specific helpers live in the tests."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def write_files(tmp_path: Path) -> Callable[..., Path]:
    """write_files({"a.yaml": "...", "sub/b.ttl": "..."}, root=None) -> the folder."""

    def write(files: dict[str, str], root: Path | None = None) -> Path:
        root = root or tmp_path
        for name, text in files.items():
            path = root / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        return root

    return write


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama saved as a Hugging Face directory (kbsync.testing)."""
    from kbproject import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def kb_cache(tmp_path_factory) -> Path:
    """A KBSYNC_CACHE shared by the session (the tiny model's covariance statistics are
    computed once), never the user's; tests set it with monkeypatch.setenv."""
    return tmp_path_factory.mktemp("kbsync-cache")


@pytest.fixture(autouse=True)
def _shared_cache(kb_cache, monkeypatch):
    """No test reads or writes the user's cache: every test gets the session's."""
    monkeypatch.setenv("KBSYNC_CACHE", str(kb_cache))


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A cache of the test's own, for tests whose tiny models differ under one name
    (statistics cached for one must not serve another)."""
    monkeypatch.setenv("KBSYNC_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def applied_template(tmp_path_factory, tiny_llama_dir, kb_cache):
    """A project after `apply` of FACTS with MEMIT (built once, copied per test)."""
    from kbproject import FACTS, key, make_project
    from kbsync.apply import apply

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KBSYNC_CACHE", str(kb_cache))
        project = make_project(tmp_path_factory.mktemp("applied") / "proj", tiny_llama_dir)
        result = apply(project)
    assert sorted(result.applied) == sorted(key(s) for s in FACTS) and not result.rejected
    return project.root, result


@pytest.fixture
def applied(applied_template, tmp_path):
    """A copy of the applied project, for one test to change."""
    from kbsync.project import Project

    root = tmp_path / "proj"
    shutil.copytree(applied_template[0], root)
    return Project(root)
