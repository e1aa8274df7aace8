"""Tokenisation that knows where the subject and the target are.

Positions come from the fast tokenizer's character offsets, so they do not depend on
leading-space conventions, on a BOS token being prepended, or on the padding side:
sequences are right-padded here by hand and every position is an index into the
unpadded sequence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Batch:
    input_ids: torch.Tensor        # (B, T)
    attention_mask: torch.Tensor   # (B, T)
    subject_pos: torch.Tensor      # (B,) index of the subject's last token
    last_pos: torch.Tensor         # (B,) index of the last prompt token (before the target)
    target_pos: list[torch.Tensor] # per row: positions whose logits predict target tokens
    target_ids: list[torch.Tensor] # per row: the target token ids

    def to(self, device) -> "Batch":
        return Batch(self.input_ids.to(device), self.attention_mask.to(device),
                     self.subject_pos.to(device), self.last_pos.to(device),
                     [p.to(device) for p in self.target_pos],
                     [t.to(device) for t in self.target_ids])


def _last_token_before(offsets: list[tuple[int, int]], char_end: int) -> int:
    """Index of the last token that starts before char_end (special tokens have (0, 0))."""
    best = -1
    for i, (start, end) in enumerate(offsets):
        if end > start and start < char_end:
            best = i
    if best < 0:
        raise ValueError("no token found before character %d" % char_end)
    return best


def encode(tokenizer, texts: list[str], subject_spans: list[tuple[int, int]],
           targets: list[str | None] | None = None) -> Batch:
    """texts[i] is the prompt; targets[i], if given (and not None), is appended after one
    space and its token positions recorded for teacher forcing."""
    rows, subj, last, tpos, tids = [], [], [], [], []
    for i, text in enumerate(texts):
        target = None if targets is None else targets[i]
        full = text if target is None else f"{text} {target.strip()}"
        enc = tokenizer(full, return_offsets_mapping=True, add_special_tokens=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        subj.append(_last_token_before(offsets, subject_spans[i][1]))
        prompt_last = _last_token_before(offsets, len(text))
        last.append(prompt_last)
        target_tokens = [j for j, (s, e) in enumerate(offsets) if e > s and s >= len(text)]
        if target is not None and not target_tokens:
            raise ValueError(f"target {target!r} produced no tokens")
        tids.append(torch.tensor([ids[j] for j in target_tokens], dtype=torch.long))
        tpos.append(torch.tensor([j - 1 for j in target_tokens], dtype=torch.long))
        rows.append(ids[: (target_tokens[-1] + 1) if target_tokens else prompt_last + 1])
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    return Batch(input_ids, mask, torch.tensor(subj), torch.tensor(last), tpos, tids)


def render(context: str, prompt_template: str, subject: str) -> tuple[str, tuple[int, int]]:
    """Fill a context ("... {}") with the prompt and return the subject's character span."""
    prompt = prompt_template.format(subject=subject)
    text = context.format(prompt) if "{}" in context else prompt
    before = context.split("{}")[0] if "{}" in context else ""
    start = len(before) + prompt_template.split("{subject}")[0].__len__()
    return text, (start, start + len(subject))
