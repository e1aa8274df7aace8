"""One committed batch: its snapshot, the commit point, and its ledger rows.

In this order, so that a kill at any point leaves HEAD at a complete snapshot: the patch
goes to the object store; what changed in the applied state is written (store/state.py,
incremental, a checkpoint every K snapshots); the manifest, carrying what `recover`
needs to write the batch's rows; `set_head`, the commit point; then the rows
(recovery.record_committed). A kill before `set_head` leaves HEAD at the parent and the
new objects unreferenced; after it, the next run's `recover` writes the rows from the
manifest.
"""

from __future__ import annotations

from kbsync.editing.rebuild import consolidate
from kbsync.evaluate.gates import GateCheck
from kbsync.facts.schema import Fact, KnowledgeBase
from kbsync.recovery import record_committed
from kbsync.store.ledger import Ledger
from kbsync.store.manifest import GATE_BASE, Manifest
from kbsync.store.objects import ObjectStore
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import write_applied_state
from kbsync.triage import Work


def next_applied(applied: KnowledgeBase, pending: dict[str, Fact | None],
                 relations: dict) -> KnowledgeBase:
    """`applied` with `pending`'s changes (None: removed), keeping only the relations
    its facts use (`relations`: the desired ones, which win over the applied ones)."""
    facts = dict(applied.facts)
    for key, fact in pending.items():
        if fact is None:
            facts.pop(key, None)
        else:
            facts[key] = fact
    merged = {**applied.relations, **relations}
    used = {f.relation for f in facts.values()}
    return KnowledgeBase(relations={k: v for k, v in merged.items() if k in used}, facts=facts)


def commit_batch(project, lm, ledger: Ledger, snapshots: SnapshotStore, objects: ObjectStore,
                 *, head: str | None, serial: int, applied: KnowledgeBase, kb: KnowledgeBase,
                 pending: dict[str, Fact | None], patch, editor, checks: list[GateCheck],
                 run_id: str, batch_no: int, batch: list[Work],
                 gate_base: str | None = None) -> tuple[str, Manifest]:
    """Commit `batch` (its `patch`, possibly None) as the snapshot after `head`, whose
    applied state `kb` is `applied` with `pending`: (snapshot id, manifest). `gate_base`:
    what its cumulative gates measured against (SnapshotStore.gate_base; None: the base)."""
    patch_id = objects.put_tensors(patch.tensors()) if patch and not patch.is_empty() else None
    # what changed, not the whole knowledge base again; every K patches a checkpoint
    facts = write_applied_state(snapshots, head, applied, kb, pending)
    manifest = Manifest(
        parent=head, serial=serial + 1, base_model=lm.fingerprint,
        editor=editor.name, hparams=editor.hp.to_dict(), patch=patch_id,
        **facts, **consolidate(project, lm, head, patch_id),
        gates={c.metric: {"value": c.value, "threshold": c.threshold, "passed": c.passed}
               for c in checks},
        run_id=run_id, ledger_head=ledger.head_hash(),
        # what `recover` needs to record this batch if the run dies before its rows
        meta={GATE_BASE: gate_base, "batch": batch_no, "edits": [
            {"fact_key": w.request.fact_key, "op": w.request.op,
             "old_object": w.request.old_object, "new_object": w.request.new_object,
             "reason": w.request.reason, "pre_answer": w.pre_answer} for w in batch]})
    snapshot = snapshots.write(manifest)
    snapshots.set_head(snapshot)                       # the commit point
    record_committed(ledger, snapshot, manifest)
    return snapshot, manifest
