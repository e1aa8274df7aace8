"""The applied state: what the model currently knows according to the store.

Guarantees:
- `read_applied_state` reflects exactly the last committed snapshot (HEAD), read through
  verified manifests and objects (a delta chain is checked against the hash it recorded,
  kbsync.store.facts_delta), so a plan diffed against it is diffed against what was
  really applied; a damaged store raises IntegrityError rather than returning a guess;
- `write_applied_state` stores a snapshot's facts as a delta against its effective
  parent's (a full copy every facts_delta.FULL_EVERY, and after a format-1 parent, whose
  full copy may predate today's canonical form), so the bytes a commit writes grow with
  the batch, not with the knowledge base.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbsync.store import facts_delta
from kbsync.store.canonical import sha256_hex
from kbsync.store.snapshots import SnapshotStore


@dataclass(frozen=True)
class AppliedState:
    serial: int               # HEAD's serial; 0 before the first apply
    snapshot_id: str | None   # HEAD; None before the first apply
    kb: Any                   # kbsync.facts.schema.KnowledgeBase


def read_applied_state(kbsync_dir: str | os.PathLike) -> AppliedState:
    from kbsync.facts.schema import KnowledgeBase  # imported late: keeps store/ import-light

    store = SnapshotStore(Path(kbsync_dir))
    head = store.head()
    if head is None:
        return AppliedState(0, None, KnowledgeBase(relations={}, facts={}))
    manifest = store.read(head)
    kb = KnowledgeBase.from_json(facts_delta.read_text(store.objects, manifest.facts))
    return AppliedState(manifest.serial, head, kb)


def write_applied_state(store: SnapshotStore, parent_id: str | None, old: Any, new: Any,
                        changed: Iterable[str] | None = None) -> dict[str, str | None]:
    """Store `new` (a KnowledgeBase) as the facts of a snapshot whose parent is
    `parent_id`, whose facts are `old`. `changed`: the only fact keys that may differ
    (None: compare all). Returns the manifest fields facts, facts_base, facts_hash."""
    text = new.to_json()
    parent = store.read(parent_id) if parent_id is not None else None
    base, depth = None, 0
    if parent is not None and parent.format_version >= 2:
        base = parent.facts
        depth = facts_delta.depth(store.objects, base) if parent.facts_base else 0
    keys = None if changed is None else list(changed)
    sha, base = facts_delta.put(
        store.objects, text, base=base, base_depth=depth,
        facts=facts_delta.changes(old.canonical_facts(old.facts if keys is None else keys),
                                  new.canonical_facts(new.facts if keys is None else keys),
                                  keys),
        relations=facts_delta.changes(old.canonical_relations(), new.canonical_relations()))
    return {"facts": sha, "facts_base": base, "facts_hash": sha256_hex(text.encode("utf-8"))}
