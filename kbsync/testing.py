"""Test doubles shipped with the library: tiny models of every supported family built
from configs (random weights, no download) with a byte-level BPE tokenizer trained on
the shipped corpus, so the whole pipeline runs on a CPU in seconds."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from kbsync.lm.load import LoadedModel, weights_fingerprint

HEAD_SCALE = 25.0
FAMILIES = ("gpt2", "gptj", "gpt_neox", "llama", "qwen2", "mistral")


@lru_cache(maxsize=1)
def tiny_tokenizer(vocab_size: int = 600):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from kbsync.editing.stats import CORPUS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = CORPUS.read_text().splitlines()[:400]
    tok.train_from_iterator(lines, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def tiny_config(family: str, vocab_size: int, layers: int = 4, width: int = 64):
    from transformers import AutoConfig

    common = dict(vocab_size=vocab_size, bos_token_id=0, eos_token_id=0,
                  tie_word_embeddings=False)
    kwargs = {
        "gpt2": dict(n_embd=width, n_layer=layers, n_head=4, n_positions=256),
        "gptj": dict(n_embd=width, n_layer=layers, n_head=4, n_positions=256, rotary_dim=8),
        "gpt_neox": dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=4,
                         intermediate_size=4 * width, max_position_embeddings=256),
    }.get(family, dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=4 * width,
                       max_position_embeddings=256))
    return AutoConfig.for_model(family, **common, **kwargs)


def tiny_model(family: str, seed: int = 0, layers: int = 4) -> LoadedModel:
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = tiny_config(family, len(tokenizer), layers)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():
        # a random head of std 0.02 cannot make any token likely; a trained model's can
        model.get_output_embeddings().weight.mul_(HEAD_SCALE)
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, Path("."), weights_fingerprint(model))


# hyperparameters that fit a 4-layer, 64-wide random model (tests use these tiny models).
# Measured on all six families: a single-token edit becomes top-1 with these. Random
# keys are nearly isotropic, so AlphaEdit needs a high relative threshold and a small α
# (its keys are ~100x smaller than a trained model's). Their statistics read the
# biographies their tokenizer was trained on: with the mixed sample's 4,000 tokens the
# tests' biography-like unrelated prompt falls outside the preserved span (AlphaEdit KL
# 0.15 instead of 0.025).
TINY_HPARAMS = dict(layers=[1, 2], steps=40, lr=0.5, clamp=4.0, kl_factor=0.0,
                    weight_decay=0.0, contexts=2, context_length=4, stats_tokens=4000,
                    stats_corpus="biographies",
                    mom2_weight=100.0, l2=1e-3, nullspace_threshold=0.2, early_stop=True,
                    early_stop_k=2)
# targets that are one token of the tiny vocabulary: a random model cannot steer the
# tokens after the first
TINY_TARGETS = ("American", "British", "football", "University", "played", "New")


def edit_in_sequence(editor_name: str, lm: LoadedModel, batches: list, overrides=None):
    """(editor, patches): each batch edited, applied to `lm` and accepted in turn, as
    apply does with every gate passing."""
    from kbsync.editing.registry import make_editor

    editor = make_editor(editor_name, lm.model.config, {**TINY_HPARAMS, **(overrides or {})})
    patches = []
    for specs in batches:
        patch = editor.edit(lm, specs)
        patch.apply(lm.model)
        editor.accept(patch)
        patches.append(patch)
    return editor, patches
