"""Models for `bench speed` that need no download: `llama3-8b-shape` is Llama-3-8B's
architecture with random weights (editing time does not depend on what the weights say),
read through the default model's tokenizer (its ids all fall inside Llama-3's vocabulary)."""

from __future__ import annotations

from pathlib import Path

import torch

from kbsync.errors import ModelError

LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                 max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                 tie_word_embeddings=False)


def llama3_8b_config(**overrides):
    from transformers import LlamaConfig

    return LlamaConfig(**{**LLAMA3_8B, **overrides})


def load_shape_model(name: str, device: str):
    """A LoadedModel for a named shape; bf16 on the GPU (the 8B shape does not fit a CPU
    benchmark: 16 GB of weights and hours per edit)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kbsync.lm.load import LoadedModel, pick_device, resolve_model_path

    if name != "llama3-8b-shape":
        raise ModelError(f"unknown model shape {name!r}", hint="known: llama3-8b-shape")
    target = pick_device(device)
    if torch.device(target).type != "cuda":
        raise ModelError("llama3-8b-shape runs on a GPU only", hint="pass --device cuda on a "
                         "machine with a GPU, or --model default on a CPU")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("default"), local_files_only=True)
    torch.manual_seed(0)
    with torch.device(target):
        model = AutoModelForCausalLM.from_config(llama3_8b_config(), dtype=torch.bfloat16)
    model.eval()
    model.requires_grad_(False)
    # seeded weights: a fixed name keys the statistics cache (hashing 16 GB would take minutes)
    return LoadedModel(model, tokenizer, Path(name), f"{name}-seed0")
