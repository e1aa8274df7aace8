"""The applied state: what the model currently knows according to the store.

Guarantee: `read_applied_state` reflects exactly the last committed snapshot (HEAD), read
through verified manifests and objects, so a plan diffed against it is diffed against what
was really applied; a damaged store raises IntegrityError rather than returning a guess.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    kb = KnowledgeBase.from_json(store.objects.get_text(manifest.facts))
    return AppliedState(manifest.serial, head, kb)
