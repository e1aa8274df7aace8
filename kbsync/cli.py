"""The `kbsync` command line: parse, call a library function, print (or --json).

Adding a command:

    @main.command()
    @json_option
    @pass_env
    @handle_errors
    def show(env: Env, as_json: bool, ...):
        result = some_library_function(env.project(), ...)
        ...

`handle_errors` turns every KbsyncError into a message on stderr (plus a JSON error
object on stdout under --json) and the error's exit code. Library modules are imported
inside commands so `kbsync --help` starts fast.
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
from kbsync.errors import EXIT_CHANGES, KbsyncError
from kbsync.text import printable

__all__ = ["main", "Env", "pass_env", "json_option", "handle_errors", "echo_json", "printable"]


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


@main.command()
@click.argument("directory", required=False, default=".", metavar="[DIR]")
@click.option("--model", default="default", show_default=True,
              help='A Hugging Face model folder, or "default".')
@click.option("--editor", default="alphaedit", show_default=True, help="Editing method.")
@json_option
@pass_env
@handle_errors
def init(env: Env, directory: str, model: str, editor: str, as_json: bool) -> None:
    """Create a project in DIR: kbsync.yaml, facts/ (a demo knowledge base), .kbsync/."""
    from kbsync.project import init_project

    root = env.path(directory)
    if model != "default":
        given = env.path(model)  # relative to where the user typed it; stored root-relative
        model = given.relative_to(root).as_posix() if given.is_relative_to(root) else str(given)
    project = init_project(root, model=model, editor=editor)
    if as_json:
        echo_json({"type": "init", "root": str(project.root),
                   "config": str(project.config_path), "facts": str(project.facts_dir)})
        return
    click.echo(f"Initialized kbsync project in {project.root}")
    click.echo(f"  {project.relative(project.config_path)}  model: {model}, editor: {editor}")
    click.echo(f"  {project.relative(project.facts_dir)}/  demo knowledge base")
    click.echo("Next: kbsync plan")


_OP_STYLE = {"add": ("+", "green"), "update": ("~", "yellow"), "remove": ("-", "red")}


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


@main.command()
@json_option
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), metavar="FILE",
              help="Save the plan as JSON for `kbsync apply FILE`.")
@click.option("--detailed-exitcode", is_flag=True,
              help="Exit 0 when there are no changes, 2 when there are.")
@click.option("--from", "from_rev", metavar="REV",
              help="Diff against the facts at git revision REV instead of the applied state.")
@click.option("--refresh", is_flag=True,
              help="Also probe the model for every committed fact; plan edits for drift.")
@pass_env
@handle_errors
def plan(env: Env, as_json: bool, out: str | None, detailed_exitcode: bool,
         from_rev: str | None, refresh: bool) -> None:
    """Show what apply would change in the model; changes nothing."""
    from kbsync.cli_sync import refresh_progress
    from kbsync.project import compute_plan

    result = compute_plan(env.project(), from_rev=from_rev, refresh=refresh,
                          progress=refresh_progress(not as_json))
    if out is not None:
        from kbsync.store.atomic import atomic_write_text

        atomic_write_text(env.path(out), result.to_json())
    if as_json:
        echo_json(result.to_json())
    else:
        for line in plan_lines(result):
            click.echo(line, color=color_enabled())
        if out is not None:
            click.echo(f"Saved the plan to {out}; apply it with: kbsync apply {out}")
    if detailed_exitcode and result.has_changes:
        sys.exit(EXIT_CHANGES)


@main.command()
@click.option("--dry-run", is_flag=True, help="List what would be removed; remove nothing.")
@click.option("--lock-timeout", default=0.0, show_default=True, metavar="S",
              help="Seconds to wait for another kbsync holding the project lock.")
@json_option
@pass_env
@handle_errors
def gc(env: Env, dry_run: bool, lock_timeout: float, as_json: bool) -> None:
    """Remove what killed runs left in .kbsync: temp files, manifests never committed and
    objects no committed snapshot names. Committed snapshots are never touched."""
    from kbsync.history import gc as collect

    result = collect(env.project(), dry_run=dry_run, lock_timeout=lock_timeout)
    if as_json:
        echo_json(result)
        return
    verb = "Would remove" if dry_run else "Removed"
    click.echo(f"{verb} {len(result['temp_files'])} temp file(s), {len(result['manifests'])} "
               f"uncommitted manifest(s), {len(result['objects'])} unreferenced object(s): "
               f"{result['bytes']} bytes.")


from kbsync import cli_model  # noqa: E402,F401  (registers apply, log, show, ... on main)
from kbsync import cli_report  # noqa: E402,F401  (registers report)
from kbsync import cli_bench  # noqa: E402,F401  (registers bench quality / speed)
from kbsync import cli_sync  # noqa: E402,F401  (registers watch, refresh)

if __name__ == "__main__":  # `python -m kbsync.cli`
    # this file runs as __main__ here; the commands of cli_model are registered on the
    # group of the imported module kbsync.cli, so run that one
    from kbsync.cli import main as package_main

    package_main()
