"""What every `kbsync` command shares: the per-invocation Env (-C), --json output, and
error handling with exit codes (`handle_errors`: a KbsyncError becomes its message on
stderr, a JSON error object under --json, and its documented exit code)."""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click

from kbsync.errors import KbsyncError
from kbsync.text import printable



@dataclass
class Env:
    """Per-invocation state: the working folder (-C) and output preferences."""

    cwd: Path

    def path(self, value: str | os.PathLike) -> Path:
        """A user-given path, relative to -C like git does."""
        return (self.cwd / Path(value).expanduser()).resolve()

    def project(self):
        from kbsync.project import find_project

        return find_project(self.cwd)


pass_env = click.make_pass_decorator(Env)


def color_enabled() -> bool | None:
    """False when NO_COLOR is set (https://no-color.org); else let click decide (TTY)."""
    return False if os.environ.get("NO_COLOR") else None


def echo_json(value: Any) -> None:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    click.echo(text.rstrip("\n"))


def json_option(fn: Callable) -> Callable:
    return click.option("--json", "as_json", is_flag=True,
                        help="Machine-readable JSON on stdout (errors too).")(fn)


def _fail(err: KbsyncError, as_json: bool) -> None:
    if as_json:
        echo_json(err.to_json())
    # file names and fact text in the message are printed escaped, never as terminal codes
    click.echo(click.style("error: ", fg="red", bold=True) + printable(err, keep_newlines=True),
               err=True, color=color_enabled())
    sys.exit(err.exit_code)


def handle_errors(fn: Callable) -> Callable:
    """Report a KbsyncError (or an OSError such as a full disk) the same way for every
    command and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KbsyncError as err:
            _fail(err, kwargs.get("as_json", False))
        except sqlite3.DatabaseError as err:   # the ledger, read past its opening
            from kbsync.project import corrupt_ledger

            _fail(corrupt_ledger(err), kwargs.get("as_json", False))
        except OSError as err:   # the store is left consistent: say so, no traceback
            where = f": {err.filename}" if err.filename else ""
            _fail(KbsyncError(f"{err.strerror or err}{where}",
                              hint="nothing was committed; fix the cause and run again"),
                  kwargs.get("as_json", False))

    return wrapper
