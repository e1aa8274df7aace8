"""Model loading: safetensors only unless trusted, fingerprints that follow the weights."""

import pickle

import pytest
import torch

from kbsync.errors import ModelError
from kbsync.lm.load import file_fingerprint, load_model, weights_fingerprint
from kbsync.testing import tiny_model


@pytest.fixture
def model_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KBSYNC_CACHE", str(tmp_path / "cache"))
    lm = tiny_model("llama")
    path = tmp_path / "model"
    lm.model.save_pretrained(path, safe_serialization=True)
    lm.tokenizer.save_pretrained(path)
    return path


def test_loads_a_local_safetensors_dir(model_dir):
    lm = load_model(model_dir, device="cpu")
    assert lm.fingerprint == file_fingerprint(model_dir)
    assert not any(p.requires_grad for p in lm.model.parameters())


def test_pickle_only_dir_is_refused_without_trust(model_dir, tmp_path):
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(sentinel), "w"))

    (model_dir / "model.safetensors").unlink()
    (model_dir / "pytorch_model.bin").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelError, match="pickle"):
        load_model(model_dir, device="cpu")
    assert not sentinel.exists()


@pytest.mark.parametrize("spec, message", [("no/such/dir", "no config.json")])
def test_missing_model_is_a_clear_error(spec, message):
    with pytest.raises(ModelError, match=message):
        load_model(spec, device="cpu")


def test_remote_code_is_never_trusted(model_dir):
    import json
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(cfg))
    (model_dir / "modeling_evil.py").write_text("raise SystemExit('remote code ran')\n")
    lm = load_model(model_dir, device="cpu")          # the built-in class, not the file
    assert type(lm.model).__name__ == "LlamaForCausalLM"


def test_fingerprints_change_with_the_weights(model_dir):
    lm = load_model(model_dir, device="cpu")
    before_mem, before_file = weights_fingerprint(lm.model), file_fingerprint(model_dir)
    with torch.no_grad():
        lm.model.lm_head.weight[0, 0] += 1.0
    assert weights_fingerprint(lm.model) != before_mem
    lm.model.save_pretrained(model_dir, safe_serialization=True)
    assert file_fingerprint(model_dir) != before_file
