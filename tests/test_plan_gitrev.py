"""Facts under git: git_info and facts_at_revision."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from kbsync.errors import FactsError, KbsyncError
from kbsync.facts import load_knowledge_base
from kbsync.facts.schema import KnowledgeBase
from kbsync.plan.gitrev import facts_at_revision, git_info

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")

REL = 'relations:\n  P17: {label: country, templates: ["{subject} is in"]}\n'


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", "-c",
         "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null", *args],
        cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path, write_files) -> Path:
    write_files({"project/facts/relations.yaml": REL,
                 "project/facts/sub/a.yaml": "facts:\n  - {subject: A, relation: P17, object: x}\n",
                 "project/facts/b.ttl": "", "project/facts/.hidden.yaml": "x: [",
                 "other/outside.yaml": "x: ["})
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "one")
    return tmp_path


def test_facts_at_revision_equals_the_committed_facts(repo):
    facts = repo / "project" / "facts"
    committed = load_knowledge_base(facts)
    (facts / "sub" / "a.yaml").write_text("facts:\n  - {subject: A, relation: P17, object: y}\n")
    assert facts_at_revision(facts, "HEAD") == committed
    assert load_knowledge_base(facts).facts["A/P17"].object == "y"


def test_revision_history_and_missing_folder(repo):
    facts = repo / "project" / "facts"
    (facts / "c.yaml").write_text("facts:\n  - {subject: C, relation: P17, object: z}\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "two")
    assert set(facts_at_revision(facts, "HEAD").facts) == {"A/P17", "C/P17"}
    assert set(facts_at_revision(facts, "HEAD~1").facts) == {"A/P17"}
    assert facts_at_revision(repo / "project" / "nothing-here", "HEAD") == KnowledgeBase()


def test_errors_point_at_rev_and_path(repo):
    facts = repo / "project" / "facts"
    (facts / "sub" / "a.yaml").write_text("facts:\n  - {subject: A, relation: P17, object: no}\n")
    git(repo, "commit", "-q", "-am", "broken")
    with pytest.raises(FactsError) as info:
        facts_at_revision(facts, "HEAD")
    assert info.value.file == "HEAD:project/facts/sub/a.yaml" and info.value.line == 2
    assert str(info.value).startswith("HEAD:project/facts/sub/a.yaml:2:")


def test_facts_path_may_be_a_single_file(repo):
    facts = repo / "project" / "facts" / "sub" / "a.yaml"
    (repo / "project" / "facts" / "sub" / "a.yaml").write_text("facts: []\n")
    with pytest.raises(FactsError, match="unknown relation") as info:
        facts_at_revision(facts, "HEAD")  # the file alone lacks relations.yaml
    assert info.value.file == "HEAD:project/facts/sub/a.yaml"


def test_unknown_revision_and_no_repository(repo, tmp_path_factory):
    with pytest.raises(KbsyncError, match="unknown git revision 'nope'"):
        facts_at_revision(repo / "project" / "facts", "nope")
    outside = tmp_path_factory.mktemp("plain")
    with pytest.raises(KbsyncError, match="not inside a git work tree"):
        facts_at_revision(outside, "HEAD")
    assert git_info(outside) is None


def test_git_info_commit_and_dirty(repo):
    facts = repo / "project" / "facts"
    info = git_info(facts)
    assert info == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}
    (repo / "other" / "elsewhere.txt").write_text("not facts")
    assert git_info(facts)["dirty"] is False  # only the facts folder counts
    (facts / "new.yaml").write_text("")
    assert git_info(facts)["dirty"] is True


def test_git_info_before_the_first_commit(tmp_path):
    git(tmp_path, "init", "-q")
    assert git_info(tmp_path) == {"commit": None, "dirty": True}
