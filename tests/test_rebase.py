"""`kbsync rebase` (kbsync/rebase.py) on a tiny random Llama project applied with MEMIT:
the snapshot it commits, the reference the next apply's cumulative gates measure
against, rollback past it, its capacity count, a kill inside it, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kbproject import FACTS, NEW, answer, applied_objects, cli, head, key, runs, write_facts
from kbsync.apply import apply
from kbsync.testing import TINY_HPARAMS
from kbsync.editing.rebuild import load_at
from kbsync.errors import KbsyncError
from kbsync.evaluate.drift import GATE_PASSAGES, reference_text
from kbsync.history import audit_verify, log, rollback
from kbsync.lm.score import answers_match, perplexity
from kbsync.project import Project
from kbsync.rebase import rebase
from kbsync.report.data import read_report_data
from kbsync.store.ledger import Ledger
from kbsync.store.manifest import REBASE
from kbsync.store.snapshots import SnapshotStore


def ppl_at(project: Project, snapshot: str | None) -> float:
    lm, _ = load_at(project, snapshot, with_editor=False)
    return perplexity(lm, reference_text(GATE_PASSAGES))


def gate_value(store: SnapshotStore, snapshot: str, metric: str = "ppl_drift") -> float:
    return store.read(snapshot).gates[metric]["value"]


def test_rebase_commits_head_as_the_gates_reference(applied):
    store = SnapshotStore(applied.kbsync_dir)
    before, answers = head(applied), {s: answer(applied, s) for s in FACTS}
    result = rebase(applied)
    assert result["changed"] and result["rebase_of"] == before == result["of"]
    sid = head(applied)
    assert sid == result["snapshot"] != before
    made = store.read(sid)
    assert made.parent == before and made.patch is None and made.checkpoint is None
    assert made.facts == store.read(before).facts and made.meta[REBASE]["facts"] == len(FACTS)
    # what it accepted is what the drift gate of HEAD's batch measured (same model, text)
    assert result["ppl_drift"] == pytest.approx(gate_value(store, before), abs=1e-6)
    assert result["ppl_drift_from_base"] == result["ppl_drift"]        # first rebase
    # the model and the facts are unchanged; the history shows it; the ledger is whole
    assert {s: answer(applied, s) for s in FACTS} == answers
    assert applied_objects(applied) == {key(s): o for s, o in FACTS.items()}
    assert runs(applied)[-1]["command"] == "rebase"
    assert runs(applied)[-1]["outcome"] == "run_committed"
    assert next(e for e in log(applied) if e["kind"] == "snapshot")["rebase_of"] == before
    assert audit_verify(applied) == []
    assert store.gate_base(sid) == sid
    # through the chain's checkpoints = replaying it, bit for bit
    fast, _ = load_at(applied, sid, with_editor=False)
    slow, _ = load_at(applied, sid, with_editor=False, checkpoints=False)
    assert all(torch.equal(a, b) for a, b in zip(fast.model.state_dict().values(),
                                                 slow.model.state_dict().values()))
    # nothing edited since: a second rebase changes nothing
    again = rebase(applied)
    assert not again["changed"] and head(applied) == sid and len(runs(applied)) == 2


def test_apply_after_rebase_measures_drift_against_it_and_rollback_past_it(applied):
    store = SnapshotStore(applied.kbsync_dir)
    first = head(applied)
    sid = rebase(applied)["snapshot"]
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    update = apply(applied)
    assert update.applied == [key("Danube")]
    manifest = store.read(update.snapshot)
    assert manifest.meta["gate_base"] == sid and store.gate_base(update.snapshot) == sid
    ppl_new, ppl_rebase, ppl_base = (ppl_at(applied, s) for s in (update.snapshot, sid, None))
    assert ppl_rebase != ppl_base                      # MEMIT moved the reference text
    assert gate_value(store, update.snapshot) == pytest.approx(ppl_new / ppl_rebase - 1,
                                                               abs=1e-6)
    # the report's capacity counts the facts since the rebase, not the 4 before it
    assert read_report_data(applied, norms=False).capacity["facts"] == 1
    # a rollback past the rebase brings the base model back as the reference
    rollback(applied, first[:12])
    assert store.gate_base(head(applied)) is None
    rollback(applied, update.snapshot[:12])
    assert store.gate_base(head(applied)) == sid


def test_rebase_needs_a_head(tmp_path, tiny_llama_dir):
    from kbproject import make_project

    project = make_project(tmp_path / "proj", tiny_llama_dir)
    with pytest.raises(KbsyncError, match="nothing is applied yet"):
        rebase(project)


def test_a_rebase_killed_after_its_commit_point_is_recorded_by_the_next_run(applied,
                                                                             monkeypatch):
    before = head(applied)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(Ledger, "record_snapshot", killed)
        with pytest.raises(KeyboardInterrupt):
            rebase(applied)
    sid = head(applied)
    assert sid != before                                 # HEAD moved, its rows did not
    again = rebase(applied)                              # recovery first, then nothing left
    assert not again["changed"] and again["snapshot"] == sid == head(applied)
    assert audit_verify(applied) == []
    assert runs(applied)[1]["command"] == "rebase"
    assert runs(applied)[1]["outcome"] == "run_interrupted"


def test_cli_rebase(applied):
    result = cli(applied, "rebase")
    assert result.exit_code == 0, result.stderr
    assert "a rebase on" in result.stdout and "perplexity drift" in result.stdout
    result = cli(applied, "rebase", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["changed"] is False
    assert "rebase on" in cli(applied, "log").stdout


# ------------------------------------------------------------------ past the wall

def spend_the_budget(project: Project, **retry) -> float:
    """Set ppl_drift_max so HEAD's drift (MEMIT's on the applied fixture) leaves 5 % of
    it (capacity: nearly spent), with `retry` settings; the drift."""
    from kbproject import GATES, HPARAMS, write_config

    drift = gate_value(SnapshotStore(project.kbsync_dir), head(project))
    assert drift > 0                   # MEMIT raised the reference text's perplexity
    write_config(project.root, Path(project.config.model), batch_size=4,
                 gates={**GATES, "ppl_drift_max": drift / 0.95}, hparams=HPARAMS,
                 retry=retry or None)
    return drift


def events(project: Project, kind: str) -> list[dict]:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return [e["detail"] for e in ledger.rows("events") if e["kind"] == kind]


GRACE = {"fallback_editor": "grace",
         "fallback_hparams": {**TINY_HPARAMS, "layers": [2], "steps": 80, "lr": 0.5, "eps": 0.5}}


def test_past_the_wall_the_batches_go_to_the_fallback_editor(applied):
    spend_the_budget(applied, **GRACE)
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    project = Project(applied.root)
    result = apply(project)
    assert result.applied == [key("Danube")] and not result.rejected
    store = SnapshotStore(project.kbsync_dir)
    assert store.read(result.snapshot).editor == "grace"   # no MEMIT attempt first
    assert events(project, "past_the_wall") == [{"editor": "grace"}]
    assert events(project, "batch_retry") == []
    assert answers_match(answer(project, "Danube"), NEW)


def test_past_the_wall_the_batches_take_the_fallbacks_own_size(applied, monkeypatch):
    from kbsync.editing.side.grace import GRACE as GraceEditor

    spend_the_budget(applied, **GRACE)                      # kbsync.yaml: batch_size 4
    monkeypatch.setattr(GraceEditor, "default_batch_size", 2)
    write_facts(applied.root, {**FACTS, "Danube": NEW, "Volga": "November", "Rhine": "British"})
    seen: list[dict] = []
    result = apply(Project(applied.root), emit=seen.append)
    firsts = [e["size"] for e in seen if e["type"] == "batch_start" and e["attempt"] == 1]
    assert firsts[:2] == [2, 1]                 # 3 changes in GRACE's batches, not one of 4
    assert len(result.applied) + len(result.rejected) == 3


def test_without_a_fallback_or_after_a_rebase_the_editor_goes_on(applied):
    spend_the_budget(applied)                                # no fallback named
    write_facts(applied.root, {**FACTS, "Danube": NEW})
    project = Project(applied.root)
    apply(project)
    assert events(project, "past_the_wall") == []
    assert SnapshotStore(project.kbsync_dir).read(head(project)).editor == "memit"


def test_a_rebase_gives_the_budget_back_to_the_editor(applied):
    spend_the_budget(applied, **GRACE)
    project = Project(applied.root)
    rebase(project)
    write_facts(project.root, {**FACTS, "Danube": NEW})
    result = apply(project)
    assert events(project, "past_the_wall") == []
    assert SnapshotStore(project.kbsync_dir).read(result.snapshot).editor == "memit"


@pytest.mark.parametrize("fallback, message", [("grace", "retry.fallback_editor grace: layers"),
                                               ("memit", "is the editor itself")])
def test_a_fallback_that_cannot_work_is_a_config_error_before_the_run(tmp_path, tiny_llama_dir,
                                                                      fallback, message):
    from kbproject import make_project
    from kbsync.errors import ConfigError
    from kbsync.retry import RetryEditors

    # GRACE's Llama default is layer 27; the tiny Llama has 4. The project's editor is memit.
    project = make_project(tmp_path / "proj", tiny_llama_dir, retry={"fallback_editor": fallback})
    lm, editor = load_at(project, None)
    with pytest.raises(ConfigError, match=message):
        RetryEditors(project, lm, editor)
    write_facts(project.root, FACTS)
    with pytest.raises(ConfigError, match=message) as err:
        apply(project)      # refused before any batch: no run, no snapshot
    assert "leave it unset" in err.value.hint
    assert SnapshotStore(project.kbsync_dir).head() is None
    assert events(project, "run_started") == []
