"""CLI foundation: init, plan, error handling, config and project discovery."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from kbsync import __version__
from kbsync.cli.main import main
from kbsync.config import Config, Gates, Retry, load_config, render_config
from kbsync.errors import ConfigError, KbsyncError
from kbsync.facts import load_knowledge_base
from kbsync.plan.plan import Plan
from kbsync.project import compute_plan, default_fallback, find_project, init_project

from kbsync.facts.load import load_knowledge_base as _load
from kbsync.project import demo_facts_dir

DEMO_FACTS = len(_load(demo_facts_dir()).facts)   # the example knowledge base shipped in facts/demo


def run(*args: str, cwd: Path | None = None):
    runner = CliRunner()
    argv = (["-C", str(cwd)] if cwd else []) + list(args)
    return runner.invoke(main, argv, catch_exceptions=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    result = run("init", str(tmp_path / "demo"))
    assert result.exit_code == 0, result.output
    return tmp_path / "demo"


def demo_kb(repo_root: Path):
    return load_knowledge_base(repo_root / "facts" / "demo")


# ---------------------------------------------------------------- init

def test_init_creates_a_project(project, repo_root):
    assert (project / "kbsync.yaml").is_file() and (project / ".kbsync").is_dir()
    assert load_knowledge_base(project / "facts") == demo_kb(repo_root)
    # Config()'s defaults, but a side memory takes the facts past the capacity wall
    assert load_config(project / "kbsync.yaml") == Config(retry=Retry(fallback_editor="grace"))


def test_init_records_model_and_editor(tmp_path):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    result = run("init", "p", "--model", "models/tiny", "--editor", "memit", cwd=tmp_path)
    assert result.exit_code == 0, result.output
    config = load_config(tmp_path / "p" / "kbsync.yaml")
    assert config.model == str((tmp_path / "models" / "tiny").resolve())
    assert config.editor == "memit" and config.retry.fallback_editor == "grace"


@pytest.mark.parametrize("editor, fallback", [("alphaedit", "grace"), ("ultraedit", "grace"),
                                               ("grace", None), ("wise", None), ("case", None),
                                               ("no-such-editor", None)])
def test_init_names_a_side_memory_fallback_for_weight_editors(editor, fallback):
    assert default_fallback(editor) == fallback


def test_init_refuses_an_existing_project(project):
    before = (project / "kbsync.yaml").read_text()
    result = run("init", str(project))
    assert result.exit_code == 1
    assert "already a kbsync project" in result.stderr
    assert (project / "kbsync.yaml").read_text() == before


def test_init_refuses_existing_facts(tmp_path):
    (tmp_path / "facts").mkdir()
    (tmp_path / "facts" / "mine.yaml").write_text("")
    with pytest.raises(KbsyncError, match="not empty"):
        init_project(tmp_path)
    assert not (tmp_path / "kbsync.yaml").exists()


# ---------------------------------------------------------------- plan

def test_plan_json_lists_every_demo_fact_as_add(project, repo_root):
    result = run("plan", "--json", cwd=project)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)  # stdout holds exactly one JSON document
    keys = {r["fact_key"] for r in data["requests"]}
    assert keys == set(demo_kb(repo_root).facts)
    assert {r["op"] for r in data["requests"]} == {"add"}
    assert data["summary"] == {"add": DEMO_FACTS, "change": 0, "remove": 0}
    assert (data["base_serial"], data["base_snapshot"]) == (0, None)
    assert data["facts_hash"] == demo_kb(repo_root).content_hash()
    assert data["facts_dir"] == "facts"


def test_plan_human_output(project):
    result = run("plan", cwd=project)
    lines = result.stdout.splitlines()
    assert result.exit_code == 0
    assert sum(line.startswith("+ add  ") for line in lines) == DEMO_FACTS
    assert lines[-1] == f"Plan: {DEMO_FACTS} to add, 0 to change, 0 to remove."


def test_detailed_exitcode(project, repo_root):
    assert run("plan", "--detailed-exitcode", cwd=project).exit_code == 2
    commit_as_applied(project, demo_kb(repo_root))
    result = run("plan", "--detailed-exitcode", cwd=project)
    assert result.exit_code == 0 and result.stdout.strip() == "No changes."


def commit_as_applied(project: Path, kb) -> None:
    """Make `kb` the applied state through the store's own API."""
    from kbsync.store.manifest import Manifest
    from kbsync.store.snapshots import SnapshotStore

    store = SnapshotStore(project / ".kbsync")
    facts = store.objects.put_text(kb.to_json())
    sid = store.write(Manifest(parent=None, serial=1, base_model="fp", editor="ft",
                               facts=facts, facts_hash=kb.content_hash()))
    store.set_head(sid)


def test_plan_against_applied_state(project, repo_root):
    kb = demo_kb(repo_root)
    commit_as_applied(project, kb)
    demo = project / "facts" / "demo.yaml"
    first = sorted(kb.facts.values(), key=lambda f: f.key)[0]
    text = demo.read_text()
    demo.write_text(text.replace(f"object: {first.object}\n", "object: Atlantis\n", 1))
    plan = compute_plan(find_project(project))
    assert plan.base_serial == 1 and plan.base_snapshot is not None
    assert [(r.op, r.new_object) for r in plan.requests] == [("update", "Atlantis")]


