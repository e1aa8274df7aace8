"""Load any local Hugging Face causal LM directory offline, safely.

Only safetensors weights load by default: a directory holding only pickle checkpoints
(`*.bin`, `*.pt`, `*.pth`) is refused unless the caller passes `allow_pickle=True`, and
remote code is never trusted. `model: default` resolves to the embedded SmolLM2 model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kbsync.errors import ModelError
from kbsync.home import replace_cache_file

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    path: Path
    fingerprint: str

    @property
    def device(self):
        return next(self.model.parameters()).device


def resolve_model_path(spec: str | Path) -> Path:
    if str(spec) == "default":
        from kbsync.lm.default_model import default_model_path
        path = default_model_path()
        if not (path / "config.json").exists():
            raise ModelError(f"the default model is not set up at {path}",
                             hint="run `kbsync model fetch-default` (or `make model`)")
        return path
    path = Path(spec).expanduser()
    if not (path / "config.json").exists():
        raise ModelError(f"{path} is not a Hugging Face model directory (no config.json)",
                         hint="point `model:` in kbsync.yaml at a local directory, or use `default`")
    return path


MEMORY_FILE = "kbsync-memory.safetensors"   # side memory next to an exported model's weights


def check_weights(path: Path, allow_pickle: bool) -> bool:
    """True when safetensors weights are present; refuse pickle-only dirs unless trusted."""
    has_safetensors = any(path.glob("*.safetensors"))
    if has_safetensors:
        return True
    pickles = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not pickles:
        raise ModelError(f"{path} holds no weights (*.safetensors)")
    if not allow_pickle:
        raise ModelError(f"{path} only has pickle checkpoints ({', '.join(pickles)}); "
                         "unpickling can run arbitrary code",
                         hint="convert to safetensors, or set `allow_pickle: true` in "
                              "kbsync.yaml (load_model(..., allow_pickle=True) from Python) "
                              "if you trust this file")
    return False


def file_fingerprint(path: Path) -> str:
    """sha256 over config and weight files; cached per (name, size, mtime) since 8B
    models take tens of seconds to hash."""
    entries = sorted(p for p in path.iterdir()
                     if p.name == "config.json" or p.suffix == ".safetensors"
                     or p.suffix in PICKLE_SUFFIXES)
    stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in entries]
    cache = cache_dir() / "fingerprints.json"
    key = hashlib.sha256(json.dumps([str(path.resolve()), stamp]).encode()).hexdigest()
    known = _read_cache(cache)
    if key in known:
        return known[key]
    digest = hashlib.sha256()
    for p in entries:
        digest.update(p.name.encode())
        with open(p, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
    known[key] = digest.hexdigest()[:32]
    replace_cache_file(cache, lambda tmp: tmp.write_text(json.dumps(known)))
    return known[key]


def _read_cache(cache: Path) -> dict[str, str]:
    """The cached fingerprints, or none when the cache is missing or unreadable: it is
    only a cache (a torn or hand-edited file costs one re-hash, never a traceback)."""
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return {}
    if not isinstance(known, dict):
        return {}
    return {k: v for k, v in known.items() if isinstance(v, str)}


def weights_fingerprint(model) -> str:
    """sha256 of the in-memory parameters: changes whenever any weight changes."""
    import torch
    digest = hashlib.sha256()
    for name, param in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def cache_dir() -> Path:
    """kbsync's caches: $KBSYNC_CACHE, else $KBSYNC_HOME (kbsync.home)."""
    from kbsync.home import cache_dir as home_cache_dir

    return home_cache_dir()


def pick_device(device: str) -> str:
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_dtype(dtype: str, device: str):
    import torch
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[dtype]


def quiet_libraries() -> None:
    """Silence transformers' and huggingface_hub's logging (errors only) and their
    progress bars ("Loading weights ... it/s"): kbsync reports its own progress. Called
    when kbsync loads a model, never at import, and not under `kbsync --verbose`."""
    from kbsync.output import VERBOSE, verbosity

    if verbosity() >= VERBOSE:
        return
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    try:
        from huggingface_hub.utils import disable_progress_bars
        from huggingface_hub.utils import logging as hub_logging
    except ImportError:       # an older huggingface_hub: transformers' switch covers its bars
        return
    hub_logging.set_verbosity_error()
    disable_progress_bars()


def load_model(spec: str | Path = "default", *, device: str = "auto", dtype: str = "auto",
               allow_pickle: bool = False,
               attach_memory: Callable[[object, dict], None] | None = None) -> LoadedModel:
    """device: cpu, cuda, cuda:N, auto, or `map` for device_map="auto" across GPUs.

    attach_memory(model, tensors) routes in the side memory (GRACE, WISE, CASE) an export
    wrote next to the weights (MEMORY_FILE); the editing layer owns memories, so its
    callers pass kbsync.editing.side.memory.attach_memory_tensors (kbsync.load_model does).
    Without it the model is the weights alone: the memory file is not read."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    quiet_libraries()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(spec)
    safe = check_weights(path, allow_pickle)
    placement = {"device_map": "auto"} if device == "map" else {}
    target = "cuda" if device == "map" else pick_device(device)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=pick_dtype(dtype, target), use_safetensors=safe, local_files_only=True,
        trust_remote_code=False, **placement)
    if device != "map":
        model.to(target)
    model.eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if attach_memory is not None and (path / MEMORY_FILE).exists():
        from safetensors.torch import load_file

        attach_memory(model, load_file(path / MEMORY_FILE))
    return LoadedModel(model, tokenizer, path, file_fingerprint(path))
