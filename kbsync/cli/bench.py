"""`kbsync bench quality` and `kbsync bench speed`: thin wrappers over kbsync.bench."""

from __future__ import annotations

import json

import click

from kbsync.cli.options import echo_json, handle_errors, json_option


def _print_table(result: dict) -> None:
    for key, value in result.items():
        if isinstance(value, (dict, list)):
            continue
        click.echo(f"{key:<32} {value:.4g}" if isinstance(value, float) else f"{key:<32} {value}")


def _progress_line(record: dict) -> None:
    """One line per batch on stderr where no progress bar is drawn (logs of long runs)."""
    from kbsync.output import progress_enabled

    if click.get_text_stream("stderr").isatty() or not progress_enabled():
        return
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()
             if k != "type" and isinstance(v, (int, float))}
    click.echo(json.dumps(shown), err=True)


@click.group()
def bench() -> None:
    """Benchmarks: edit quality on real data, and speed against the machine's floor."""


@bench.command("quality")
@click.option("--editor", required=True)
@click.option("--dataset", type=click.Choice(["counterfact", "zsre"]), default="counterfact")
@click.option("--edits", default=100, show_default=True)
@click.option("--batch", default=10, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--model", default="default", show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--hparams", default="{}", help="JSON overrides of the editor's hyperparameters.")
@click.option("--trace", default=0, show_default=True,
              help="Score the first N edits (efficacy, locality) and the perplexity drift "
                   "as the run goes.")
@click.option("--trace-every", default=0, show_default=True,
              help="Edits between trace points (0: every batch).")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Save progress to this file; run again with it to resume a killed run.")
@click.option("--checkpoint-every", default=60.0, show_default=True,
              help="Seconds between checkpoint saves.")
@json_option
@handle_errors
def bench_quality(editor, dataset, edits, batch, seed, model, device, hparams, trace,
                  trace_every, checkpoint, checkpoint_every, as_json) -> None:
    """N sequential edits in batches of B, all scored after the last batch."""
    from kbsync.bench.quality import run_quality

    result = run_quality(editor, dataset, edits, batch, seed=seed, model=model, device=device,
                         hparams=json.loads(hparams), trace=trace, trace_every=trace_every,
                         on_batch=_progress_line,
                         checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    if as_json:
        echo_json(result)
        return
    _print_table(result)


@bench.command("speed")
@click.option("--model", default="default", show_default=True,
              help="A model directory, `default`, or `llama3-8b-shape` (random weights, GPU).")
@click.option("--editor", default="alphaedit", show_default=True)
@click.option("--edits", default=50, show_default=True)
@click.option("--batch", default=10, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--fixed-steps", type=int, default=None,
              help="Target-optimisation steps without early stop, so runs do equal work.")
@json_option
@handle_errors
def bench_speed(model, editor, edits, batch, device, seed, fixed_steps, as_json) -> None:
    """Seconds per edit by phase, peak memory, and the floor of this machine."""
    from kbsync.bench.speed import PHASES, run_speed

    result = run_speed(model, editor, edits, batch, device=device, seed=seed,
                       fixed_steps=fixed_steps)
    if as_json:
        echo_json(result)
        return
    click.echo(f"{'phase':<10} {'s/edit':>10} {'floor s/edit':>14} {'x floor':>8}")
    for phase in PHASES + ("total",):
        key = "" if phase == "total" else f"{phase}_"
        took, least = result[f"{key}seconds_per_edit"], result[f"{key}floor_seconds_per_edit"]
        ratio = f"{took / least:8.1f}" if least else f"{'-':>8}"
        click.echo(f"{phase:<10} {took:10.3f} {least:14.4f} {ratio}")
    click.echo(f"stats (cached per model): {result['stats_seconds']:.1f} s; peak memory "
               f"{result['peak_memory_bytes'] / 2**30:.2f} GiB on {result['device']}")
