"""A real package (issue 21): `kbsync log` ids and prefixes, --limit, `ask` with several
prompts (-f, --json).

CPU only, tiny random Llama (tests/kbproject.py); the one apply is the session's
`applied` project (tests/conftest.py)."""

from __future__ import annotations

import json

from kbproject import FACTS, cli, json_lines, make_project, prompt
from kbsync.history import abbreviations, ask_many, log, read_prompts
from kbsync.store.ledger import Ledger
from kbsync.store.snapshots import SnapshotStore
from ux_fixtures import _normal_verbosity  # noqa: F401  (autouse)


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
