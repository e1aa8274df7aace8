"""Commands that keep the model in step on their own: watch and refresh. Registered on
the `kbsync` group from cli.py; each calls a library function (kbsync.sync) and prints
what it returns. `plan --refresh` and `apply --refresh` live with plan and apply."""

from __future__ import annotations

import sys
import time

import click

from kbsync.cli.options import Env, echo_json, handle_errors, json_option, pass_env
from kbsync.cli.printers import event_printer, refresh_progress
from kbsync.text import printable
from kbsync.errors import EXIT_CHANGES


def cycle_line(event: dict) -> str:
    """One human line per watch cycle."""
    stamp = time.strftime("%H:%M:%S")
    outcome = event["outcome"]
    if outcome == "applied":
        text = (f"applied {event['applied']} edit(s), {event['known']} already known, "
                f"{event['skipped']} skipped, {event['rejected']} rejected")
        if event.get("snapshot"):
            text += f" -> snapshot {event['snapshot'][:12]}"
    elif outcome == "no_changes":
        text = "no changes"
    elif outcome == "abandoned":
        text = "stopped before the next batch; the rest is planned again on the next start"
    else:
        label = {"rejected": "gates rejected every edit", "lock_held": "project locked, retrying",
                 "error": "error"}[outcome]
        text = f"{label}: {event.get('message', '')}"
    if event.get("recovered"):
        text += f" (recorded {len(event['recovered'])} interrupted run(s))"
    return f"{stamp} cycle {event['cycle']} ({event['trigger']}): {text} [{event['seconds']:.1f}s]"


@click.command("watch")
@click.argument("directory", required=False, default=".", metavar="[DIR]")
@click.option("--debounce", default=1.0, show_default=True, type=click.FloatRange(min=0),
              metavar="S", help="Seconds of quiet after a change before a cycle starts.")
@click.option("--polling", is_flag=True,
              help="Poll instead of inotify (network filesystems); automatic when inotify fails.")
@click.option("--poll-interval", default=1.0, show_default=True, type=click.FloatRange(min=0.01),
              metavar="S", help="Seconds between polls when polling.")
@click.option("--lock-timeout", default=0.0, show_default=True, metavar="S",
              help="Seconds a cycle waits for another kbsync holding the lock (then retries).")
@json_option
@pass_env
@handle_errors
def watch_command(env: Env, directory: str, debounce: float, polling: bool,
                  poll_interval: float, lock_timeout: float, as_json: bool) -> None:
    """Apply the facts whenever they change (like `apply --auto-approve`), until stopped.

    DIR is the project, or any folder inside it (default: the current one); the facts
    folder of its kbsync.yaml is watched. One line (--json: one JSON object) per cycle.
    A bad fact file is reported with file:line and the watch goes on. SIGINT/SIGTERM
    finish the batch in flight and exit 0.
    """
    from kbsync.project import find_project
    from kbsync.sync.watch import watch

    from kbsync.output import progress_enabled

    project = find_project(env.path(directory))
    chatty = progress_enabled()          # the start and stop lines; cycle lines always

    def emit(event: dict) -> None:
        if as_json:
            echo_json(event)
        elif event["type"] == "watching" and chatty:
            extra = f" ({event['fallback']})" if event["fallback"] else ""
            click.echo(f"watching {project.relative(project.facts_dir)} with {event['observer']}"
                       f"{extra}, debounce {event['debounce']:g}s; Ctrl-C to stop", err=True)
        elif event["type"] == "cycle":
            click.echo(printable(cycle_line(event)))   # its message may quote fact text
        elif event["type"] == "stopped" and chatty:
            click.echo(f"stopped after {event['cycles']} cycle(s)", err=True)

    inner = (lambda event: None) if as_json else event_printer(False)
    watch(project, debounce=debounce, polling=polling, poll_interval=poll_interval,
          lock_timeout=lock_timeout, emit=emit, inner_emit=inner)


@click.command("refresh")
@click.option("--check", is_flag=True,
              help=f"Exit {EXIT_CHANGES} when drift is found (for CI); never edits.")
@json_option
@pass_env
@handle_errors
def refresh_command(env: Env, check: bool, as_json: bool) -> None:
    """Probe the model at HEAD for every committed fact and list those it no longer
    answers (drift). `kbsync apply --refresh` edits them back."""
    from kbsync.sync.refresh import refresh

    report = refresh(env.project(), progress=refresh_progress(not as_json))
    if as_json:
        echo_json(report.to_dict())
    else:
        for d in report.drifted:
            click.echo(printable(f"~ drift {d.key}: {d.object} "
                                 f"(the model answers {d.answer!r})"))
        click.echo(f"Refresh: {report.probed} committed fact(s) probed, "
                   f"{len(report.drifted)} drifted.")
    if check and report.drifted:
        sys.exit(EXIT_CHANGES)
