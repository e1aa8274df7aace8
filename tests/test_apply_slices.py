"""A big apply in slices (`--max-edits N`) and the batch size an editor brings when
kbsync.yaml sets none (issue 22, item 6), on the tiny random Llama."""

from __future__ import annotations

from kbproject import (FACTS, applied_objects, cli, json_lines, key, make_project,
                       register_broken)
from kbsync.apply import apply
from kbsync.editing.registry import EDITORS, make_editor
from kbsync.project import compute_plan
from kbsync.store.ledger import Ledger
from kbsync.testing import TINY_HPARAMS, tiny_config


def events(project, kind: str) -> list[dict]:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return [e["detail"] for e in ledger.rows("events") if e["kind"] == kind]


def test_max_edits_applies_a_slice_and_the_next_run_the_rest(tmp_path, tiny_llama_dir):
    project = make_project(tmp_path / "proj", tiny_llama_dir, batch_size=1)
    planned = [r.fact_key for r in compute_plan(project).requests]
    first = apply(project, max_edits=1)
    assert first.applied == planned[:1] and first.deferred == planned[1:]
    assert list(applied_objects(project)) == planned[:1]
    # the deferred facts are planned again, nothing else
    assert [r.fact_key for r in compute_plan(project).requests] == planned[1:]
    (deferred,) = events(project, "edits_deferred")
    assert deferred == {"keys": planned[1:], "max_edits": 1}
    assert events(project, "run_committed")[-1]["deferred"] == len(planned) - 1

    rest = apply(project)
    assert rest.applied == planned[1:] and not rest.deferred
    assert sorted(applied_objects(project)) == sorted(key(s) for s in FACTS)


def test_max_edits_on_the_command_line(tmp_path, tiny_llama_dir):
    project = make_project(tmp_path / "proj", tiny_llama_dir, batch_size=1)
    result = cli(project, "apply", "--auto-approve", "--max-edits", "2")
    assert result.exit_code == 0, result.output
    assert "2 left for the next run" in result.stdout
    summary = json_lines(cli(project, "apply", "--auto-approve", "--json").stdout)[-1]
    assert summary["type"] == "summary" and summary["applied"] == 2 and summary["deferred"] == 0
    assert cli(project, "apply", "--max-edits", "0").exit_code == 2      # a usage error


def test_an_unset_batch_size_is_the_editors_own(tmp_path, tiny_llama_dir, monkeypatch):
    from kbproject import Broken

    register_broken(monkeypatch)
    project = make_project(tmp_path / "proj", tiny_llama_dir, editor="broken", batch_size=None,
                           hparams={"break_mode": "skip", "bad_subjects": []})
    monkeypatch.setattr(Broken, "default_batch_size", 3, raising=False)
    apply(project)
    assert [len(specs) for specs, _ in Broken.CALLS] == [3, 1]        # 4 facts in 3 + 1


def test_every_editor_names_its_default_batch_size():
    config = tiny_config("llama", 600)
    for name in EDITORS:
        one_layer = name in ("rome", "grace", "wise", "case")
        editor = make_editor(name, config, {**TINY_HPARAMS, **({"layers": [2]} if one_layer else {})})
        assert editor.default_batch_size >= 1, name
    assert make_editor("ultraedit", config, TINY_HPARAMS).default_batch_size == 100
