"""The snapshot manifest: one immutable JSON document naming everything needed to rebuild
one model state (the base-model fingerprint, the patch tensors the snapshot adds, the
editor's memory, the applied knowledge base, the gate results). Its id is the sha256 of
its canonical JSON, which is exactly the manifest file's bytes (kbsync/store/snapshots.py
writes and reads them).

Two links per manifest, two meanings:
- `parent` is history: the snapshot that was HEAD when this one was made. History is
  linear and `serial` = parent's serial + 1 (root = 1), so the serial only ever grows,
  also across a rollback (a saved plan pinned to an old serial can never match again).
- the *effective parent* is model lineage: `rollback_of` if set, else `parent`.
  Rebuilding the model of snapshot X = base model + the `patch` of every snapshot along
  `chain(X)` (root first), following effective parents; a snapshot with `patch=None`
  changes no weights.

A rollback to T is therefore a NEW snapshot R with `parent` = the current HEAD,
`rollback_of` = T, `patch` = None, and T's facts, editor state, hparams and base model
(SnapshotStore.rollback_manifest builds it).

`editor_state` is the editor's whole memory after the snapshot, or None for "unchanged
from the effective parent" (SnapshotStore.editor_state_for resolves it). `apply` never sets it: the
editor's memory is the fold of `accept` over the chain's patches (kbsync.editing.rebuild).

Format 2 adds three optional fields (left out of the canonical form while unset, so a
format-1 manifest keeps its id and reads as before):
- `facts_base`: `facts` is a delta (kbsync.store.facts_delta) applied to this object,
  which is the effective parent's `facts` (or, where `facts` is the effective parent's
  own, as in a rollback, its `facts_base`): `verify` checks it, so every object a
  delta chain reads is named by a manifest on the chain and gc keeps it;
- `checkpoint`: tensors of the model at this snapshot that the chain's patches changed
  (whole edited matrices, side memories), so a rebuild replays only the patches after it;
- `editor_checkpoint`: the editor's folded memory at this snapshot, likewise.
Both checkpoints are caches of what replaying gives, bit for bit (kbsync.editing.rebuild
makes and checks them); a manifest without them rebuilds by replaying.

A rebase (kbsync/rebase.py) is a snapshot with `patch` = None, HEAD's facts and
`meta.rebase`: the model is unchanged, but from it on the cumulative gates
measure against it instead of the base model (SnapshotStore.gate_base). Rolling back past it brings
the original base back as the reference, since the rebase is no longer on the lineage.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from kbsync.store.canonical import canonical_json, sha256_hex, utc_now

FORMAT_VERSION = 2
# added in format 2; left out of the canonical form while None (format-1 ids unchanged)
OPTIONAL_FIELDS = ("facts_base", "checkpoint", "editor_checkpoint")
# meta keys: a rebase snapshot's record (kbsync/rebase.py); the gate base a commit used
REBASE, GATE_BASE = "rebase", "gate_base"


class Manifest(BaseModel):
    """One snapshot. Field order is irrelevant: the id hashes canonical (sorted) JSON."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # a manifest of a newer format may name objects this version cannot read: refused
    format_version: int = Field(FORMAT_VERSION, ge=1, le=FORMAT_VERSION)
    parent: str | None
    serial: int = Field(ge=1)
    created_at: str = Field(default_factory=utc_now)
    base_model: str
    editor: str
    hparams: dict[str, Any] = Field(default_factory=dict)
    patch: str | None = None
    editor_state: str | None = None
    facts: str
    facts_base: str | None = None
    facts_hash: str
    gates: dict[str, Any] = Field(default_factory=dict)
    run_id: str | None = None
    rollback_of: str | None = None
    ledger_head: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)  # versions, seed, notes
    checkpoint: str | None = None
    editor_checkpoint: str | None = None

    def canonical(self) -> str:
        # Python-mode dump: JSON mode would silently turn NaN into null; we refuse NaN.
        data = self.model_dump()
        for name in OPTIONAL_FIELDS:
            if data[name] is None:
                del data[name]
        return canonical_json(data)

    @property
    def id(self) -> str:
        return sha256_hex(self.canonical().encode("utf-8"))

    @property
    def effective_parent(self) -> str | None:
        return self.rollback_of or self.parent

    def objects(self) -> dict[str, str]:
        """Field name -> object id, for every object this manifest names."""
        named = {"patch": self.patch, "editor_state": self.editor_state, "facts": self.facts,
                 "facts_base": self.facts_base, "checkpoint": self.checkpoint,
                 "editor_checkpoint": self.editor_checkpoint}
        return {field: sha for field, sha in named.items() if sha is not None}
