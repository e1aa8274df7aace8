"""Helpers for the apply / history / crash tests: a kbsync project on a tiny random Llama.

The relation's first template ENDS with the subject, so the tiny model's prediction after
the prompt reads the subject's hidden state at the edited layers (DESIGN.md §9), and the
locate-then-edit editors can change it. Imported by test_apply.py, test_apply_safety.py,
test_reviewed_plan.py and test_crash.py.
"""

from __future__ import annotations

from dataclasses import replace

from click.testing import CliRunner

from kbsync.cli.main import main
from kbsync.history import ask
from kbsync.project import Project
from kbsync.store.ledger import Ledger
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import read_applied_state

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from kbsync.editing.alphaedit import AlphaEdit
from kbsync.editing.memit import MEMIT
from kbsync.testing import TINY_HPARAMS

REPO = Path(__file__).resolve().parents[1]
RIVER = "R1"
TEMPLATES = ["The river {subject}", "{subject} is a river that flows to"]

# subject -> object; none of these is what the random model says. The objects are single
# tokens of the tiny vocabulary (kbsync.testing.TINY_TARGETS): a random model cannot steer
# the tokens after the first.
FACTS = {"Danube": "British", "Volga": "American", "Rhine": "November", "Thames": "football"}

# TINY_HPARAMS are tuned for ONE edit. For batches of 4 on the tiny Llama they damage
# unrelated prompts (measured, MEMIT λ=100: locality KL 0.84, perplexity drift +0.28;
# AlphaEdit α=1e-3: KL 1.09, drift +0.63, and after a second batch KL 8.3, drift +55),
# so the projects here regularise more: MEMIT λ=1000 (KL 0.29 then 0.09, drift ~0);
# AlphaEdit α=0.1 with null-space threshold 0.5 (KL 0.20 then 0.02; with threshold 0.2 a
# fourth edit loses one of the three before it and the retention gate rejects it).
HPARAMS = {**TINY_HPARAMS, "mom2_weight": 1000.0, "l2": 0.1, "nullspace_threshold": 0.5}

# Thresholds a GOOD batch passes with a margin and a broken one fails (test_apply.py::
# test_gate_figures_of_a_good_batch, ::test_broken_edit_fails_the_meaningful_gates).
# kl_max and ppl_drift_max are kbsync's defaults. Not gated on a random model:
# generalization (it does not generalise to other templates). Top-1 locality is loose:
# good batches keep 0.8-0.93 of the probes' argmax, a blunt edit far fewer.
# Not gated either: general_knowledge. It is measured against the BASE model, so it erodes
# with every edit, and a random model's answers to the shipped general prompts have tiny
# margins (measured: 0.71 after 4 edits, 0.60 after 5). test_general_knowledge.py checks it.
GATES = dict(efficacy_min=1.0, generalization_min=0.0, locality_min=0.6, kl_max=0.5,
             retention_min=1.0, retention_sample=50, ppl_drift_max=0.1,
             general_knowledge_min=0.0)


def facts_yaml(facts: dict[str, str], extra: list[dict] | None = None) -> str:
    doc = {"version": 1,
           "relations": {RIVER: {"label": "river", "templates": TEMPLATES}},
           "facts": [{"subject": s, "relation": RIVER, "object": o} for s, o in facts.items()]
           + list(extra or [])}
    return yaml.safe_dump(doc, sort_keys=False)


def write_facts(root: Path, facts: dict[str, str], extra: list[dict] | None = None) -> None:
    (root / "facts").mkdir(parents=True, exist_ok=True)
    (root / "facts" / "kb.yaml").write_text(facts_yaml(facts, extra), encoding="utf-8")


