"""General knowledge against the base model: the top-1 next token of the shipped
general-knowledge prompts (probes.GENERAL_FACTS), measured once per base model and cached
on disk like the base perplexity (drift.py), then compared with every candidate's."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import torch

from kbsync.lm.load import cache_dir
from kbsync.lm.score import next_token_logprobs


def top1(lm, prompts: list[str]) -> torch.Tensor:
    """(n,) token id of each prompt's most likely next token."""
    return next_token_logprobs(lm, prompts).argmax(-1)


def base_top1(fingerprint: str, prompts: list[str],
              compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The base model's top-1 tokens; compute() measures them on a cache miss only, so a
    later apply need not load the base model again."""
    digest = hashlib.sha256("\n".join(prompts).encode()).hexdigest()[:16]
    path = cache_dir() / "general" / f"{fingerprint}-{digest}.json"
    if path.exists():
        return torch.tensor(json.loads(path.read_text())["top1"], dtype=torch.long)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"top1": value.tolist()}))
    tmp.replace(path)
    return value
