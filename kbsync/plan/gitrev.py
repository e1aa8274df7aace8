"""Facts under git: which commit a plan was made from, and the facts at a revision.

Plain `git` subprocesses (no new dependency). The files at a revision are written to a
temporary folder and read by the normal loader, so errors point at `REV:path/file.yaml`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path, PurePosixPath

from kbsync.errors import FactsError, KbsyncError
from kbsync.facts.load import is_fact_file, load_knowledge_base
from kbsync.facts.schema import KnowledgeBase

__all__ = ["git_info", "facts_at_revision"]


def _git(args: list[str], cwd: Path, *, input: bytes | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not take the index lock from a concurrent git.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C"}
    try:
        return subprocess.run(["git", *args], cwd=cwd, input=input, capture_output=True,
                              env=env, check=check)
    except FileNotFoundError:
        raise KbsyncError("git is not installed (needed for --from)") from None
    except subprocess.CalledProcessError as err:
        detail = err.stderr.decode(errors="replace").strip().splitlines()
        raise KbsyncError(f"git {' '.join(args[:2])} failed: {detail[-1] if detail else err}") from None


def _existing(path: Path) -> Path:
    """The nearest existing folder at or above `path` (a deleted facts folder still has a
    history)."""
    path = path.resolve()
    while not path.is_dir():
        path = path.parent
    return path


def _toplevel(path: Path) -> Path | None:
    try:
        result = _git(["rev-parse", "--show-toplevel"], _existing(path), check=False)
    except KbsyncError:  # no git at all: not a work tree
        return None
    if result.returncode != 0:
        return None
    return Path(result.stdout.decode().strip()).resolve()


def git_info(facts_dir: Path | str) -> dict | None:
    """{"commit": HEAD sha or None, "dirty": whether the facts folder differs from it}, or
    None outside a git work tree."""
    facts_dir = Path(facts_dir).resolve()
    top = _toplevel(facts_dir)
    if top is None:
        return None
    head = _git(["rev-parse", "--verify", "-q", "HEAD"], top, check=False)
    commit = head.stdout.decode().strip() or None if head.returncode == 0 else None
    status = _git(["status", "--porcelain", "--untracked-files=all", "--",
                   _relative(facts_dir, top) or "."], top)
    return {"commit": commit, "dirty": commit is None or bool(status.stdout.strip())}


def facts_at_revision(facts_dir: Path | str, rev: str) -> KnowledgeBase:
    """The knowledge base stored in the facts folder at git revision `rev` (empty if the
    folder did not exist then)."""
    facts_dir = Path(facts_dir).resolve()
    top = _toplevel(facts_dir)
    if top is None:
        raise KbsyncError(f"{facts_dir} is not inside a git work tree; --from needs git",
                          hint="run `git init` and commit your facts, or drop --from")
    commit = _git(["rev-parse", "--verify", "-q", f"{rev}^{{commit}}"], top, check=False)
    if commit.returncode != 0:
        raise KbsyncError(f"unknown git revision {rev!r}",
                          hint="use a commit, branch or tag, e.g. HEAD or HEAD~1")
    sha = commit.stdout.decode().strip()
    prefix = _relative(facts_dir, top)
    blobs = _fact_blobs(top, sha, prefix)
    with tempfile.TemporaryDirectory(prefix="kbsync-rev-") as tmp:
        root = Path(tmp)
        shown = {}  # temporary file -> how errors should name it
        for (rel, repo_path, _), data in zip(blobs, _read_blobs(top, [b for *_, b in blobs])):
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            shown[str(target)] = f"{rev}:{repo_path}"
        try:
            return load_knowledge_base(root, cache=False)  # the working tree stays cached
        except FactsError as err:
            raise _relocate(err, shown) from None


def _relative(path: Path, top: Path) -> str:
    return path.relative_to(top).as_posix() if path != top else ""


def _fact_blobs(top: Path, sha: str, prefix: str) -> list[tuple[str, str, str]]:
    """(path under the facts folder, path in the repository, blob sha) of every fact file
    at `sha`; `prefix` may also name a single fact file."""
    args = ["ls-tree", "-r", "-z", "--full-tree", sha]
    listing = _git(args + ([prefix] if prefix else []), top).stdout.decode("utf-8", "replace")
    blobs = []
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        mode, kind, blob = meta.split()
        if path == prefix:
            rel = PurePosixPath(PurePosixPath(path).name)
        else:
            rel = PurePosixPath(path).relative_to(prefix) if prefix else PurePosixPath(path)
        hidden = any(part.startswith(".") for part in rel.parts)
        if kind == "blob" and mode != "120000" and is_fact_file(rel.name) and not hidden:
            blobs.append((rel.as_posix(), path, blob))
    return blobs


def _read_blobs(top: Path, shas: list[str]) -> list[bytes]:
    # One `git cat-file --batch` for all files instead of one `git show` per file.
    if not shas:
        return []
    out = _git(["cat-file", "--batch"], top, input="".join(f"{sha}\n" for sha in shas).encode()).stdout
    result, pos = [], 0
    for _ in shas:
        end = out.index(b"\n", pos)
        size = int(out[pos:end].split()[2])
        result.append(out[end + 1:end + 1 + size])
        pos = end + 1 + size + 1  # content is followed by a newline
    return result


def _relocate(err: FactsError, shown: dict[str, str]) -> FactsError:
    """Point the error at `REV:path` instead of the temporary copy."""
    def fix(text: str | None) -> str | None:
        for temporary, name in shown.items():
            text = text.replace(temporary, name) if text else text
        return text

    return FactsError(fix(err.message), file=fix(err.file), line=err.line, column=err.column,
                      hint=fix(err.hint))
