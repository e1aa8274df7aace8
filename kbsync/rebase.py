"""`kbsync rebase`: make HEAD the model the cumulative gates measure against.

Two gates measure damage against a fixed reference, not the parent: perplexity drift on
the reference text and the general-knowledge prompts (kbsync.evaluate.gates). With the
base model as that reference their value only grows with the facts committed, and an
editor that spends, say, 0.1 of perplexity in 300 facts meets a wall there (issue 22;
benchmarks/RESULTS.md, "apply_scale at N = 1,000"). Rebasing is the user's decision to
accept the model at HEAD as the new reference, as one would re-base on an exported
HEAD: the budget starts again from it, and what was spent is kept on record.

A rebase is a snapshot (kbsync.store.snapshots, module doc): `patch` None, HEAD's facts,
and `meta.rebase` with the drift it accepted; a manifest, nothing more. Rather than an
exported copy of HEAD made the project's model, the reference is named by its snapshot:
the base model stays what every snapshot, older or newer, rebuilds from, and the store
holds no second copy of the edited layers (a forced checkpoint of them cost 23.8 MB on
the default model after 980 facts, more than the 980 facts' own 21 MB; the regular
checkpoints, every `checkpoint_every` patches, keep its rebuild cheap).
History is kept: `log` shows it, a rollback past it gives the original reference back,
and `show` tells what was spent at the rebase against the base model.

Per-batch gates (efficacy, locality against the parent, retention of earlier facts)
are unchanged: a rebase resets no promise about the facts.

`gate_reference` gives apply (kbsync.scheduler) the reference for HEAD's lineage; both
reference figures are cached on disk per model and reference snapshot, so an apply after
a rebase loads nothing more than one before it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from kbsync.editing.rebuild import load_at
from kbsync.errors import KbsyncError
from kbsync.evaluate.drift import GATE_PASSAGES, base_perplexity, reference_text
from kbsync.evaluate.gates import general_knowledge
from kbsync.evaluate.general import base_top1, top1
from kbsync.evaluate.probes import general_prompts
from kbsync.history import commit_run_snapshot
from kbsync.lm.score import perplexity
from kbsync.store.lock import ProjectLock
from kbsync.store.manifest import REBASE, Manifest
from kbsync.store.snapshots import SnapshotStore


@dataclass(frozen=True)
class GateReference:
    """What the cumulative gates of a batch measure against."""
    snapshot: str | None        # the rebase snapshot, or None: the base model
    facts: int                  # facts applied at it (the capacity counts from there)
    text: list[str]             # the reference text of the drift gate
    perplexity: float           # its perplexity on `text`
    general: torch.Tensor       # its top-1 on the general-knowledge prompts (general.top1)


def gate_reference(project, lm, head: str | None, margin: float) -> GateReference:
    """The reference for a batch on `head`, `lm` holding the model at `head` (unedited
    yet): the nearest rebase on the lineage (SnapshotStore.gate_base), else the base."""
    snapshots = project.snapshots()
    sid = snapshots.gate_base(head)
    loaded: dict = {}

    def model():
        if sid == head:                        # the model in hand is the reference
            return lm
        if "lm" not in loaded:
            loaded["lm"], _ = load_at(project, sid, with_editor=False)
        return loaded["lm"]

    text = reference_text(GATE_PASSAGES)
    ppl, general = _measured(lm.fingerprint, sid, text, model, margin)
    facts = 0 if sid is None else int(snapshots.read(sid).meta[REBASE]["facts"])
    return GateReference(sid, facts, text, ppl, general)


def _measured(fingerprint: str, sid: str | None, text: list[str], model: Callable,
              margin: float, known_ppl: float | None = None) -> tuple[float, torch.Tensor]:
    """(perplexity on `text`, general top-1) of the model at `sid`, from the disk cache
    (kbsync.evaluate.drift / general) or measured on `model()` (the perplexity taken
    from `known_ppl` when it was measured already)."""
    key = fingerprint if sid is None else f"{fingerprint}@{sid[:16]}"
    prompts = general_prompts()
    ppl = base_perplexity(key, text, lambda: known_ppl if known_ppl is not None
                          else perplexity(model(), text))
    general = base_top1(key, prompts, lambda: top1(model(), prompts, margin), margin)
    return ppl, general


def rebase(project, *, lock_timeout: float = 0) -> dict:
    """Commit a rebase snapshot on HEAD (module doc). Recovery runs first, as for a
    rollback. Nothing edited since the reference in force (HEAD is a rebase, or no patch
    since the last one): nothing changes (`changed` false), so running it again after a
    failure does only what is left."""
    from kbsync.recovery import recover

    with ProjectLock(project.kbsync_dir, timeout=lock_timeout, operation="rebase"):
        snapshots = SnapshotStore(project.kbsync_dir)
        if snapshots.head() is None:
            raise KbsyncError("nothing is applied yet: there is no HEAD to rebase on",
                              hint="`kbsync apply` first")
        with project.ledger() as ledger:
            recover(project, ledger, lambda event: None)
            head = snapshots.head()
            previous = snapshots.gate_base(head)
            if not _edited_since(snapshots, head, previous):
                return {"snapshot": head, "rebase_of": None, "previous": previous,
                        "changed": False}
            record, lm, ppl = _measure_head(project, head, previous)
            old = snapshots.read(head)

            def manifest(run_id: str, ledger_head: str | None) -> Manifest:
                return Manifest(
                    parent=head, serial=old.serial + 1, base_model=old.base_model,
                    editor=old.editor, hparams=old.hparams, patch=None, facts=old.facts,
                    facts_base=old.facts_base, facts_hash=old.facts_hash, run_id=run_id,
                    ledger_head=ledger_head, meta={REBASE: record})

            sid = commit_run_snapshot(project, snapshots, ledger, "rebase", manifest,
                                      previous=head, event=record)
    # warm the cache: the next apply measures against this model without loading it
    _measured(lm.fingerprint, sid, reference_text(GATE_PASSAGES), lambda: lm,
              project.config.gates.general_knowledge_margin, known_ppl=ppl)
    return {"snapshot": sid, "rebase_of": head, "changed": True, **record}


def _edited_since(snapshots: SnapshotStore, head: str, reference: str | None) -> bool:
    """Whether a patch lies on HEAD's lineage after `reference` (None: the root)."""
    for sid, manifest in snapshots.ancestors(head):
        if sid == reference:
            return False
        if manifest.patch is not None:
            return True
    return False


def _measure_head(project, head: str, previous: str | None) -> tuple[dict, object, float]:
    """(meta.rebase, lm at HEAD, its perplexity on the reference text): what HEAD spent
    against the reference it replaces and against the base model, measured as the drift
    gate measures."""
    from kbsync.store.state import read_applied_state

    lm, _ = load_at(project, head, with_editor=False)
    margin = project.config.gates.general_knowledge_margin
    replaced = gate_reference(project, lm, head, margin)       # loads `previous` on a miss
    ppl = perplexity(lm, replaced.text)
    base_ppl = replaced.perplexity if previous is None else _measured(
        lm.fingerprint, None, replaced.text,
        lambda: load_at(project, None, with_editor=False)[0], margin)[0]
    kept = general_knowledge(lm, general_prompts(), replaced.general,
                             project.config.gates.general_knowledge_min).value
    facts = len(read_applied_state(project.kbsync_dir).kb.facts)
    return {"of": head, "previous": previous, "facts": facts,
            "ppl_drift": ppl / replaced.perplexity - 1.0, "general_knowledge": kept,
            "ppl_drift_from_base": ppl / base_ppl - 1.0}, lm, ppl
