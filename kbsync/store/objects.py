"""Content-addressed object store: `.kbsync/objects/<2 hex>/<62 hex>`.

Guarantees:
- an object's name is the sha256 of its bytes, so any flipped, truncated or replaced byte
  is detected: `get_bytes` verifies the hash on every read and raises IntegrityError
  naming the object; `verify_all` checks every blob (`kbsync audit verify`);
- objects are written atomically (temp + fsync + rename) and made read-only (0444), and
  a written object is re-read and re-hashed before its name is returned;
- hashing reads files in chunks (`file_sha256`): writing, re-checking and verifying an
  object never holds it whole in memory; tensors are saved straight to the temp file
  (safetensors' `save_file`, the same bytes as `save`), so a commit holds no copy of its
  patch beside the tensors themselves;
- tensors are stored as safetensors only (never pickle), contiguous, on CPU, and only if
  every float value is finite; safetensors itself does not check for NaN/Inf;
- JSON objects are stored in canonical form, so equal values share one object.

torch and safetensors are imported inside the functions that need them, so importing this
module stays cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbsync.errors import IntegrityError, KbsyncError
from kbsync.store.atomic import (atomic_write_bytes, is_temp_name, new_temp, publish,
                                 remove_temp_files)
from kbsync.store.canonical import canonical_bytes, is_sha256, sha256_hex

if TYPE_CHECKING:
    import torch

OBJECT_MODE = 0o444
CHUNK = 1 << 20          # bytes hashed at a time


class ObjectStore:
    """Blobs under `root/objects`; `root` is the project's `.kbsync` directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.dir = self.root / "objects"

    # -- bytes ---------------------------------------------------------------------------
    def path(self, sha: str) -> Path:
        if not is_sha256(sha):
            raise KbsyncError(f"not an object id (64 lowercase hex digits): {sha!r}")
        return self.dir / sha[:2] / sha[2:]

    def exists(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put_bytes(self, data: bytes) -> str:
        sha = sha256_hex(data)
        if self._is_intact(sha):
            return sha  # deduplicated: the same content is already stored
        # Also repairs a corrupted copy: os.replace needs a writable directory, not file.
        atomic_write_bytes(self.path(sha), data, mode=OBJECT_MODE)
        self.check(sha)  # re-read and re-hash what actually reached the disk
        return sha

    def check(self, sha: str) -> None:
        """Raise IntegrityError unless the object is stored and hashes to its name; reads
        it in chunks."""
        path = self.path(sha)
        try:
            actual = file_sha256(path)
        except FileNotFoundError:
            raise IntegrityError(f"object {sha} is missing ({path})",
                                 hint="run `kbsync audit verify` to list every damaged object") from None
        if actual != sha:
            raise IntegrityError(f"object {sha} is corrupted: its content hashes to {actual} ({path})",
                                 hint="restore .kbsync/objects from a backup")

    def get_bytes(self, sha: str) -> bytes:
        path = self.path(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(f"object {sha} is missing ({path})",
                                 hint="run `kbsync audit verify` to list every damaged object") from None
        actual = sha256_hex(data)
        if actual != sha:
            raise IntegrityError(f"object {sha} is corrupted: its content hashes to {actual} ({path})",
                                 hint="restore .kbsync/objects from a backup")
        return data

    # -- text and JSON -------------------------------------------------------------------
    def put_text(self, text: str) -> str:
        return self.put_bytes(text.encode("utf-8"))

    def get_text(self, sha: str) -> str:
        return self.get_bytes(sha).decode("utf-8")

    def put_json(self, obj: Any) -> str:
        return self.put_bytes(canonical_bytes(obj))

    def get_json(self, sha: str) -> Any:
        import json

        return json.loads(self.get_bytes(sha))

    # -- tensors -------------------------------------------------------------------------
    def put_tensors(self, tensors: dict[str, "torch.Tensor"],
                    metadata: dict[str, str] | None = None) -> str:
        from safetensors.torch import save_file

        prepared, metadata = _prepare_tensors(tensors), _check_metadata(metadata)
        tmp = new_temp(self.dir, "tensors")     # its name is known once it is hashed
        try:
            save_file(prepared, tmp, metadata=metadata)
            sha = file_sha256(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self._is_intact(sha):
            tmp.unlink()                        # deduplicated
            return sha
        publish(tmp, self.path(sha), mode=OBJECT_MODE)
        self.check(sha)
        return sha

    def get_tensors(self, sha: str) -> dict[str, "torch.Tensor"]:
        return self.get_tensors_and_metadata(sha)[0]

    def get_tensors_and_metadata(self, sha: str) -> tuple[dict[str, "torch.Tensor"], dict[str, str]]:
        """The tensors and the `__metadata__` map of a tensor object, from one verified read."""
        from safetensors import SafetensorError
        from safetensors.torch import load

        data = self.get_bytes(sha)
        try:
            return load(data), _header_metadata(sha, data)
        except (SafetensorError, ValueError) as exc:
            raise IntegrityError(f"object {sha} is not a valid safetensors file: {exc}") from exc

    def get_tensor_metadata(self, sha: str) -> dict[str, str]:
        """The safetensors `__metadata__` map of a tensor object (empty if none)."""
        return _header_metadata(sha, self.get_bytes(sha))

    # -- maintenance ---------------------------------------------------------------------
    def list(self) -> list[str]:
        """Names of every stored object (temp files excluded)."""
        if not self.dir.is_dir():
            return []
        names = []
        for sub in sorted(self.dir.iterdir()):
            if sub.is_dir():
                names += [sub.name + f.name for f in sorted(sub.iterdir())
                          if f.is_file() and not is_temp_name(f.name)]
        return names

    def verify_all(self) -> list[str]:
        """One line per problem: a blob whose content does not hash to its name, a stray file."""
        problems = []
        for name in self.list():
            if not is_sha256(name):
                problems.append(f"stray file in objects/: {name[:2]}/{name[2:]}")
                continue
            try:
                self.check(name)
            except IntegrityError as exc:
                problems.append(exc.message)
        return problems

    def remove_garbage(self) -> list[Path]:
        """Delete temp files of interrupted writes. Call only while holding the project lock."""
        return remove_temp_files(self.dir, recursive=True)

    def remove(self, sha: str) -> None:
        """Delete one object (garbage collection of unreferenced objects, under the lock)."""
        self.path(sha).unlink(missing_ok=True)

    def _is_intact(self, sha: str) -> bool:
        try:
            self.check(sha)
        except (IntegrityError, OSError):
            return False
        return True


def _header_metadata(sha: str, data: bytes) -> dict[str, str]:
    import json

    try:
        size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + size])
    except ValueError as exc:
        raise IntegrityError(f"object {sha} has no valid safetensors header: {exc}") from exc
    return dict(header.get("__metadata__") or {})


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file, read CHUNK bytes at a time."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _prepare_tensors(tensors: dict[str, "torch.Tensor"]) -> dict[str, "torch.Tensor"]:
    import torch

    prepared: dict[str, torch.Tensor] = {}
    seen_storages: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise KbsyncError(f"tensor {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        t = tensor.detach().to("cpu").contiguous()
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise KbsyncError(f"tensor {name!r} has {bad} non-finite values (NaN/Inf); refusing to store it",
                              hint="the edit diverged: lower the learning rate or the batch size")
        storage = t.untyped_storage()
        if storage.nbytes() != t.nbytes or storage.data_ptr() in seen_storages:
            t = t.clone()  # a view or an alias: safetensors refuses tensors that share storage
        seen_storages.add(t.untyped_storage().data_ptr())
        prepared[name] = t
    return prepared


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    for key, value in metadata.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise KbsyncError(f"safetensors metadata must map str to str, got {key!r}: {value!r}")
    return dict(metadata)
