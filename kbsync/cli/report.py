"""`kbsync report`: registered on the `kbsync` group from cli.py; it calls
kbsync.report.build_report and prints where the page is and its summary."""

from __future__ import annotations

import click

from kbsync.cli.options import Env, echo_json, handle_errors, json_option, pass_env


@click.command()
@click.option("-o", "--out", "out_dir", metavar="DIR", type=click.Path(file_okay=False),
              help="Folder to write index.html and the PNGs into  [default: .kbsync/report]")
@json_option
@pass_env
@handle_errors
def report(env: Env, out_dir: str | None, as_json: bool) -> None:
    """Write an HTML report with figures from the ledger: gate metrics per snapshot, edits
    accepted and rejected, seconds per edit, norms of the edited matrices."""
    from kbsync.report import build_report

    project = env.project()
    index, summary = build_report(project, env.path(out_dir) if out_dir else None)
    snapshots = len(summary["snapshots"])
    if as_json:
        echo_json({"type": "report", "index": str(index), "figures": summary["figures"],
                   "snapshots": snapshots, "runs": len(summary["runs"]),
                   "norms_note": summary["norms_note"]})
        return
    if not snapshots:
        click.echo("No snapshots yet: nothing has been committed; run `kbsync apply` first.",
                   err=True)
    if summary["norms_note"]:
        click.echo(summary["norms_note"], err=True)
    click.echo(f"report written to {index} ({snapshots} snapshot(s), "
               f"{len(summary['figures'])} figure(s))")
