"""read_applied_state: HEAD -> manifest -> facts object -> KnowledgeBase."""

from __future__ import annotations

import sys
import types

from kbsync.store.manifest import Manifest
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import AppliedState, read_applied_state


def test_empty_store(tmp_path):
    from kbsync.facts.schema import KnowledgeBase

    state = read_applied_state(tmp_path / ".kbsync")  # not even created yet
    assert isinstance(state, AppliedState)
    assert (state.serial, state.snapshot_id) == (0, None)
    assert state.kb == KnowledgeBase(relations={}, facts={})


def test_reads_head_facts(tmp_path):
    from kbsync.facts.schema import KnowledgeBase

    store = SnapshotStore(tmp_path)
    kb = KnowledgeBase(relations={}, facts={})
    facts = store.objects.put_text(kb.to_json())
    root = store.write(Manifest(parent=None, serial=1, base_model="fp", editor="ft",
                                facts=facts, facts_hash="h"))
    second = store.write(Manifest(parent=root, serial=2, base_model="fp", editor="ft",
                                  facts=facts, facts_hash="h"))
    store.set_head(second)
    state = read_applied_state(tmp_path)
    assert (state.serial, state.snapshot_id, state.kb) == (2, second, kb)


def test_passes_the_stored_text_to_from_json(tmp_path, monkeypatch):
    seen = []

    class FakeKB:
        def __init__(self, relations, facts):
            self.relations, self.facts = relations, facts

        @classmethod
        def from_json(cls, text):
            seen.append(text)
            return cls({}, {"k": text})

    fake = types.ModuleType("kbsync.facts.schema")
    fake.KnowledgeBase = FakeKB
    monkeypatch.setitem(sys.modules, "kbsync.facts.schema", fake)
    store = SnapshotStore(tmp_path)
    facts = store.objects.put_text('{"facts":{},"relations":{}}')
    sid = store.write(Manifest(parent=None, serial=1, base_model="fp", editor="ft",
                               facts=facts, facts_hash="h"))
    store.set_head(sid)
    state = read_applied_state(tmp_path)
    assert seen == ['{"facts":{},"relations":{}}'] and state.serial == 1
