"""The `kbsync` group and its global options, with every command registered explicitly
(COMMANDS below): the command modules only define commands, and nothing imports this
module but the entry points (pyproject's `kbsync`, `python -m kbsync`, `python -m
kbsync.cli`), so the CLI's imports point one way: main -> commands -> printers -> options."""

from __future__ import annotations

from pathlib import Path

import click

from kbsync import __version__
from kbsync.cli import bench, model, project, report, sync
from kbsync.cli.options import Env


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


COMMANDS: list[click.Command] = [
    project.init, project.plan, model.apply, model.log, model.show, model.audit, model.ask,
    model.rollback, model.rebase, model.export, model.editors, model.ledger, model.model,
    project.gc,
    sync.watch_command, sync.refresh_command, report.report, bench.bench,
]
for _command in COMMANDS:
    main.add_command(_command)