def test_plan_out_file(project):
    result = run("plan", "-o", "saved.json", cwd=project)
    assert result.exit_code == 0 and "Saved the plan to saved.json" in result.stdout
    plan = Plan.from_json((project / "saved.json").read_text())
    assert plan.summary()["add"] == DEMO_FACTS


def test_broken_yaml_exits_1_with_location(project):
    (project / "facts" / "broken.yaml").write_text("facts:\n  - subject: [A\n    relation: P17\n")
    result = run("plan", cwd=project)
    assert result.exit_code == 1
    assert f"{project.resolve() / 'facts' / 'broken.yaml'}:3:13: invalid YAML" in result.stderr
    assert result.stdout == ""
    result = run("plan", "--json", cwd=project)
    error = json.loads(result.stdout)
    assert result.exit_code == 1 and error["error"] == "FactsError" and error["line"] == 3
    assert "invalid YAML" in result.stderr


def test_not_a_project(tmp_path):
    result = run("plan", cwd=tmp_path)
    assert result.exit_code == 1 and "not a kbsync project" in result.stderr


def test_project_is_found_from_a_subfolder(project):
    result = run("plan", "--json", cwd=project / "facts")
    assert result.exit_code == 0 and json.loads(result.stdout)["facts_dir"] == "facts"


def test_version_and_help():
    assert run("--version").stdout.strip() == f"kbsync, version {__version__}"
    result = run("--help")
    assert result.exit_code == 0 and "plan" in result.stdout and "init" in result.stdout


def test_real_subprocess(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "kbsync.cli", "-C", str(tmp_path)]
    subprocess.run(command + ["init", "demo"], check=True, env=env, capture_output=True)
    done = subprocess.run(command + ["-C", "demo", "plan", "--json", "--detailed-exitcode"],
                          env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert json.loads(done.stdout)["summary"]["add"] == DEMO_FACTS


# ---------------------------------------------------------------- git flow

def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c",
                    "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args],
                   cwd=cwd, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_flow_plan_from_head(project, repo_root):
    git(project, "init", "-q")
    git(project, "add", ".")
    git(project, "commit", "-q", "-m", "demo facts")
    kb = demo_kb(repo_root)
    fact = sorted(kb.facts.values(), key=lambda f: f.key)[0]
    demo = project / "facts" / "demo.yaml"
    demo.write_text(demo.read_text().replace(f"object: {fact.object}\n", "object: Atlantis\n", 1))

    result = run("plan", "--from", "HEAD", "--detailed-exitcode", cwd=project)
    assert result.exit_code == 2, result.stderr
    changes = [line for line in result.stdout.splitlines() if line[:2] in ("+ ", "~ ", "- ")]
    assert changes == [f"~ update {fact.key}: {fact.object} -> Atlantis"]
    assert result.stdout.splitlines()[-1] == "Plan: 0 to add, 1 to change, 0 to remove."

    data = json.loads(run("plan", "--from", "HEAD", "--json", cwd=project).stdout)
    assert data["git"]["dirty"] is True and len(data["git"]["commit"]) == 40
    assert data["from_rev"] == "HEAD"


# ---------------------------------------------------------------- config

def test_config_defaults_and_render_round_trip(tmp_path):
    config = Config(model="/models/x: y", hparams={"layers": [4, 5]}, facts="no",
                    gates=Gates(kl_max=1))
    path = tmp_path / "kbsync.yaml"
    path.write_text(render_config(config))
    assert load_config(path) == config
    assert Config().gates.efficacy_min == 0.9 and Config().batch_size is None


@pytest.mark.parametrize("text, line, message", [
    ("editor: memit\nbatchsize: 3\n", 2, "unknown key `batchsize`"),
    ("gates:\n  efficacy_min: 2\n", 2, "gates.efficacy_min"),
    ("gates:\n  locality: 0.5\n", 2, "unknown key `locality`"),
    ("seed: abc\n", 1, "seed"),
    ("model: [a\n", 2, "invalid YAML"),
    ("facts: no\n", 1, "YAML reads `no` as a boolean"),
])
def test_config_errors(tmp_path, text, line, message):
    path = tmp_path / "kbsync.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == line and message in info.value.message
    assert info.value.file == str(path)


def test_config_error_through_the_cli(project):
    (project / "kbsync.yaml").write_text("edtor: rome\n")
    result = run("plan", cwd=project)
    assert result.exit_code == 1
    assert "kbsync.yaml:1:1: unknown key `edtor`" in result.stderr
    assert "did you mean `editor`?" in result.stderr


def test_every_command_defined_is_registered_once():
    """A command written in a kbsync.cli module but left out of main.COMMANDS (or listed
    twice) fails here, not in a user's shell."""
    import importlib
    import pkgutil

    import click

    import kbsync.cli
    from kbsync.cli.main import COMMANDS

    defined = set()
    for info in pkgutil.iter_modules(kbsync.cli.__path__):
        if info.name not in ("main", "__main__"):
            module = importlib.import_module(f"kbsync.cli.{info.name}")
            defined |= {obj for obj in vars(module).values() if isinstance(obj, click.Command)}
    subcommands = {c for g in defined if isinstance(g, click.Group) for c in g.commands.values()}
    assert len(COMMANDS) == len(set(COMMANDS))
    assert defined - subcommands == set(COMMANDS)
    assert set(main.commands.values()) == set(COMMANDS)
