"""`kbsync report`: an HTML page with PNG figures made from the ledger.

    data.py   ledger + manifests -> plain records (gates per snapshot, edits and seconds
              per run)
    norms.py  ‖W_snapshot‖/‖W_base‖ of every edited matrix, from patches and base weights
    plots.py  one PNG per figure (matplotlib, Agg canvas)
    html.py   index.html: the figures and the tables, every ledger string escaped

The report only reads the project: it takes no lock (SQLite gives it a consistent view
while an apply writes) and creates no ledger in a project that has none.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["build_report", "write_report", "default_report_dir"]


def default_report_dir(project) -> Path:
    return project.kbsync_dir / "report"


def write_report(project, out_dir: str | Path | None = None) -> Path:
    """Write index.html, its PNGs and report.json (the same data) into `out_dir`
    (default `.kbsync/report/`); returns the path of index.html."""
    return build_report(project, out_dir)[0]


def build_report(project, out_dir: str | Path | None = None) -> tuple[Path, dict]:
    """write_report, also returning the summary it wrote to report.json."""
    from kbsync.report.data import read_report_data
    from kbsync.report.html import render
    from kbsync.report.plots import draw_all
    from kbsync.store.atomic import atomic_write_text

    out = Path(out_dir) if out_dir is not None else default_report_dir(project)
    out.mkdir(parents=True, exist_ok=True)
    data = read_report_data(project)
    figures = draw_all(data, out)
    summary = {**data.to_dict(), "figures": figures}
    atomic_write_text(out / "report.json", json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    index = out / "index.html"
    # written last: a page that exists names only figures that exist
    atomic_write_text(index, render(data, figures))
    return index, summary
