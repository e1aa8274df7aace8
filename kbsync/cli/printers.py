"""Printers more than one command uses: the plan's lines, the refresh progress bar, and
the event printer of apply, refresh and watch (human lines on stderr, or JSON lines)."""

from __future__ import annotations

import sys

import click

from kbsync.cli.options import echo_json
from kbsync.text import printable


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


def capacity_warning(event: dict) -> str:
    """The capacity event (evaluate.capacity) as a warning line: what is spent, what to do."""
    spent = ", ".join(f"{b['metric']} {b['spent']:.3g} of {b['budget']:.3g}"
                      for b in event["budgets"])
    left = event["facts_left"]
    ahead = f"about {left} more fact(s) fit at the rate so far" if left is not None else \
        "the budget is nearly spent"
    return (f"warning: capacity: {spent} spent; {ahead}, {event['pending']} still to edit "
            f"in this run. To go on: {event['advice']}.")


def batch_line(event: dict) -> str | None:
    """The human line of a batch event (batch_start, gates, commit), or None."""
    kind = event.get("type")
    if kind == "batch_start":
        retry = "" if event.get("attempt", 1) == 1 else \
            f" (retry {event['attempt']} of batch {event['of']}: {event['strategy']})"
        return f"batch {event['batch']}: editing {event['size']} fact(s){retry}..."
    if kind == "gates":
        failed = [c["metric"] for c in event["checks"] if not c["passed"]]
        text = "all gates passed" if not failed else "gates failed: " + ", ".join(failed)
        return f"batch {event['batch']}: {text}"
    if kind == "commit":
        return f"committed snapshot {event['snapshot'][:12]} (serial {event['serial']})"
    if kind == "deferred":
        return (f"{event['count']} edit(s) left for the next run (--max-edits "
                f"{event['max_edits']}): run `kbsync apply` again")
    return None


def event_printer(as_json: bool):
    """Events as JSON lines on stdout, or short human lines and one progress bar (over
    the edits of the whole run, retries included, with its ETA) on stderr; the lines are
    written above the bar, so it stays one bar. Under `kbsync --quiet` only rejections,
    recovered runs, the capacity warning and the switch to the fallback editor are printed."""
    from kbsync.output import progress_enabled

    bar = refresh_bar = None
    quiet = not progress_enabled()
    warned = False

    def say(text: str) -> None:
        if bar is not None:
            bar.write(text, file=sys.stderr)
        else:
            click.echo(text, err=True)

    def emit(event: dict) -> None:
        nonlocal bar, refresh_bar, warned
        if as_json:
            echo_json(event)
            return
        kind = event.get("type")
        if kind == "rejected":
            say(printable(f"rejected {event['key']}: gates failed ({', '.join(event['failed'])})"))
        elif kind == "recovered":
            say(f"recorded interrupted run {event['run_id']}")
        elif kind == "capacity" and event["warn"] and not warned:
            warned = True               # once a run: it is in the ledger too
            say(capacity_warning(event))
        elif kind == "past_the_wall":
            say(f"capacity nearly spent: the next batches go to the fallback editor "
                f"{event['editor']} (retry.fallback_editor) until `kbsync rebase`")
        if quiet:
            return
        if kind == "progress" and event.get("phase") == "refresh":
            if refresh_bar is None:
                refresh_bar = refresh_progress()
            refresh_bar(event["done"], event["total"])
        elif kind == "refresh":
            say(f"refresh: {event['probed']} committed fact(s) probed, "
                f"{event['drifted']} drifted")
        if kind == "edits" and event["total"]:
            from tqdm import tqdm
            size = f" in batches of {event['batch_size']}" if event.get("batch_size") else ""
            say(f"{event['known']} already known, {event['skipped']} skipped, "
                f"{event['total']} to edit{size}")
            bar = tqdm(total=event["total"], desc="edits", unit="edit", file=sys.stderr,
                       disable=None, leave=False)
        elif kind in ("commit", "rejected") and bar is not None:
            bar.update(event.get("edits", 1))
        elif kind == "summary" and bar is not None:
            bar.close()
            bar = None
        line = batch_line(event)
        if line is not None:
            say(line)
    return emit
