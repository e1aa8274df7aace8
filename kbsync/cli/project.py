"""The `kbsync` command line: parse, call a library function, print (or --json).

Adding a command:

    @click.command()
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

import sys

import click

from kbsync.errors import EXIT_CHANGES
from kbsync.cli.options import (Env, color_enabled, echo_json, handle_errors, json_option,
                                pass_env)
from kbsync.cli.printers import plan_lines, refresh_progress



@click.command()
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


@click.command()
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


@click.command()
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
