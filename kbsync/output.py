"""How much kbsync says on the terminal: the CLI's global --quiet / --verbose.

One process-wide level, set by the CLI for each invocation (library callers may set it
too) and read by whoever draws a progress bar or loads a model:

  quiet    no progress bars and no progress lines on stderr; results, rejections,
           warnings and errors still print;
  normal   kbsync's own progress bars (on a terminal) and progress lines; the logging and
           progress bars of transformers and huggingface_hub silenced when a model loads;
  verbose  as normal, but transformers' and huggingface_hub's logging and progress bars
           are left as those libraries set them.
"""

from __future__ import annotations

QUIET, NORMAL, VERBOSE = -1, 0, 1
_level = NORMAL


def set_verbosity(level: int) -> None:
    global _level
    if level not in (QUIET, NORMAL, VERBOSE):
        raise ValueError(f"unknown verbosity {level!r}")
    _level = level


def verbosity() -> int:
    return _level


def progress_enabled() -> bool:
    """Whether kbsync draws progress bars and progress lines (off under --quiet)."""
    return _level > QUIET
