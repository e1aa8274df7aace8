"""`kbsync editors` prints each editor's measured trade-off, copied from
benchmarks/RESULTS.md: every row names a registered editor and a section that exists."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from kbsync.cli.main import main
from kbsync.editing.registry import EDITORS, measured_tradeoffs, tradeoff_line

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "RESULTS.md"
ROWS = [(name, run) for name, runs in measured_tradeoffs().items() for run in runs]


@pytest.mark.parametrize("name, run", ROWS, ids=[n for n, _ in ROWS])
def test_each_row_is_a_registered_editor_and_a_results_section(name, run):
    assert name in EDITORS
    headings = [line.lstrip("#").strip() for line in RESULTS.read_text().splitlines()
                if line.startswith("#")]
    assert any(h.startswith(run["source"]) for h in headings), run["source"]
    assert 0 <= run["efficacy"] <= 1 and 0 <= run["locality"] <= 1 and run["edits"] > 0


def test_editors_command_shows_the_measured_line():
    out = CliRunner().invoke(main, ["editors"]).output
    line = tradeoff_line(measured_tradeoffs()["alphaedit"][0])
    assert line in out and "efficacy 0.98" in line
    rows = [json.loads(l) for l in CliRunner().invoke(main, ["editors", "--json"]).output.splitlines()]
    by_name = {r["name"]: r for r in rows}
    assert by_name["rome"]["measured"] == [] and by_name["case"]["measured"][0]["dataset"] == "zsre"
