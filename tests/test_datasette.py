"""A real package (issue 21): the ledger in Datasette (metadata, canned queries), the
README's demo count.

CPU only, tiny random Llama (tests/kbproject.py); the one apply is the session's
`applied` project (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from kbproject import FACTS, cli, key
from kbsync.history import datasette_metadata_path
from kbsync.store.ledger import Ledger
from kbsync.store.snapshots import SnapshotStore
from ux_fixtures import _normal_verbosity  # noqa: F401  (autouse)

REPO = Path(__file__).resolve().parents[1]


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
