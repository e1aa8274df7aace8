"""`kbsync report`: the page, its PNGs and the figures behind them, checked against the
ledger rows and a model rebuilt independently (kbsync.editing.rebuild), on the tiny
applied project of conftest.py."""

from __future__ import annotations

import json
import math
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
import yaml
from kbproject import FACTS, NEW, cli, key, make_project, write_facts

from kbsync.apply import apply
from kbsync.history import rollback
from kbsync.project import Project
from kbsync.report import write_report
from kbsync.report.data import read_report_data
from kbsync.store.ledger import Ledger

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = {"gates.png", "edits.png", "seconds.png", "norms.png"}


class Page(HTMLParser):
    """Rows of the page's tables: {table id: {row key: {cell key: data-value}}}."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, dict[str, dict[str, str]]] = {}
        self.texts: dict[tuple[str, str, str], str] = {}
        self._table = self._row = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = {}
        elif tag == "tr" and (a.get("data-snapshot") or a.get("data-run") or a.get("data-budget")):
            self._row = a.get("data-snapshot") or a.get("data-run") or a.get("data-budget")
            self.tables[self._table][self._row] = {}
        elif tag == "td" and self._row and "data-value" in a:
            self._cell = a.get("data-metric") or a.get("data-layer")
            self.tables[self._table][self._row][self._cell] = a["data-value"]

    def handle_data(self, data):
        if self._cell is not None:
            self.texts[(self._table, self._row, self._cell)] = data

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "tr":
            self._row = None


def ledger_rows(project: Project) -> dict[str, list[dict]]:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return {t: ledger.rows(t) for t in ("snapshots", "edits", "gates", "events")}


def three_snapshots(project: Project) -> list[str]:
    """The applied project plus an update of Danube and a rollback to the first snapshot."""
    first = ledger_rows(project)["snapshots"][0]["snapshot_id"]
    write_facts(project.root, {**FACTS, "Danube": NEW})
    assert apply(project).applied == [key("Danube")]
    rollback(project, first)
    return [r["snapshot_id"] for r in ledger_rows(project)["snapshots"]]


def test_report_writes_the_page_and_valid_pngs(applied):
    from PIL import Image

    index = write_report(applied)
    assert index == applied.kbsync_dir / "report" / "index.html" and index.is_file()
    text = index.read_text(encoding="utf-8")
    assert {p.name for p in index.parent.glob("*.png")} == FIGURES
    for name in FIGURES:
        path = index.parent / name
        assert path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) >= 200
        assert f'src="{name}"' in text
    assert "<script" not in text and "http" not in text      # self-contained, no network
    summary = json.loads((index.parent / "report.json").read_text())
    assert set(summary["figures"]) == FIGURES and len(summary["snapshots"]) == 1


def test_page_shows_every_snapshot_with_the_gate_values_in_the_ledger(applied):
    ids = three_snapshots(applied)
    page = Page(write_report(applied).read_text(encoding="utf-8"))
    rows = ledger_rows(applied)
    assert list(page.tables["snapshots"]) == ids                     # every one, commit order
    for snap in rows["snapshots"]:
        # the committed batch's edits are the rows right after its snapshot row
        batch = next((e["batch"] for e in rows["edits"] if e["seq"] == snap["seq"] + 1
                      and e["status"] == "applied"), None)
        expected = {g["metric"]: g["value"] for g in rows["gates"]
                    if batch is not None and (g["run_id"], g["batch"]) == (snap["run_id"], batch)}
        shown = page.tables["snapshots"][snap["snapshot_id"]]
        assert shown == {m: repr(v) for m, v in expected.items()}
        for metric, value in expected.items():
            assert page.texts[("snapshots", snap["snapshot_id"], metric)] == f"{value:.4g}"
    gated = [sid for sid in ids if page.tables["snapshots"][sid]]
    assert gated == ids[:2]              # the rollback passed no gates
    assert {"efficacy", "locality", "ppl_drift", "retention"} <= set(page.tables["snapshots"][ids[1]])


def test_report_shows_the_capacity_budget_of_the_last_gated_snapshot(applied, monkeypatch):
    import kbsync.evaluate.capacity as capacity_module
    from kbsync.evaluate.capacity import capacity

    gates = {g["metric"]: (g["value"], g["threshold"]) for g in ledger_rows(applied)["gates"]}
    expected = capacity(len(FACTS), gates).to_dict()      # one batch of every fact
    assert read_report_data(applied, norms=False).capacity == expected
    page = Page(write_report(applied).read_text(encoding="utf-8"))
    assert set(page.tables["capacity"]) == {"ppl_drift", "general_knowledge"}
    drift = next(b for b in expected["budgets"] if b["metric"] == "ppl_drift")
    assert page.tables["capacity"]["ppl_drift"]["spent"] == repr(drift["spent"])
    assert page.tables["capacity"]["ppl_drift"]["budget"] == repr(gates["ppl_drift"][1])
    assert 'id="capacity-warning"' not in write_report(applied).read_text(encoding="utf-8")
    monkeypatch.setattr(capacity_module, "WARN_SHARE", 1.01)       # any budget is low
    text = write_report(applied).read_text(encoding="utf-8")
    assert 'id="capacity-warning"' in text and "kbsync rebase" in text


def test_relative_norms_are_those_of_the_rebuilt_model(applied):
    from kbsync.editing.rebuild import load_at
    from kbsync.lm import arch
    from kbsync.lm.load import resolve_model_path
    from kbsync.report.norms import base_matrices

    ids = three_snapshots(applied)
    data = read_report_data(applied)
    assert data.norms_note is None and data.layers
    base, _ = load_at(applied, None, with_editor=False)
    # the base: the matrices read from safetensors are the model's, bit for bit (ratio 1.0)
    read = base_matrices(resolve_model_path(applied.config.model), data.layers)
    for layer in data.layers:
        assert torch.equal(read[layer], arch.weight_of(base.model, layer))
    norms = {s.id: s.norms for s in data.snapshots}
    for sid in ids:
        lm, _ = load_at(applied, sid, with_editor=False)
        for layer in data.layers:
            want = (torch.linalg.norm(arch.weight_of(lm.model, layer).double())
                    / torch.linalg.norm(arch.weight_of(base.model, layer).double()))
            assert norms[sid][layer] == pytest.approx(float(want), rel=1e-5)
            assert abs(norms[sid][layer] - 1.0) > 1e-3      # an edit changed every layer
    assert norms[ids[2]] == norms[ids[0]]                    # a rollback restores the norms
    assert norms[ids[1]] != norms[ids[0]]
    page = Page(write_report(applied).read_text(encoding="utf-8"))
    assert page.tables["norms"]["base"] == {str(l): "1.0" for l in data.layers}
    assert page.tables["norms"][ids[1]] == {str(l): repr(v) for l, v in norms[ids[1]].items()}


def test_apply_records_edit_time_and_the_report_divides_it_per_edit(applied):
    events = [e for e in ledger_rows(applied)["events"] if e["kind"] == "run_committed"]
    seconds = events[-1]["detail"]["edit_seconds"]
    assert isinstance(seconds, float) and seconds > 0
    run = read_report_data(applied, norms=False).runs[-1]
    assert run.counts == {"applied": len(FACTS), "rejected": 0, "known": 0, "skipped": 0}
    assert run.seconds_per_edit == pytest.approx(seconds / len(FACTS))


def test_empty_project_says_so_and_creates_no_ledger(tmp_path, tiny_llama_dir):
    project = make_project(tmp_path / "proj", tiny_llama_dir)
    index = write_report(project)
    text = index.read_text(encoding="utf-8")
    assert "No snapshots yet" in text and 'id="empty"' in text
    assert list(index.parent.glob("*.png")) == []
    assert not (project.kbsync_dir / "ledger.db").exists()
    result = cli(project, "report")
    assert result.exit_code == 0, result.output
    assert "No snapshots yet" in result.stderr and str(index) in result.stdout


def test_runs_without_snapshots_still_plot_their_edits(tmp_path, tiny_llama_dir):
    project = make_project(tmp_path / "proj", tiny_llama_dir)
    with project.ledger() as ledger:
        run = ledger.start_run("apply", editor="memit")
        ledger.record_edit(run, key("Danube"), "add", "rejected", batch=1)
        ledger.event(run, "run_committed", edit_seconds=2.0)
    index = write_report(project)
    assert {p.name for p in index.parent.glob("*.png")} == {"edits.png", "seconds.png"}
    page = Page(index.read_text(encoding="utf-8"))
    assert "No snapshots yet" in index.read_text() and run in page.tables["runs"]


def test_ledger_text_is_escaped(applied):
    with applied.ledger() as ledger:
        ledger.start_run("<script>alert(1)</script>", run_id="<b>&run</b>", editor='"x"')
    text = write_report(applied).read_text(encoding="utf-8")
    assert "<script>" not in text and "<b>&run" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "&lt;b&gt;&amp;run" in text


def test_missing_model_leaves_a_note_not_a_crash(applied, tmp_path):
    config = yaml.safe_load(applied.config_path.read_text())
    config["model"] = str(tmp_path / "gone")
    applied.config_path.write_text(yaml.safe_dump(config))
    index = write_report(Project(applied.root))
    text = index.read_text(encoding="utf-8")
    assert "relative norms unavailable" in text
    assert {p.name for p in index.parent.glob("*.png")} == FIGURES - {"norms.png"}


def test_cli_report_out_dir_and_json(applied, tmp_path):
    out = tmp_path / "out"
    result = cli(applied, "report", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["type"] == "report" and Path(summary["index"]) == out / "index.html"
    assert set(summary["figures"]) == FIGURES and summary["snapshots"] == 1
    assert all((out / name).is_file() for name in summary["figures"])
    assert not (applied.kbsync_dir / "report").exists()
    assert "  report " in cli(applied, "--help").stdout


def test_report_data_json_has_no_nan_tokens(applied):
    text = json.dumps(read_report_data(applied).to_dict(), allow_nan=False)
    assert not math.isnan(json.loads(text)["snapshots"][0]["gates"]["efficacy"]["value"])
