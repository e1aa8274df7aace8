"""The applied facts stored incrementally (issue 22): a delta per snapshot against its
effective parent's facts, a full copy every FULL_EVERY; verify, gc and rollback keep the
delta chains whole; format-1 manifests (a full copy each) still read."""

from __future__ import annotations

import json

import pytest

from kbsync.errors import IntegrityError
from kbsync.facts.schema import Fact, KnowledgeBase, Relation
from kbsync.store import facts_delta
from kbsync.store.gc import collect, find_garbage
from kbsync.store.manifest import Manifest
from kbsync.store.snapshots import SnapshotStore
from kbsync.store.state import read_applied_state, write_applied_state

REL = Relation(id="P1", label="river", templates=["The river {subject}"])


def kb_of(objects: dict[str, str], relations=(REL,)) -> KnowledgeBase:
    facts = {f"{s}/P1": Fact(subject=s, relation="P1", object=o) for s, o in objects.items()}
    return KnowledgeBase(relations={r.id: r for r in relations}, facts=facts)


def commit(store: SnapshotStore, old: KnowledgeBase, new: KnowledgeBase, keys=None,
           **fields) -> str:
    head = store.head()
    serial = store.read(head).serial + 1 if head else 1
    facts = write_applied_state(store, head, old, new, keys)
    sid = store.write(Manifest(parent=head, serial=serial, base_model="fp", editor="memit",
                               **facts, **fields))
    store.set_head(sid)
    return sid


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / ".kbsync")


def grow(store, n: int) -> list[tuple[str, KnowledgeBase]]:
    """n commits, each adding one fact (and from the third on changing the first)."""
    done, kb, objects = [], kb_of({}), {}
    for i in range(n):
        objects = {**objects, f"S{i}": "France"}
        keys = [f"S{i}/P1"]
        if i >= 2:
            objects["S0"] = f"Spain{i}"
            keys.append("S0/P1")
        new = kb_of(objects)
        done.append((commit(store, kb, new, keys), new))
        kb = new
    return done


def test_every_snapshot_reads_back_its_facts_and_deltas_stay_small(store, monkeypatch):
    monkeypatch.setattr(facts_delta, "FULL_EVERY", 4)
    done = grow(store, 10)
    for sid, kb in done:
        m = store.read(sid)
        assert facts_delta.read_text(store.objects, m.facts) == kb.to_json()
        assert m.facts_hash == kb.content_hash()
    manifests = [store.read(sid) for sid, _ in done]
    # a full copy at the root and every 4th, deltas between; a delta names its base
    assert [m.facts_base is None for m in manifests] == [True, False, False, False] * 2 + [True, False]
    assert manifests[0].facts == done[0][1].content_hash()       # a full copy: its content hash
    for m in manifests[1:]:
        if m.facts_base:
            delta = store.objects.get_json(m.facts)
            assert delta["base"] == m.facts_base and 1 <= delta["depth"] < 4
            assert len(delta["facts"]) <= 2 and delta["removed"] == []   # what changed only
    assert read_applied_state(store.root).kb == done[-1][1]
    assert store.verify() == []


def test_removed_facts_and_changed_relations_are_in_the_delta(store):
    first = kb_of({"A": "x", "B": "y"})
    commit(store, kb_of({}), first)
    other = Relation(id="P1", label="river", templates=["The river {subject}", "{subject} flows"])
    second = kb_of({"A": "x"}, relations=(other,))
    commit(store, first, second, ["B/P1"])
    m = store.read(store.head())
    delta = store.objects.get_json(m.facts)
    assert delta["removed"] == ["B/P1"] and delta["facts"] == {} and list(delta["relations"]) == ["P1"]
    assert read_applied_state(store.root).kb == second


def test_a_wrong_or_missing_delta_is_an_integrity_error(store):
    grow(store, 3)
    m = store.read(store.head())
    delta = store.objects.get_json(m.facts)
    forged = store.objects.put_json({**delta, "removed": ["S1/P1"]})    # rebuilds another KB
    with pytest.raises(IntegrityError, match="does not rebuild"):
        facts_delta.read_text(store.objects, forged)
    store.objects.remove(m.facts_base)                                 # its base lost
    with pytest.raises(IntegrityError, match="missing"):
        read_applied_state(store.root)


def test_verify_refuses_a_delta_whose_base_is_not_its_parents_facts(store):
    grow(store, 2)
    head = store.read(store.head())
    bogus = store.objects.put_text("{}")
    sid = store.write(head.model_copy(update={"parent": store.head(), "serial": head.serial + 1,
                                              "facts_base": bogus}))
    assert any(sid[:12] in p and "facts_base" in p for p in store.verify())


def test_format_1_manifests_read_and_the_next_commit_writes_a_full_copy(store):
    kb = kb_of({"A": "x"})
    old = store.write(Manifest(format_version=1, parent=None, serial=1, base_model="fp",
                               editor="memit", facts=store.objects.put_text(kb.to_json()),
                               facts_hash=kb.content_hash()))
    text = (store.dir / f"{old}.json").read_text()
    assert "facts_base" not in text and "checkpoint" not in text       # its id is unchanged
    assert json.loads(text)["format_version"] == 1 and store.read(old).id == old
    store.set_head(old)
    assert read_applied_state(store.root).kb == kb
    new = kb_of({"A": "x", "B": "y"})
    sid = commit(store, kb, new, ["B/P1"])
    assert store.read(sid).facts_base is None and read_applied_state(store.root).kb == new


def test_a_newer_manifest_format_is_refused(store):
    with pytest.raises(ValueError):
        Manifest(format_version=3, parent=None, serial=1, base_model="fp", editor="m",
                 facts="0" * 64, facts_hash="h")


def test_gc_keeps_every_delta_base_and_rollback_keeps_the_chain(store, monkeypatch):
    monkeypatch.setattr(facts_delta, "FULL_EVERY", 8)
    done = grow(store, 5)
    target, target_kb = done[2]
    back = store.rollback_manifest(target)
    assert (back.facts, back.facts_base) == (store.read(target).facts, store.read(target).facts_base)
    store.set_head(store.write(back))
    assert store.verify() == []
    garbage = find_garbage(store)
    assert garbage.objects == []                     # every delta's base is named
    collect(store, garbage)
    assert read_applied_state(store.root).kb == target_kb
    # a commit after the rollback: a delta against the rolled-back-to facts
    new = kb_of({**{f"S{i}": "France" for i in range(3)}, "S0": "Spain2", "Z": "q"})
    sid = commit(store, target_kb, new, ["Z/P1"])
    assert store.read(sid).facts_base == back.facts and store.verify() == []
    assert read_applied_state(store.root).kb == new
