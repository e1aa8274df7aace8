"""What every `kbsync` command shares: the `main` group and its global options, the
per-invocation Env, --json output, error handling with exit codes, and the printers
used by more than one command module (plan lines, the refresh progress bar).

Command modules (kbsync/cli.py, cli_model.py, cli_sync.py, cli_report.py, cli_bench.py)
import from here and register on `main`; kbsync/cli.py imports them all, so imports
point one way: cli -> cli_* -> cli_base.
"""

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

from kbsync import __version__
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-C", "directories", type=click.Path(file_okay=False, path_type=Path),
              multiple=True, metavar="DIR",
              help="Run as if kbsync was started in DIR (repeatable, like git: -C a -C b = a/b).")
@click.option("-q", "--quiet", is_flag=True,
              help="No progress bars or progress lines; results, rejections and errors only.")
@click.option("-v", "--verbose", is_flag=True,
              help="Also show transformers' and huggingface_hub's logging and progress bars.")
@click.version_option(__version__, "--version", prog_name="kbsync")
@click.pass_context
def main(ctx: click.Context, directories: tuple[Path, ...], quiet: bool, verbose: bool) -> None:
    """Keep a language model in agreement with a knowledge base of facts.

    Exit codes: 0 ok, 1 error, 2 usage error or (plan --detailed-exitcode) changes
    present or (refresh --check) drift found, 3 lock held, 4 gate failed, 5 integrity
    failure.
    """
    from kbsync import output

    if quiet and verbose:
        raise click.UsageError("--quiet and --verbose exclude each other")
    output.set_verbosity(output.QUIET if quiet else output.VERBOSE if verbose else output.NORMAL)
    cwd = Path.cwd()
    for directory in directories:
        cwd = (cwd / directory).resolve()
    ctx.obj = Env(cwd=cwd)



_OP_STYLE = {"add": ("+", "green"), "update": ("~", "yellow"), "remove": ("-", "red")}


def human_bytes(n: int) -> str:
    """1234567 -> "1.2 MB" (decimal units, like `du --si`)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def plan_lines(plan) -> list[str]:
    """Human plan output, one line per request, then the summary line."""
    lines = []
    for r in plan.requests:
        sign, color = _OP_STYLE[r.op]
        if r.op == "add":
            text = f"{sign} add  {r.fact_key}: {r.new_object}"
        elif r.reason == "drift":
            text = f"{sign} drift  {r.fact_key}: {r.new_object} (the model answers {r.observed!r})"
        elif r.op == "update":
            text = f"{sign} update {r.fact_key}: {r.old_object} -> {r.new_object}"
        else:
            text = f"{sign} remove {r.fact_key}: {r.old_object}"
        if r.reason not in ("diff", "drift"):
            text += f"  ({r.reason})"
        # fact text is escaped: a control sequence in it must not rewrite the plan on screen
        lines.append(click.style(printable(text), fg=color))
    counts = plan.summary()
    if not plan.requests:
        lines.append("No changes.")
    else:
        drift = f" ({counts['drift']} drifted)" if counts.get("drift") else ""
        lines += ["", f"Plan: {counts['add']} to add, {counts['change']} to change{drift}, "
                      f"{counts['remove']} to remove."]
    return lines


def refresh_progress(enabled: bool = True):
    """A progress callback (done, total) drawing a tqdm bar on stderr (off without a TTY
    and under `kbsync --quiet`)."""
    from kbsync.output import progress_enabled

    bar = None
    enabled = enabled and progress_enabled()

    def progress(done: int, total: int) -> None:
        nonlocal bar
        if not enabled or not total:
            return
        if bar is None:
            from tqdm import tqdm
            bar = tqdm(total=total, desc="refresh", unit="fact", file=sys.stderr,
                       disable=None, leave=False)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return progress
