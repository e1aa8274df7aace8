"""Prefix caching for the target optimisation.

δ is added at the subject's last token, so under causal attention every token before it
computes the same thing at every step. Each row is split there: the prefix (context
template and the subject's first tokens) runs once, without gradients, into a key/value
cache; each optimisation step runs only the suffix (the subject's last token, the rest of
the prompt, the target) on top of that cache. With the context templates this cuts the
tokens per step about threefold and gives the same logits as the whole sequence.

Padding: the prefix is right-padded and run with an all-ones mask, so its padding sits
after every real token (causality keeps the real keys exact) and no query attends to
nothing (which would put NaNs into the cache). The suffix's mask then hides those pads.
Position ids are passed explicitly, so absolute-position models (GPT-2) see each token
where it stands in its own row.
"""

from __future__ import annotations

import copy
import functools
import inspect
from dataclasses import dataclass

import torch

from kbsync.lm.tokens import Batch
from kbsync.lm import arch


@dataclass
class SplitBatch:
    prefix_ids: torch.Tensor      # (B, P) right-padded
    prefix_pos: torch.Tensor      # (B, P) position ids
    prefix_mask: torch.Tensor     # (B, P) 1 on real prefix tokens
    suffix: Batch                 # (B, Q) right-padded; subject_pos is 0 in every row
    suffix_pos: torch.Tensor      # (B, Q) position ids

    @property
    def width(self) -> int:
        return self.prefix_ids.shape[1]

    def full_mask(self) -> torch.Tensor:
        return torch.cat([self.prefix_mask, self.suffix.attention_mask], dim=1)


def split_at_subject(batch: Batch) -> SplitBatch:
    lengths = batch.attention_mask.sum(1).tolist()
    cuts = batch.subject_pos.tolist()
    rows = len(cuts)
    p_width = max(cuts)
    q_width = max(n - c for n, c in zip(lengths, cuts))
    pad = 0   # any id: prefix pads are never attended to, suffix pads never read
    prefix_ids = torch.full((rows, p_width), pad, dtype=torch.long)
    prefix_mask = torch.zeros((rows, p_width), dtype=torch.long)
    suffix_ids = torch.full((rows, q_width), pad, dtype=torch.long)
    suffix_mask = torch.zeros((rows, q_width), dtype=torch.long)
    for r, (n, c) in enumerate(zip(lengths, cuts)):
        prefix_ids[r, :c] = batch.input_ids[r, :c]
        prefix_mask[r, :c] = 1
        suffix_ids[r, : n - c] = batch.input_ids[r, c:n]
        suffix_mask[r, : n - c] = 1
    cut = torch.tensor(cuts)[:, None]
    suffix = Batch(suffix_ids, suffix_mask, torch.zeros(rows, dtype=torch.long),
                   batch.last_pos.cpu() - cut[:, 0],
                   [p.cpu() - c for p, c in zip(batch.target_pos, cuts)],
                   [t.cpu() for t in batch.target_ids])
    return SplitBatch(prefix_ids, torch.arange(p_width).expand(rows, -1).contiguous(),
                      prefix_mask, suffix, cut + torch.arange(q_width)[None, :])


def to_device(split: SplitBatch, device) -> SplitBatch:
    return SplitBatch(split.prefix_ids.to(device), split.prefix_pos.to(device),
                      split.prefix_mask.to(device), split.suffix.to(device),
                      split.suffix_pos.to(device))


class _Replay(torch.nn.Module):
    """Stands in for a block whose output on the suffix cannot change: returns it as
    recorded (tuple or tensor, whatever the family's block returns)."""

    def __init__(self, output, block: torch.nn.Module):
        super().__init__()
        self.output = output
        # what a model's forward reads off its blocks besides calling them (transformers
        # 4.5x's Qwen2 picks each block's mask by `attention_type`)
        self.attention_type = getattr(block, "attention_type", None)

    def forward(self, *args, **kwargs):
        return self.output


@functools.lru_cache(maxsize=None)
def _cache_keyword(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_keyword(module) -> str:
    """The name a model's forward takes its key/value cache under: `cache` since
    transformers 5.x renamed it (`past_key_values` there warns that it is deprecated),
    `past_key_values` before."""
    return _cache_keyword(type(module))


class PrefixRunner:
    """Runs the suffix of a SplitBatch over the cached prefix.

    Every run extends a copy of the prefix cache: cropping the extended cache would keep
    the last step's autograd graph alive in it. With `frozen_below=z`, the first run records
    the outputs of blocks 0..z-1 and later runs replay them instead of computing them: δ
    enters at block z's output, so nothing below it changes from step to step."""

    def __init__(self, model, split: SplitBatch, frozen_below: int = 0):
        self.model, self.split = model, split
        self.frozen_below = frozen_below
        self.recorded: list | None = None
        self.cache = None
        if split.width:
            from transformers import DynamicCache

            self.cache = DynamicCache(config=model.config)
            with torch.no_grad():
                model.base_model(input_ids=split.prefix_ids,
                                 attention_mask=torch.ones_like(split.prefix_mask),
                                 position_ids=split.prefix_pos, use_cache=True,
                                 **{cache_keyword(model.base_model): self.cache})

    def _forward(self) -> torch.Tensor:
        s = self.split
        cache = copy.deepcopy(self.cache)
        return self.model.base_model(
            input_ids=s.suffix.input_ids, attention_mask=s.full_mask(),
            position_ids=s.suffix_pos, use_cache=cache is not None,
            **{cache_keyword(self.model.base_model): cache}).last_hidden_state

    def __call__(self) -> torch.Tensor:
        """Last hidden states of the suffix, (B, Q, d)."""
        blocks = arch.get_module(self.model, arch.arch_for(self.model).blocks)
        low = range(self.frozen_below)
        if self.recorded is None:
            self.recorded = [None] * self.frozen_below
            handles = [blocks[i].register_forward_hook(self._recorder(i)) for i in low]
            try:
                with torch.no_grad():
                    return self._forward()
            finally:
                for h in handles:
                    h.remove()
        originals = [blocks[i] for i in low]
        try:
            for i in low:
                blocks[i] = _Replay(self.recorded[i], blocks[i])
            return self._forward()
        finally:
            for i, block in zip(low, originals):
                blocks[i] = block

    def _recorder(self, layer: int):
        def hook(_module, _inputs, output):
            self.recorded[layer] = output
        return hook
