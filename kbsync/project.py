"""A kbsync project: a folder with kbsync.yaml, a facts folder and the `.kbsync/` store.

Library entry points the CLI calls: `find_project`, `init_project`, `compute_plan`.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import kbsync
from kbsync.config import CONFIG_NAME, Config, Retry, load_config, render_config, resolve_paths
from kbsync.errors import IntegrityError, KbsyncError

__all__ = ["STORE_DIR", "Project", "find_project", "init_project", "compute_plan",
           "demo_facts_dir", "corrupt_ledger"]

STORE_DIR = ".kbsync"


@dataclass
class Project:
    root: Path
    _config: Config | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def kbsync_dir(self) -> Path:
        return self.root / STORE_DIR

    def ledger(self):
        """The project's ledger (kbsync.store.ledger.Ledger), opened; close it when done.
        A ledger SQLite cannot read is an IntegrityError (exit 5), not a traceback."""
        from kbsync.store.ledger import Ledger

        path = self.kbsync_dir / "ledger.db"
        try:
            return Ledger(path)
        except sqlite3.DatabaseError as err:
            raise corrupt_ledger(err, path) from None

    def snapshots(self):
        """The project's snapshot store (kbsync.store.snapshots.SnapshotStore), its objects
        at `.objects`: what kbsync.editing.rebuild replays a snapshot from, so the editing
        layer needs no import of the store."""
        from kbsync.store.snapshots import SnapshotStore

        return SnapshotStore(self.kbsync_dir)

    @cached_property
    def config(self) -> Config:
        """The settings, with their paths absolute (relative ones name files of the project)."""
        config = self._config if self._config is not None else load_config(self.config_path)
        return resolve_paths(config, self.root)

    @property
    def facts_dir(self) -> Path:
        return self.resolve(self.config.facts)

    def resolve(self, path: str | os.PathLike) -> Path:
        """A path from the config: relative ones are relative to the project root."""
        return (self.root / Path(path).expanduser()).resolve()

    def relative(self, path: Path) -> str:
        """`path` as the config would write it: relative to the root when inside it."""
        path = Path(path).resolve()
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)


def corrupt_ledger(err: sqlite3.DatabaseError, path: Path | str | None = None) -> KbsyncError:
    """The kbsync error for an SQLite error on the ledger. A damaged file ("file is not a
    database", "database disk image is malformed") is an integrity failure; an
    OperationalError (locked, disk I/O, cannot open) is an ordinary error."""
    where = f" ({path})" if path is not None else ""
    if isinstance(err, sqlite3.OperationalError):
        return KbsyncError(f"cannot use the ledger{where}: {err}")
    return IntegrityError(f"the ledger{where} is corrupt: {err}",
                          hint="restore .kbsync/ledger.db from a backup: kbsync never "
                               "repairs or replaces the record of what it did")


def find_project(start: Path | str) -> Project:
    """The project whose kbsync.yaml is in `start` or the nearest folder above it."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / CONFIG_NAME).is_file():
            return Project(folder)
    raise KbsyncError(f"not a kbsync project: no {CONFIG_NAME} in {start} or any folder above",
                      hint="run `kbsync init` to create one, or pass -C DIR")


def demo_facts_dir() -> Path:
    """The example knowledge base, package data of kbsync (kbsync/data/demo/; a source
    checkout's facts/demo links to it)."""
    return Path(kbsync.__file__).resolve().parent / "data" / "demo"


DEFAULT_FALLBACK = "grace"


def default_fallback(editor: str) -> str | None:
    """The fallback editor `kbsync init` names: a side memory for a weight editor, which
    takes the facts past the wall (kbsync/wall.py), where perplexity drift
    rejects the weight editor's; GRACE, because it spends no drift and costs 0.4 s and
    8 KB an edit on the default model (benchmarks/RESULTS.md, zsRE table). None for a
    side-memory editor, which needs none."""
    from kbsync.editing.registry import EDITORS

    method = EDITORS.get(editor)
    return None if method is None or method.memory or editor == DEFAULT_FALLBACK \
        else DEFAULT_FALLBACK


def init_project(directory: Path | str, model: str = "default",
                 editor: str = "alphaedit") -> Project:
    """Create kbsync.yaml, facts/ (the demo knowledge base) and .kbsync/ in `directory`.

    Refuses to touch an existing project or a non-empty facts folder; checks everything
    before writing anything."""
    root = Path(directory).resolve()
    if root.exists() and not root.is_dir():
        raise KbsyncError(f"{root} exists and is not a folder")
    for existing in (root / CONFIG_NAME, root / STORE_DIR):
        if existing.exists():
            raise KbsyncError(f"{root} is already a kbsync project ({existing.name} exists)",
                              hint="kbsync init never overwrites a project; use another folder")
    config = Config(model=model, editor=editor,
                    retry=Retry(fallback_editor=default_fallback(editor)))
    project = Project(root, config)
    facts = project.facts_dir
    if facts.exists() and (not facts.is_dir() or any(facts.iterdir())):
        raise KbsyncError(f"{facts} already exists and is not empty",
                          hint="kbsync init does not overwrite facts; use another folder")
    demo = demo_facts_dir()
    if not demo.is_dir():
        raise KbsyncError(f"demo knowledge base not found at {demo}",
                          hint="this kbsync installation is incomplete: reinstall kbsync")
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(demo, facts, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".*", "__pycache__"))
    project.kbsync_dir.mkdir()
    project.config_path.write_text(render_config(config), encoding="utf-8")
    return project


def compute_plan(project: Project, from_rev: str | None = None, *, refresh: bool = False,
                 lm=None, progress=None):
    """Diff the desired facts against the applied state (or, with `from_rev`, against the
    facts at that git revision). Returns a kbsync.plan.Plan; changes nothing.

    `refresh` also probes the model at HEAD (`lm` if given, else loaded) for every
    committed fact and adds a drift update for each one it no longer answers
    (kbsync.sync.refresh); `progress(done, total)` follows the probing."""
    from kbsync.facts.load import load_knowledge_base
    from kbsync.facts.source import gc_paused
    from kbsync.plan.diff import diff
    from kbsync.plan.gitrev import facts_at_revision, git_info
    from kbsync.plan.plan import Plan
    from kbsync.store.state import read_applied_state

    if refresh and from_rev is not None:
        raise KbsyncError("--refresh probes the model at HEAD; it cannot be combined with "
                          "--from REV", hint="use one or the other")
    facts_dir = project.facts_dir
    # The collector off while the knowledge bases, the diff and the hash allocate: each
    # full collection walks every object already built (at 100,000 facts it took 2.5 s of
    # a 9 s plan: benchmarks/RESULTS.md, "Plan speed"). Not around the model's refresh.
    with gc_paused():
        desired = load_knowledge_base(facts_dir)
        state = read_applied_state(project.kbsync_dir)
        applied = state.kb if from_rev is None else facts_at_revision(facts_dir, from_rev)
        requests, report = diff(applied, desired), None
        facts_hash = desired.content_hash()
    if refresh:
        from kbsync.sync.refresh import drift_requests, refresh as probe

        report = probe(project, desired=desired, state=state, lm=lm, progress=progress)
        requests += drift_requests(report, desired)
    return Plan(requests=requests, base_serial=state.serial,
                base_snapshot=state.snapshot_id, facts_hash=facts_hash,
                facts_dir=project.relative(facts_dir), git=git_info(facts_dir),
                from_rev=from_rev, refresh=report.summary() if report else None)
