"""Shared, generic fixtures. Keep this file small: specific helpers live in the tests."""

from __future__ import annotations

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