def write_config(root: Path, model_dir: Path, *, editor: str = "memit", batch_size: int = 4,
                 gates: dict | None = None, hparams: dict | None = None,
                 retry: dict | None = None) -> None:
    config = {"model": str(model_dir), "device": "cpu", "dtype": "float32", "editor": editor,
              "hparams": {**HPARAMS, **(hparams or {})}, "batch_size": batch_size,
              "facts": "facts", "gates": {**GATES, **(gates or {})}, "seed": 0}
    if retry is not None:
        config["retry"] = retry
    (root / "kbsync.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def make_project(root: Path, model_dir: Path, facts: dict[str, str] | None = None, **config):
    from kbsync.project import Project

    root.mkdir(parents=True, exist_ok=True)
    (root / ".kbsync").mkdir(exist_ok=True)
    write_config(root, model_dir, **config)
    write_facts(root, FACTS if facts is None else facts)
    return Project(root)


def save_tiny_llama(directory: Path) -> Path:
    from kbsync.testing import tiny_model

    lm = tiny_model("llama")
    lm.model.save_pretrained(directory, safe_serialization=True)
    lm.tokenizer.save_pretrained(directory)
    return directory


def key(subject: str) -> str:
    return f"{subject}/{RIVER}"


def prompt(subject: str) -> str:
    return TEMPLATES[0].format(subject=subject)


def cli_env(cache: Path) -> dict:
    env = dict(os.environ, KBSYNC_CACHE=str(cache), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false", NO_COLOR="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return env


# real processes start the CLI this way (every command: test_apply.py::
# test_python_m_kbsync_cli_has_every_command)
KBSYNC = [sys.executable, "-m", "kbsync.cli"]


def run_cli(project_root: Path, *args: str, cache: Path, timeout: float = 300,
            **kwargs) -> subprocess.CompletedProcess:
    """`kbsync -C ROOT ARGS` in a real process."""
    return subprocess.run([*KBSYNC, "-C", str(project_root), *args],
                          env=cli_env(cache), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kwargs)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class Broken:
    """An editor that goes wrong on purpose for the subjects in hparams `bad_subjects`
    ("*" = every batch). `break_mode`:
      nan_patch  the returned patch carries NaN factors (what the `finite` gate must catch);
      nan_solve  the linear solve returns NaN (the editor's own finiteness check fires);
      scale      the patch is multiplied by hparams `scale` (0: no edit; large: a blunt,
                 destructive edit);
      skip       the bad subjects' edits are left out of the solve (those facts alone fail
                 their own efficacy, however often they are retried).
    Every call is appended to Broken.CALLS as (subjects, hparams steps).
    Mixed into MEMIT ("broken") and AlphaEdit ("broken_alphaedit"); `register_broken`
    adds both to the editor registry for one test."""

    def _bad(self, specs) -> bool:
        bad = self.hp.extra.get("bad_subjects", ["*"])
        return "*" in bad or any(s.subject in bad for s in specs)

    CALLS: list[tuple[list[str], int]] = []

    def edit(self, lm, specs):
        Broken.CALLS.append(([s.subject for s in specs], self.hp.steps))
        mode = self.hp.extra.get("break_mode", "nan_patch")
        self._poison_solve = mode == "nan_solve" and self._bad(specs)
        if mode == "skip":
            bad = self.hp.extra.get("bad_subjects", [])
            return super().edit(lm, [s for s in specs if s.subject not in bad])
        patch = super().edit(lm, specs)
        if self._bad(specs) and mode == "nan_patch":
            layer = min(patch.factors)
            u, v = patch.factors[layer]
            patch.factors[layer] = (torch.full_like(u, float("nan")), v)
        elif self._bad(specs) and mode == "scale":
            scale = float(self.hp.extra["scale"])
            patch.factors = {l: (u * scale, v) for l, (u, v) in patch.factors.items()}
        return patch

    def solve(self, layer, keys, resid, cov, **options):
        solution = super().solve(layer, keys, resid, cov, **options)
        return replace(solution, u=solution.u * float("nan")) if self._poison_solve else solution


class BrokenMEMIT(Broken, MEMIT):
    name = "broken"


class BrokenAlphaEdit(Broken, AlphaEdit):
    name = "broken_alphaedit"


def register_broken(monkeypatch) -> None:
    from kbsync.editing.registry import EDITORS, Method

    monkeypatch.setattr(Broken, "CALLS", [])
    monkeypatch.setitem(EDITORS, "broken", Method("kbproject:BrokenMEMIT", "test double"))
    monkeypatch.setitem(EDITORS, "broken_alphaedit", Method("kbproject:BrokenAlphaEdit", "test double"))


# ------------------------------------------------------------------ project inspection

NEW = "League"          # the object an update changes Danube to


def cli(project: Project | Path, *args: str):
    root = project.root if isinstance(project, Project) else project
    return CliRunner().invoke(main, ["-C", str(root), *args])


def head(project: Project) -> str | None:
    return SnapshotStore(project.kbsync_dir).head()


def answer(project: Project, subject: str, snapshot: str | None = None) -> str:
    return ask(project, prompt(subject), snapshot)["answer"]


def applied_objects(project: Project) -> dict[str, str]:
    return {k: f.object for k, f in read_applied_state(project.kbsync_dir).kb.facts.items()}


def runs(project: Project) -> list[dict]:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return ledger.runs()


def latest_edit(project: Project, fact_key: str) -> dict:
    with Ledger(project.kbsync_dir / "ledger.db") as ledger:
        return ledger.edits_for(fact_key)[-1]


def assert_kept_model_is_head(project: Project) -> None:
    """Two applies through one KeptModel (as `kbsync watch` runs them) leave in memory
    exactly the weights, side memory and editor state that load_at(HEAD) rebuilds."""
    import torch

    from kbsync.apply import apply
    from kbsync.editing.rebuild import KeptModel, load_at
    from kbsync.editing.side.memory import memory_tensors

    kept = KeptModel()
    write_facts(project.root, dict(list(FACTS.items())[:2]))
    assert apply(project, kept=kept).applied
    write_facts(project.root, FACTS)
    assert apply(project, kept=kept).applied
    lm, editor = kept.take(project, head(project))
    fresh, fresh_editor = load_at(project, head(project))
    pairs = [(lm.model.state_dict(), fresh.model.state_dict()),
             (memory_tensors(lm.model), memory_tensors(fresh.model)),
             (editor.state_dict(), fresh_editor.state_dict())]
    for ours, theirs in pairs:
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), \
            [k for k in ours if not torch.equal(ours[k], theirs[k])]


def kill_before_head(project: Project, monkeypatch, facts: dict[str, str]) -> str:
    """Apply `facts`, killed after its manifest was written, before HEAD named it; the
    id of the orphan manifest it leaves."""
    import pytest

    from kbsync.apply import apply

    before = set(SnapshotStore(project.kbsync_dir).ids())
    write_facts(project.root, facts)
    with monkeypatch.context() as mp:
        def killed(*args, **kwargs):
            raise KeyboardInterrupt
        mp.setattr(SnapshotStore, "set_head", killed)
        with pytest.raises(KeyboardInterrupt):
            apply(project)
    orphan, = set(SnapshotStore(project.kbsync_dir).ids()) - before
    return orphan
