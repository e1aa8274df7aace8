"""ObjectStore: content addressing, read-only blobs, corruption detected on read and by verify."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch

from kbsync.errors import IntegrityError, KbsyncError
from kbsync.store.objects import ObjectStore


@pytest.fixture
def store(tmp_path):
    return ObjectStore(tmp_path)


def _flip_byte(path, index=-1):
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[index] ^= 0x01
    path.write_bytes(bytes(data))


def test_bytes_round_trip_layout_and_mode(store, tmp_path):
    sha = store.put_bytes(b"hello")
    assert sha == hashlib.sha256(b"hello").hexdigest()
    path = tmp_path / "objects" / sha[:2] / sha[2:]
    assert path.is_file() and store.path(sha) == path
    assert path.stat().st_mode & 0o777 == 0o444
    assert store.get_bytes(sha) == b"hello"
    assert store.exists(sha) and store.put_bytes(b"hello") == sha  # deduplicated
    assert store.list() == [sha]


def test_json_is_canonical(store):
    a = store.put_json({"b": 1, "a": [1.5, "é"]})
    b = store.put_json({"a": [1.5, "é"], "b": 1})
    assert a == b
    assert store.get_bytes(a) == '{"a":[1.5,"é"],"b":1}'.encode()
    assert store.get_json(a) == {"a": [1.5, "é"], "b": 1}
    assert store.get_text(store.put_text("ünï")) == "ünï"


def test_flipped_byte_detected_by_get_and_verify_all(store):
    sha = store.put_bytes(b"some patch bytes")
    other = store.put_bytes(b"fine")
    _flip_byte(store.path(sha))
    with pytest.raises(IntegrityError) as info:
        store.get_bytes(sha)
    assert sha in str(info.value) and info.value.exit_code == 5
    problems = store.verify_all()
    assert len(problems) == 1 and sha in problems[0] and other not in problems[0]


def test_put_repairs_a_corrupted_copy(store):
    sha = store.put_bytes(b"payload")
    _flip_byte(store.path(sha))
    assert store.put_bytes(b"payload") == sha
    assert store.get_bytes(sha) == b"payload" and store.verify_all() == []


def test_missing_object(store):
    sha = store.put_bytes(b"x")
    store.path(sha).unlink()
    with pytest.raises(IntegrityError, match="missing"):
        store.get_bytes(sha)


def test_bad_object_names_are_refused(store):
    for bad in ["../../etc/passwd", "ABC", "a" * 63, "A" * 64]:
        with pytest.raises(KbsyncError):
            store.path(bad)


def test_tensors_round_trip(store):
    tensors = {"layer.0.U": torch.randn(3, 2), "layer.0.V": torch.randn(4, 2).t(),  # non-contiguous
               "half": torch.randn(5, dtype=torch.bfloat16), "ids": torch.arange(4)}
    sha = store.put_tensors(tensors, metadata={"editor": "memit"})
    back = store.get_tensors(sha)
    assert set(back) == set(tensors)
    for name, tensor in tensors.items():
        assert back[name].dtype == tensor.dtype and torch.equal(back[name], tensor)
    assert store.get_tensor_metadata(sha) == {"editor": "memit"}
    # deterministic: the same tensors give the same object
    assert store.put_tensors({k: v.clone() for k, v in tensors.items()},
                             metadata={"editor": "memit"}) == sha


def test_shared_storage_and_views_are_stored(store):
    w = torch.randn(4, 4)
    sha = store.put_tensors({"a": w, "b": w, "row": w[1]})
    back = store.get_tensors(sha)
    assert torch.equal(back["b"], w) and torch.equal(back["row"], w[1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_tensors_refused(store, tmp_path, bad):
    t = torch.zeros(3)
    t[1] = bad
    with pytest.raises(KbsyncError, match="non-finite"):
        store.put_tensors({"delta": t})
    assert store.list() == []


def test_metadata_must_be_str_to_str(store):
    with pytest.raises(KbsyncError):
        store.put_tensors({"x": torch.zeros(1)}, metadata={"rank": 4})


def test_truncated_safetensors_detected(store):
    sha = store.put_tensors({"x": torch.ones(8)})
    path = store.path(sha)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(IntegrityError):
        store.get_tensors(sha)


def test_valid_hash_but_not_safetensors(store):
    sha = store.put_bytes(b"not a safetensors file at all")
    with pytest.raises(IntegrityError, match="safetensors"):
        store.get_tensors(sha)


def test_remove_garbage(store, tmp_path):
    sha = store.put_bytes(b"keep")
    leftover = store.path(sha).parent / f".{sha[2:]}.x1y2.tmp"
    leftover.write_bytes(b"partial write of a killed process")
    assert store.list() == [sha]
    removed = store.remove_garbage()
    assert removed == [leftover] and not leftover.exists()
    assert store.get_bytes(sha) == b"keep"


def test_stray_file_reported(store):
    store.put_bytes(b"a")
    stray = store.dir / "zz" / "not-an-object"
    stray.parent.mkdir()
    stray.write_bytes(b"?")
    assert any("stray" in p for p in store.verify_all())
    assert os.path.exists(stray)
