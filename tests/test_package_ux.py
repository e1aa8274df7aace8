"""A real package (issue 21): quiet output, `kbsync log` ids and prefixes, `ask` with
several prompts, the ledger in Datasette, the README's demo count.

CPU only, tiny random Llama (tests/kbproject.py); the one apply is the session's
`applied` project (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import tomllib
import warnings
from pathlib import Path

import pytest
import yaml

from kbproject import FACTS, cli, json_lines, key, make_project, prompt
from kbsync import output
from kbsync.history import abbreviations, ask_many, datasette_metadata_path, log, read_prompts
from kbsync.store.ledger import Ledger
from kbsync.store.snapshots import SnapshotStore

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def library_logging():
    """Put transformers' and huggingface_hub's logging and progress bars back afterwards,
    so a test that silences them leaves the next test as it found it."""
    from huggingface_hub.utils import are_progress_bars_disabled, enable_progress_bars
    from huggingface_hub.utils import logging as hub_logging
    from transformers.utils import logging as hf_logging

    before = (hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(),
              hub_logging.get_verbosity(), are_progress_bars_disabled())
    yield hf_logging, hub_logging
    hf_logging.set_verbosity(before[0])
    (hf_logging.enable_progress_bar if before[1] else hf_logging.disable_progress_bar)()
    hub_logging.set_verbosity(before[2])
    if not before[3]:
        enable_progress_bars()
    output.set_verbosity(output.NORMAL)


@pytest.fixture(autouse=True)
def _normal_verbosity():
    output.set_verbosity(output.NORMAL)
    yield
    output.set_verbosity(output.NORMAL)


# ------------------------------------------------------------------ (a) quiet output

def test_loading_a_model_silences_transformers_and_hub(tiny_llama_dir, library_logging, capfd):
    import logging

    from huggingface_hub.utils import are_progress_bars_disabled

    from kbsync.lm.load import load_model

    hf_logging, hub_logging = library_logging
    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    capfd.readouterr()
    load_model(tiny_llama_dir, device="cpu")
    assert hf_logging.get_verbosity() == logging.ERROR
    assert hub_logging.get_verbosity() == logging.ERROR
    assert not hf_logging.is_progress_bar_enabled() and are_progress_bars_disabled()
    err = capfd.readouterr().err
    assert "Loading weights" not in err and "it/s" not in err


def test_verbose_leaves_library_logging_alone(tiny_llama_dir, library_logging):
    import logging

    from kbsync.lm.load import load_model

    hf_logging, _ = library_logging
    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    output.set_verbosity(output.VERBOSE)
    load_model(tiny_llama_dir, device="cpu")
    assert hf_logging.get_verbosity() == logging.WARNING and hf_logging.is_progress_bar_enabled()


def test_importing_kbsync_touches_no_library_logging():
    """Silencing happens when a model loads, not at import (a fresh process: importing
    kbsync's modules leaves transformers' defaults)."""
    import subprocess
    import sys

    code = ("import kbsync.cli, kbsync.cli_model, kbsync.history, kbsync.lm.load, "
            "kbsync.editing.prefix\n"
            "from transformers.utils import logging as l\n"
            "print(l.get_verbosity(), l.is_progress_bar_enabled())")
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "OMP_NUM_THREADS": "1"}, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["30", "True"]          # logging.WARNING, bars on


def test_prefix_cache_passes_the_cache_by_the_name_transformers_takes():
    """kbsync/editing/prefix.py: `cache=` where the model's forward takes it (transformers
    5.x), so no `past_key_values is deprecated` FutureWarning."""
    import inspect

    import torch

    from kbsync.editing.prefix import PrefixRunner, cache_keyword, split_at_subject
    from kbsync.editing.request import EditSpec
    from kbsync.editing.targets import _rows
    from kbsync.lm.tokens import encode
    from kbsync.testing import tiny_model

    lm = tiny_model("llama")
    params = inspect.signature(type(lm.model.base_model).forward).parameters
    assert cache_keyword(lm.model.base_model) == ("cache" if "cache" in params
                                                  else "past_key_values")
    spec = EditSpec("The river {subject}", "Danube", "American")
    split = split_at_subject(encode(lm.tokenizer, *_rows([spec], ["{}", "One two. {}"])[:3]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            PrefixRunner(lm.model, split)()
    assert not [w for w in caught if "past_key_values" in str(w.message)], \
        [str(w.message) for w in caught]


def test_pytest_turns_warnings_from_kbsync_into_errors(pytestconfig):
    filters = pytestconfig.getini("filterwarnings")
    assert any(f.startswith("error:::kbsync") for f in filters), filters
    with pytest.raises(UserWarning, match="from kbsync"):
        warnings.warn_explicit("from kbsync", UserWarning, "load.py", 1, module="kbsync.lm.load")
    with pytest.raises(FutureWarning):
        warnings.warn("`past_key_values` is deprecated and will be removed", FutureWarning)


def test_quiet_and_verbose_are_global_options(tmp_path):
    assert cli(tmp_path, "--quiet", "--verbose", "editors").exit_code == 2
    assert cli(tmp_path, "--quiet", "editors").exit_code == 0
    assert output.verbosity() == output.QUIET
    assert cli(tmp_path, "editors").exit_code == 0          # each invocation sets it afresh
    assert output.verbosity() == output.NORMAL
    assert cli(tmp_path, "-v", "editors").exit_code == 0 and output.verbosity() == output.VERBOSE
    assert "--quiet" in cli(tmp_path, "--help").stdout


def _apply_events() -> list[dict]:
    return [{"type": "edits", "known": 1, "skipped": 0, "total": 2},
            {"type": "batch_start", "batch": 1, "size": 2, "keys": ["a", "b"]},
            {"type": "gates", "batch": 1, "checks": [{"metric": "efficacy", "passed": False}]},
            {"type": "rejected", "key": "a/R1", "failed": ["efficacy"]},
            {"type": "commit", "snapshot": "ab" * 32, "serial": 1, "edits": 1},
            {"type": "recovered", "run_id": "20261203T062915Z-1a2b3c4d"},
            {"type": "summary"}]


@pytest.mark.parametrize("level", [output.NORMAL, output.QUIET])
def test_quiet_hides_progress_lines_and_bars_but_not_rejections(level, capsys, monkeypatch):
    import tqdm

    from kbsync.cli_model import _printer
    from kbsync.cli_sync import refresh_progress

    bars = []
    monkeypatch.setattr(tqdm, "tqdm", lambda *a, **k: bars.append(k) or _NoBar())
    output.set_verbosity(level)
    emit = _printer(False)
    for event in _apply_events():
        emit(event)
    refresh_progress()(1, 2)
    err = capsys.readouterr().err
    assert "rejected a/R1: gates failed (efficacy)" in err
    assert "recorded interrupted run 20261203T062915Z-1a2b3c4d" in err   # the whole id
    if level == output.QUIET:
        assert "batch 1" not in err and "committed snapshot" not in err and not bars
    else:
        assert "batch 1: editing 2 fact(s)" in err and "committed snapshot" in err
        assert [b["desc"] for b in bars] == ["edits", "refresh"]


class _NoBar:
    n = 0

    def update(self, n=1):
        self.n += n

    def close(self):
        pass


# ------------------------------------------------------------------ (b) kbsync log

def test_abbreviations_are_the_shortest_unique_prefixes():
    ids = ["abcdef0123", "abcdef0199", "abd0000000", "ffff000000"]
    assert abbreviations(ids, 4) == {"abcdef0123": "abcdef012", "abcdef0199": "abcdef019",
                                     "abd0000000": "abd0", "ffff000000": "ffff"}
    assert abbreviations(["abc", "abcd"], 2) == {"abc": "abc", "abcd": "abcd"}
    assert abbreviations([]) == {}


def _two_runs_a_minute_apart(project) -> list[str]:
    ids = ["20200101T120000Z-1a2b3c4d", "20200101T120100Z-5e6f7a8b"]
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        for run_id in ids:
            ledger.start_run("apply", run_id=run_id)
            ledger.event(run_id, "run_committed")
    return ids


def test_log_tells_runs_apart_and_limits(applied):
    ids = _two_runs_a_minute_apart(applied)
    result = cli(applied, "log")
    assert result.exit_code == 0, result.output
    for run_id in ids:
        assert sum(run_id in line for line in result.stdout.splitlines()) == 1, result.stdout
    snap = SnapshotStore(applied.kbsync_dir).head()
    assert f"snapshot {snap[:12]}" in result.stdout

    entries = json_lines(cli(applied, "log", "--json").stdout)
    assert len({e["short"] for e in entries}) == len(entries)       # every id told apart
    assert len(entries) == 4                                         # 3 runs, 1 snapshot
    limited = cli(applied, "log", "--limit", "2")
    assert limited.exit_code == 0 and len(limited.stdout.splitlines()) == 2
    assert [e["id"] for e in json_lines(cli(applied, "log", "-n", "1", "--json").stdout)] == \
        [entries[0]["id"]]
    assert cli(applied, "log", "--limit", "0").stdout == ""
    assert cli(applied, "log", "--limit", "-1").exit_code == 2
    assert [e["id"] for e in log(applied, limit=3)] == [e["id"] for e in entries[:3]]


def test_show_takes_unique_prefixes_and_names_the_ambiguous(applied):
    ids = _two_runs_a_minute_apart(applied)
    shown = json.loads(cli(applied, "show", "20200101T1201", "--json").stdout)
    assert shown["kind"] == "run" and shown["run"]["run_id"] == ids[1]
    assert json.loads(cli(applied, "show", ids[0].lower(), "--json").stdout)["run"]["run_id"] \
        == ids[0]

    result = cli(applied, "show", "20200101T12")
    assert result.exit_code == 1
    assert "ambiguous" in result.stderr and all(i in result.stderr for i in ids)

    snap = SnapshotStore(applied.kbsync_dir).head()
    short = next(e["short"] for e in log(applied) if e["kind"] == "snapshot")
    assert json.loads(cli(applied, "show", short, "--json").stdout)["id"] == snap
    # a prefix both a snapshot id and a run id start with is ambiguous, not the snapshot
    with Ledger(applied.kbsync_dir / "ledger.db") as ledger:
        ledger.start_run("apply", run_id=snap[:8] + "-twin")
    result = cli(applied, "show", snap[:7], "--json")
    assert result.exit_code == 1 and "ambiguous" in result.stderr
    assert f"snapshot {snap}" in result.stderr and f"run {snap[:8]}-twin" in result.stderr
    assert json.loads(result.stdout)["type"] == "error"

    missing = cli(applied, "show", "zzzz")
    assert missing.exit_code == 1 and "no snapshot or run matches" in missing.stderr


# ------------------------------------------------------------------ (c) ask, many prompts

def test_ask_answers_several_prompts_from_one_model_load(tmp_path, tiny_llama_dir, monkeypatch):
    import kbsync.editing.rebuild as rebuild

    project = make_project(tmp_path / "proj", tiny_llama_dir)
    loads = []
    real = rebuild.load_at
    monkeypatch.setattr(rebuild, "load_at", lambda *a, **k: loads.append(a) or real(*a, **k))
    subjects = list(FACTS)
    prompts_file = project.root / "prompts.txt"          # -f is relative to -C
    prompts_file.write_text("\n".join(prompt(s) for s in subjects[1:]) + "\n\n", encoding="utf-8")

    result = cli(project, "ask", prompt(subjects[0]), "-f", "prompts.txt", "--json")
    assert result.exit_code == 0, result.output
    answers = json_lines(result.stdout)
    assert [a["prompt"] for a in answers] == [prompt(s) for s in subjects]
    assert all(a["snapshot"] is None and isinstance(a["answer"], str) for a in answers)
    assert len(loads) == 1

    human = cli(project, "ask", "-f", str(prompts_file))
    assert human.exit_code == 0, human.output
    lines = human.stdout.splitlines()
    assert len(lines) == len(subjects) - 1
    assert all(line.startswith(prompt(s)) for line, s in zip(lines, subjects[1:]))
    assert len(loads) == 2

    assert cli(project, "ask").exit_code == 2                       # nothing to ask
    (project.root / "binary.txt").write_bytes(b"\xff\xfe\x00")
    bad = cli(project, "ask", "-f", "binary.txt")
    assert bad.exit_code == 1 and "not UTF-8" in bad.stderr and len(loads) == 2
    assert cli(project, "ask", "-f", "missing.txt").exit_code == 1
    assert [a["prompt"] for a in ask_many(project, ["a", "b"])] == ["a", "b"]


def test_read_prompts_skips_blank_lines_only():
    assert read_prompts("one \n\n  two\n# three\n   \n") == ["one", "  two", "# three"]


# ------------------------------------------------------------------ (d) Datasette

def _metadata() -> dict:
    return yaml.safe_load(datasette_metadata_path().read_text(encoding="utf-8"))


def _rejected_run(ledger_path: Path) -> str:
    """A run whose one edit the gates rejected, written as apply writes it."""
    with Ledger(ledger_path) as ledger:
        run = ledger.start_run("apply", editor="memit")
        ledger.record_edit(run, key("Nile"), "add", "planned", new_object="British")
        ledger.event(run, "batch_started", batch=1, size=1)
        ledger.record_gate(run, 1, "finite", 1.0, 1.0, True)
        ledger.record_gate(run, 1, "efficacy", 0.0, 1.0, False)
        ledger.record_gate(run, 1, "locality", 0.4, 0.6, False)
        ledger.record_edit(run, key("Nile"), "add", "rejected", new_object="British", batch=1,
                           reason="gates failed: efficacy, locality",
                           metrics={"efficacy": 0.0, "locality": 0.4})
        ledger.event(run, "run_failed")
    return run


def test_ledger_in_datasette_with_the_shipped_metadata(applied):
    pytest.importorskip("datasette")
    from datasette.app import Datasette

    db = applied.kbsync_dir / "ledger.db"
    rejected_run = _rejected_run(db)
    metadata = _metadata()
    queries = metadata["databases"]["ledger"]["queries"]
    assert {"facts_edited_per_run", "rejected_edits", "snapshots_over_time"} <= set(queries)
    ds = Datasette([str(db)], metadata=metadata)

    async def fetch(path: str):
        response = await ds.client.get(path)
        assert response.status_code == 200, (path, response.text[:500])
        return response.json()

    async def run_all() -> dict:
        got = {}
        for name in queries:
            got[name] = await fetch(f"/ledger/{name}.json?_shape=array&fact_key="
                                    + key("Danube").replace("/", "%2F"))
        got["_tables"] = await fetch("/ledger.json")
        return got

    got = asyncio.run(run_all())
    apply_run = next(r for r in got["facts_edited_per_run"] if r["edited"])
    assert apply_run["edited"] == len(FACTS) and apply_run["outcome"] == "run_committed"
    assert set(apply_run["edited_facts"].split(",")) == {key(s) for s in FACTS}
    failed = next(r for r in got["facts_edited_per_run"] if r["run_id"] == rejected_run)
    assert failed["rejected"] == 1 and failed["edited"] == 0 and failed["outcome"] == "run_failed"

    assert {(r["fact_key"], r["failed_gate"], r["value"], r["threshold"])
            for r in got["rejected_edits"]} == {(key("Nile"), "efficacy", 0.0, 1.0),
                                                (key("Nile"), "locality", 0.4, 0.6)}

    (snapshot,) = got["snapshots_over_time"]
    assert snapshot["snapshot_id"] == SnapshotStore(applied.kbsync_dir).head()
    assert snapshot["serial"] == 1 and snapshot["edits"] == snapshot["edits_so_far"] == len(FACTS)
    assert "efficacy=" in snapshot["gates"] and snapshot["command"] == "apply"

    history = got["fact_history"]
    assert [r["status"] for r in history][-1] == "applied"
    assert {r["op"] for r in history} == {"add"}

    # table and column descriptions reach Datasette
    assert ds.table_metadata("ledger", "edits")["columns"]["status"].startswith("planned")
    described = metadata["databases"]["ledger"]["tables"]
    assert set(described) == {t["name"] for t in got["_tables"]["tables"]}


def test_metadata_describes_every_ledger_column():
    from kbsync.store.ledger import SCHEMA

    tables = _metadata()["databases"]["ledger"]["tables"]
    assert set(tables) == set(SCHEMA)
    for table, columns in SCHEMA.items():
        described = set(tables[table]["columns"])
        assert described == set(columns) | {"seq", "at", "prev_hash", "row_hash"}, table


def test_metadata_ships_as_package_data_and_the_cli_prints_its_path(tmp_path):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    relative = datasette_metadata_path().relative_to(REPO / "kbsync").as_posix()
    patterns = project["tool"]["setuptools"]["package-data"]["kbsync"]
    assert any(fnmatch.fnmatch(relative, p) for p in patterns), (relative, patterns)
    assert any(d.startswith("datasette") for d in project["project"]["optional-dependencies"]["test"])

    result = cli(tmp_path, "ledger", "datasette-metadata")
    assert result.exit_code == 0 and Path(result.stdout.strip()) == datasette_metadata_path()
    shown = json.loads(cli(tmp_path, "ledger", "datasette-metadata", "--json").stdout)
    assert Path(shown["path"]).is_file()
    assert "datasette .kbsync/ledger.db -m" in (REPO / "README.md").read_text()


# ------------------------------------------------------------------ (e) README

def test_readme_counts_the_demo_facts():
    from kbsync.facts.load import load_knowledge_base
    from kbsync.project import demo_facts_dir

    stated = re.findall(r"(\d+) example facts", (REPO / "README.md").read_text())
    assert stated and {int(n) for n in stated} == {len(load_knowledge_base(demo_facts_dir()).facts)}
