"""SnapshotStore: manifest ids, HEAD commit point, chains and rollbacks, verify."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch

from kbsync.errors import IntegrityError, KbsyncError
from kbsync.store.manifest import Manifest
from kbsync.store.snapshots import SnapshotStore


@pytest.fixture
def store(tmp_path):
    return SnapshotStore(tmp_path / ".kbsync")


def _commit(store, *, patch_value: float | None, facts: str, state: float | None = None) -> str:
    """One apply: objects, then manifest, then HEAD (the commit protocol order)."""
    head = store.head()
    serial = store.read(head).serial + 1 if head else 1
    patch = None if patch_value is None else store.objects.put_tensors({"w": torch.full((2,), patch_value)})
    editor_state = None if state is None else store.objects.put_tensors({"c": torch.full((1,), state)})
    facts_obj = store.objects.put_text(facts)
    sid = store.write(Manifest(parent=head, serial=serial, base_model="fp-base", editor="memit",
                               hparams={"lr": 0.1}, patch=patch, editor_state=editor_state,
                               facts=facts_obj, facts_hash=hashlib.sha256(facts.encode()).hexdigest(),
                               gates={"efficacy": 1.0}))
    store.set_head(sid)
    return sid


def _patch_values(store, sid):
    return [float(store.objects.get_tensors(p)["w"][0]) for p in store.patches(sid)]


def test_manifest_id_is_hash_of_file(store):
    sid = _commit(store, patch_value=1.0, facts="{}")
    path = store.dir / f"{sid}.json"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sid == store.read(sid).id
    assert path.stat().st_mode & 0o777 == 0o444
    assert json.loads(path.read_text())["serial"] == 1


def test_manifest_tamper_detected(store):
    sid = _commit(store, patch_value=1.0, facts="{}")
    path = store.dir / f"{sid}.json"
    path.chmod(0o644)
    path.write_text(path.read_text().replace('"lr":0.1', '"lr":0.2'))
    with pytest.raises(IntegrityError, match=sid):
        store.read(sid)
    problems = store.verify()
    assert any(sid in p and "modified" in p for p in problems)
    assert any("HEAD" in p for p in problems)  # HEAD now names a damaged snapshot


def test_head_is_the_commit_point(store, monkeypatch):
    assert store.head() is None
    first = _commit(store, patch_value=1.0, facts="a")
    assert store.head() == first
    assert store.head_path.read_text() == first + "\n"
    # a crash during the HEAD replace leaves the old HEAD, the new manifest is just garbage
    objects_before = set(store.objects.list())

    def power_cut(*_args):
        raise OSError("killed before rename")

    monkeypatch.setattr(os, "replace", power_cut)
    with pytest.raises(OSError):
        _commit(store, patch_value=2.0, facts="b")
    monkeypatch.undo()
    assert store.head() == first
    assert [p for p in os.listdir(store.root) if p.endswith(".tmp")] == []
    assert set(store.unreferenced_objects()) == set(store.objects.list()) - objects_before


def test_set_head_refuses_missing_snapshot(store):
    with pytest.raises(IntegrityError):
        store.set_head("ab" * 32)
    assert store.head() is None


def test_garbage_head_is_an_integrity_error(store):
    store.root.mkdir(parents=True)
    store.head_path.write_text("not an id")
    with pytest.raises(IntegrityError):
        store.head()


def test_write_refuses_broken_links(store):
    facts = store.objects.put_text("{}")
    base = dict(base_model="fp", editor="ft", facts=facts, facts_hash="h")
    with pytest.raises(KbsyncError, match="serial 1"):
        store.write(Manifest(parent=None, serial=2, **base))
    root = store.write(Manifest(parent=None, serial=1, **base))
    with pytest.raises(KbsyncError, match="serial"):
        store.write(Manifest(parent=root, serial=3, **base))
    with pytest.raises(IntegrityError, match="not stored"):
        store.write(Manifest(parent=root, serial=2, patch="cd" * 32, **base))
    with pytest.raises(IntegrityError):
        store.write(Manifest(parent="ef" * 32, serial=2, **base))
    assert store.write(Manifest(parent=None, serial=1, created_at=store.read(root).created_at,
                                **base)) == root  # idempotent


def test_chain_rebuilds_in_order(store):
    a = _commit(store, patch_value=1.0, facts="a", state=10.0)
    b = _commit(store, patch_value=2.0, facts="b")
    c = _commit(store, patch_value=3.0, facts="c", state=30.0)
    assert [m.serial for m in store.chain(c)] == [1, 2, 3]
    assert [m.id for m in store.chain(c)] == [a, b, c]
    assert _patch_values(store, c) == [1.0, 2.0, 3.0]
    assert _patch_values(store, a) == [1.0]
    assert store.editor_state_for(b) == store.read(a).editor_state
    assert store.editor_state_for(c) == store.read(c).editor_state


def test_rollback_chain_reproduces_target(store):
    a = _commit(store, patch_value=1.0, facts="a", state=10.0)
    b = _commit(store, patch_value=2.0, facts="b", state=20.0)
    c = _commit(store, patch_value=3.0, facts="c")
    rollback = store.rollback_manifest(a[:8], run_id="r1")
    r = store.write(rollback)
    store.set_head(r)
    manifest = store.read(r)
    assert manifest.rollback_of == a and manifest.parent == c and manifest.patch is None
    assert manifest.serial == 4  # serials never go back, so an old saved plan cannot match
    assert manifest.facts == store.read(a).facts
    assert store.patches(r) == store.patches(a)
    assert store.editor_state_for(r) == store.read(a).editor_state
    assert [m.id for m in store.chain(r)] == [a, r]
    assert [sid for sid, _ in store.history(r)] == [a, b, c, r]
    # applying on top of the rollback continues from the target's model
    d = _commit(store, patch_value=4.0, facts="d")
    assert _patch_values(store, d) == [1.0, 4.0]
    assert store.verify() == []


def test_resolve(store):
    a = _commit(store, patch_value=None, facts="a")
    assert store.resolve(a[:6]) == a == store.resolve("HEAD") == store.resolve(a.upper())
    with pytest.raises(KbsyncError, match="at least 6"):
        store.resolve(a[:5])
    with pytest.raises(KbsyncError, match="no snapshot"):
        store.resolve("ffffff" if not a.startswith("ffffff") else "eeeeee")
    # two ids sharing a prefix: only the listing matters to resolve
    for suffix in ("0", "1"):
        (store.dir / f"{'abcdef' + suffix * 58}.json").write_text("{}")
    with pytest.raises(KbsyncError, match="ambiguous"):
        store.resolve("abcdef")
    assert store.resolve("abcdef1") == "abcdef" + "1" * 58


def test_list_is_ordered(store):
    ids = [_commit(store, patch_value=float(i), facts=str(i)) for i in range(3)]
    assert [sid for sid, _ in store.list()] == ids


def test_verify_names_corrupted_object_and_snapshot(store):
    sid = _commit(store, patch_value=1.0, facts="a")
    patch = store.read(sid).patch
    path = store.objects.path(patch)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    problems = store.verify()
    assert len(problems) == 1 and sid[:12] in problems[0] and patch in problems[0]
    with pytest.raises(IntegrityError):
        store.objects.get_tensors(patch)


def test_verify_missing_head_target(store):
    sid = _commit(store, patch_value=None, facts="a")
    path = store.dir / f"{sid}.json"
    path.unlink()
    assert any("HEAD" in p for p in store.verify())


def test_remove_garbage(store):
    keep = _commit(store, patch_value=1.0, facts="a")
    orphan = store.objects.put_bytes(b"written by a run killed before HEAD moved")
    (store.root / ".HEAD.k1.tmp").write_text("partial")
    (store.dir / ".x.json.k2.tmp").write_text("partial")
    assert store.unreferenced_objects() == [orphan]
    removed = store.remove_garbage()
    assert len(removed) == 2 and store.objects.exists(orphan)
    removed = store.remove_garbage(unreferenced=True)
    assert not store.objects.exists(orphan)
    assert store.head() == keep and store.verify() == []


def test_non_finite_gate_values_are_refused(store):
    facts = store.objects.put_text("{}")
    with pytest.raises(KbsyncError, match="non-finite"):
        store.write(Manifest(parent=None, serial=1, base_model="fp", editor="ft", facts=facts,
                             facts_hash="h", gates={"drift": float("nan")}))
