"""A failing batch costs a bounded number of editor calls (issue 22, item 1): the edits
that fail their own check are dropped, the rest edited once more, the dropped ones retried
alone with more effort (then the fallback editor), and every attempt is in the ledger.

On the tiny random Llama of tests/kbproject.py, with the `broken` MEMIT whose `skip` mode
leaves Volga out of every solve, so Volga alone fails its own efficacy however it is tried.
"""

from __future__ import annotations

import json
import math

from kbproject import (FACTS, HPARAMS, Broken, answer, applied_objects, key, make_project,
                       register_broken)
from kbsync.apply import apply
from kbsync.history import audit_verify
from kbsync.lm.score import answers_match
from kbsync.store.ledger import Ledger
from kbsync.store.snapshots import SnapshotStore

ALL = sorted(FACTS)                  # plan order: by fact key
GOOD = [s for s in ALL if s != "Volga"]


def bisection_calls(n: int) -> int:
    """Editor calls of the bisection this replaces, for one bad fact among n (a power of
    two): the batch, then both halves at each of log2(n) levels."""
    return 1 + 2 * int(math.log2(n))


def events(project, kind: str) -> list[dict]:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return [e["detail"] for e in ledger.rows("events") if e["kind"] == kind]


def test_one_bad_fact_costs_one_retry_of_the_batch_and_one_lone_retry(tmp_path, tiny_llama_dir,
                                                                       monkeypatch):
    register_broken(monkeypatch)
    project = make_project(tmp_path / "proj", tiny_llama_dir, editor="broken",
                           hparams={"break_mode": "skip", "bad_subjects": ["Volga"]})
    result = apply(project)

    assert result.rejected == [key("Volga")]
    assert sorted(result.applied) == sorted(key(s) for s in GOOD)
    assert applied_objects(project) == {key(s): FACTS[s] for s in GOOD}
    for s in GOOD:
        assert answers_match(answer(project, s), FACTS[s]), s
    steps = HPARAMS["steps"]
    # the batch; the batch without Volga (committed); Volga alone with 2x the steps
    assert Broken.CALLS == [(ALL, steps), (GOOD, steps), (["Volga"], 2 * steps)]
    assert len(Broken.CALLS) < bisection_calls(len(FACTS)) == 5

    retries = events(project, "batch_retry")
    assert [(r["strategy"], r["keys"], r["of"], r["attempt"]) for r in retries] == [
        ("without_failing", [key(s) for s in GOOD], 1, 2), ("more_effort", [key("Volga")], 1, 3)]
    assert all("efficacy" in r["after_failed"] for r in retries)
    assert events(project, "run_committed")[-1]["editor_calls"] == 3
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        gates = ledger.rows("gates", "metric = 'efficacy'")
        edit = ledger.edits_for(key("Volga"))[-1]
    assert [(g["batch"], g["detail"]["attempt"], g["detail"]["strategy"], g["passed"])
            for g in gates] == [(1, 1, "batch", False), (2, 2, "without_failing", True),
                                (3, 3, "more_effort", False)]
    assert edit["status"] == "rejected" and edit["batch"] == 3 and "efficacy" in edit["reason"]
    # the committed snapshot is attempt 2's: its manifest names that batch
    manifest = SnapshotStore(project.kbsync_dir).read(result.snapshot)
    assert manifest.meta["batch"] == 2 and len(manifest.meta["edits"]) == 3
    assert audit_verify(project) == []


def test_a_fallback_editor_commits_what_the_editor_cannot(tmp_path, tiny_llama_dir, monkeypatch):
    register_broken(monkeypatch)
    project = make_project(tmp_path / "proj", tiny_llama_dir, editor="broken",
                           hparams={"break_mode": "skip", "bad_subjects": ["Volga"]},
                           retry={"effort": 2, "fallback_editor": "memit",
                                  # a copy: yaml.safe_dump writes a shared list as an alias
                                  "fallback_hparams": json.loads(json.dumps(HPARAMS))})
    result = apply(project)

    assert not result.rejected and sorted(result.applied) == sorted(key(s) for s in FACTS)
    assert [r["strategy"] for r in events(project, "batch_retry")] == [
        "without_failing", "more_effort", "fallback"]
    store = SnapshotStore(project.kbsync_dir)
    assert store.read(result.snapshot).editor == "memit"        # Volga's snapshot
    assert store.read(store.read(result.snapshot).parent).editor == "broken"
    for s, o in FACTS.items():          # HEAD rebuilt from both editors' patches
        assert answers_match(answer(project, s), o), s
    assert audit_verify(project) == []


def test_a_big_batch_that_fails_a_gate_no_edit_owns_is_retried_in_parts(tmp_path, tiny_llama_dir,
                                                                        monkeypatch):
    """A blunt edit for Volga (30x its patch) fails the drift and KL gates, which no single
    edit owns: the batch of 4 is retried in parts of 2 (PART_SIZE, made small here), the
    part without Volga is committed at once, and only Volga's part goes edit by edit."""
    import kbsync.scheduler

    register_broken(monkeypatch)
    monkeypatch.setattr(kbsync.scheduler, "PART_SIZE", 2)
    project = make_project(tmp_path / "proj", tiny_llama_dir, editor="broken",
                           hparams={"break_mode": "scale", "scale": 30.0,
                                    "bad_subjects": ["Volga"]})
    result = apply(project)

    assert result.rejected == [key("Volga")]
    assert sorted(result.applied) == sorted(key(s) for s in GOOD)
    parts = [ALL[:2], ALL[2:]]
    assert "Volga" in parts[1]
    lone = [[s] for s in parts[1]]
    assert [subjects for subjects, _ in Broken.CALLS] == [ALL, *parts, *lone]
    retries = events(project, "batch_retry")
    assert [(r["strategy"], r["of"]) for r in retries] == [
        ("part", 1), ("part", 1), ("one_by_one", 1), ("one_by_one", 1)]
    assert {"ppl_drift"} <= set(retries[0]["after_failed"])
    assert audit_verify(project) == []
