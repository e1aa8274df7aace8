"""Drift refresh on a tiny random Llama: `plan --refresh`, `apply --refresh`,
`refresh --check`.

Drift is made the way it happens for real: a later edit breaks a committed fact. The
knowledge base gets a second fact with its own id on the same question ("The river
Danube" -> League, while Danube/R1 says British), applied under gates loose enough to let
it through (no retention sample, no KL bound: the broken fact's prompt is one of the
unrelated probes; a looser perplexity bound). The model then answers League, so
Danube/R1, still committed in the applied state, has drifted, and only probing the model
can tell.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kbproject import (FACTS, NEW, RIVER, answer, cli, head, key, latest_edit, runs,
                       write_config, write_facts)
from kbsync.apply import apply
from kbsync.history import audit_verify
from kbsync.lm.score import answers_match
from kbsync.plan.plan import Plan
from kbsync.project import Project, compute_plan
from kbsync.store.ledger import Ledger
from kbsync.sync.refresh import committed_keys, refresh

# two edits pulling one prompt two ways cost the tiny model some perplexity (measured:
# +0.15 after the edit back), more than the default 0.1 drift bound
LOOSE = dict(retention_sample=0, kl_max=1e9, locality_min=0.0, ppl_drift_max=1.0)
RIVAL = {"id": "danube-2", "subject": "Danube", "relation": RIVER, "object": NEW}


@pytest.fixture
def drifted(applied):
    """The applied project after the rival edit: Danube/R1 committed but no longer answered."""
    write_config(applied.root, Path(applied.config.model), gates=LOOSE)
    project = Project(applied.root)
    write_facts(project.root, FACTS, extra=[RIVAL])
    result = apply(project)
    assert result.applied == ["danube-2"]
    assert answers_match(answer(project, "Danube"), NEW)
    return project


def ledger_seq(project: Project) -> int:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return ledger.head_seq()


def test_no_drift_right_after_apply(applied):
    report = refresh(applied)
    assert (report.probed, report.drifted) == (len(FACTS), [])
    done = cli(applied, "refresh", "--check")
    assert done.exit_code == 0, done.output
    assert f"{len(FACTS)} committed fact(s) probed, 0 drifted" in done.stdout


def test_refresh_finds_the_fact_a_later_edit_broke_and_changes_nothing(drifted):
    before = (head(drifted), ledger_seq(drifted))
    report = refresh(drifted)
    assert report.snapshot == head(drifted)
    assert report.probed == len(FACTS) + 1                       # the rival is committed too
    found = {d.key: d for d in report.drifted}
    assert key("Danube") in found and "danube-2" not in found
    assert found[key("Danube")].object == FACTS["Danube"]
    assert answers_match(found[key("Danube")].answer, NEW)
    assert set(found) <= {key(s) for s in FACTS}

    # CLI: --check exits 2 (drift found, for CI), plain refresh 0; --json is one document
    check = cli(drifted, "refresh", "--check")
    assert check.exit_code == 2, check.output
    assert f"~ drift {key('Danube')}: British" in check.stdout
    assert cli(drifted, "refresh").exit_code == 0
    data = json.loads(cli(drifted, "refresh", "--json").stdout)
    assert data["type"] == "refresh" and key("Danube") in [d["key"] for d in data["drift"]]
    assert (head(drifted), ledger_seq(drifted)) == before        # refresh never edits


def test_plan_refresh_marks_drift_and_plain_plan_cannot_see_it(drifted, tmp_path):
    assert compute_plan(drifted).requests == []                   # the diff is clean
    plan = compute_plan(drifted, refresh=True)
    drift = [r for r in plan.requests if r.reason == "drift"]
    assert key("Danube") in [r.fact_key for r in drift]
    r = next(r for r in drift if r.fact_key == key("Danube"))
    assert (r.op, r.old_object, r.new_object) == ("update", "British", "British")
    assert answers_match(r.observed, NEW)
    assert plan.refresh == {"snapshot": head(drifted), "probed": len(FACTS) + 1,
                            "drifted": len(drift)}
    assert plan.summary()["drift"] == len(drift) and plan.format_version.startswith("1.")

    done = cli(drifted, "plan", "--refresh", "-o", str(tmp_path / "plan.json"),
               "--detailed-exitcode")
    assert done.exit_code == 2, done.output
    assert f"~ drift  {key('Danube')}: British (the model answers" in done.stdout
    assert "drifted)" in done.stdout
    saved = Plan.from_json((tmp_path / "plan.json").read_text())
    assert [r.fact_key for r in saved.requests if r.reason == "drift"] == \
        [r.fact_key for r in drift]
    assert cli(drifted, "plan", "--refresh", "--from", "HEAD").exit_code == 1


def test_apply_refresh_edits_the_drifted_fact_back_and_records_drift(drifted):
    events = []
    result = apply(drifted, refresh=True, emit=events.append)
    assert key("Danube") in result.applied
    assert answers_match(answer(drifted, "Danube"), FACTS["Danube"])
    edit = latest_edit(drifted, key("Danube"))
    assert (edit["status"], edit["reason"]) == ("applied", "drift")
    run = runs(drifted)[-1]
    assert run["outcome"] == "run_committed"
    assert [r["reason"] for r in run["plan_json"]["requests"]
            if r["fact_key"] == key("Danube")] == ["drift"]
    with Ledger(drifted.kbsync_dir / "ledger.db") as ledger:
        found = [e for e in ledger.rows("events", "kind = ?", ["drift_found"])]
    assert found and key("Danube") in found[-1]["detail"]["keys"]
    kinds = [e["type"] for e in events]
    assert "refresh" in kinds and kinds.index("refresh") < kinds.index("plan")
    assert any(e["type"] == "progress" and e["phase"] == "refresh" for e in events)
    assert audit_verify(drifted) == []


def test_only_facts_files_and_applied_state_agree_on_are_probed(applied):
    """A fact the files change is the diff's business: it is planned as an update, never
    also as drift, and is not probed."""
    write_facts(applied.root, {**FACTS, "Danube": NEW, "Nile": "University"})
    from kbsync.facts.load import load_knowledge_base
    from kbsync.store.state import read_applied_state

    desired = load_knowledge_base(applied.facts_dir)
    agreed = committed_keys(desired, read_applied_state(applied.kbsync_dir).kb)
    assert agreed == sorted(key(s) for s in FACTS if s != "Danube")
    plan = compute_plan(applied, refresh=True)
    assert plan.refresh["probed"] == len(agreed) and plan.refresh["drifted"] == 0
    assert sorted((r.op, r.fact_key, r.reason) for r in plan.requests) == [
        ("add", key("Nile"), "diff"), ("update", key("Danube"), "diff")]
