"""General knowledge against the base model: the top-1 next token of the shipped
general-knowledge prompts (probes.GENERAL_FACTS), measured once per base model and cached
on disk like the base perplexity (drift.py), then compared with every candidate's.

Only the prompts the base model answers with confidence count: its top-1 must lead the
runner-up by `min_margin` nats (gates.general_knowledge_margin, default 1: at least e
times as likely). On the default model a third of the shipped prompts are coin flips
("The planet closest to the Sun is" -> " Jupiter" 0.12 against " Mars" 0.11); after 86
CounterFact edits every answer that changed was one of those, and 11 batches were
rejected for it while every confident answer (" Paris" for the Eiffel Tower among them)
held (benchmarks/RESULTS.md, "General knowledge: only what the base model knows"). A
prompt that does not count gets top-1 UNSURE."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

import torch

from kbsync.lm.load import cache_dir
from kbsync.lm.score import next_token_logprobs


UNSURE = -1


def top1(lm, prompts: list[str], min_margin: float = 0.0) -> torch.Tensor:
    """(n,) token id of each prompt's most likely next token, UNSURE where it leads the
    runner-up by less than `min_margin` nats."""
    best = next_token_logprobs(lm, prompts).topk(2, dim=-1)
    sure = best.values[:, 0] - best.values[:, 1] >= min_margin
    return torch.where(sure, best.indices[:, 0], torch.full_like(best.indices[:, 0], UNSURE))


def base_top1(fingerprint: str, prompts: list[str], compute: Callable[[], torch.Tensor],
              min_margin: float = 0.0) -> torch.Tensor:
    """The base model's top-1 tokens (top1(base, prompts, min_margin)); compute() measures
    them on a cache miss only, so a later apply need not load the base model again."""
    key = "\n".join(prompts) + f"\nmargin={min_margin!r}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir() / "general" / f"{fingerprint}-{digest}.json"
    if path.exists():
        return torch.tensor(json.loads(path.read_text())["top1"], dtype=torch.long)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"top1": value.tolist()}))
    tmp.replace(path)
    return value
