"""Gradient features: one teacher-forced forward and backward over "prompt target", reading
at each edited MLP out-projection its input x and the gradient of the loss with respect to
its output, at the positions that predict a target token (the last prompt token and all
but the last target token). These are the keys K and gradients G of UltraEdit
(arXiv 2505.14679): no subject span, no per-edit optimisation.

The loss is the *sum* of the target tokens' cross-entropies, so a token's features do not
depend on which other requests share its forward pass (the reference averages per group
of ten, which makes the result depend on the grouping): `chunk` is a compute unit only.
Parameters get no gradient; the output of the lowest edited projection is made a leaf that
requires one, so the backward runs only through the blocks above it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kbsync.editing.request import EditSpec
from kbsync.lm.tokens import encode
from kbsync.lm import arch


@dataclass
class Features:
    keys: dict[int, torch.Tensor]    # layer -> (N, d_in)  inputs of the projection
    grads: dict[int, torch.Tensor]   # layer -> (N, d_out) ∂loss/∂output
    tokens: int                      # N: supervised positions over the batch
    sequence_tokens: int             # tokens fed forward (for the speed floor)
    loss: float                      # summed target cross-entropy before the edit
    owner: torch.Tensor              # (N,) which request each row belongs to
    solved: list[bool]               # per request: every target token already top-1


POSITIONS = ("answer", "subject", "subject+answer")


def subject_span(spec: EditSpec) -> tuple[int, int]:
    """Characters of the subject in the rendered prompt; the whole prompt when the fact
    names no subject (a question-form fact)."""
    at = spec.prompt.find("{subject}")
    if at < 0 or not spec.subject:
        return 0, len(spec.text)
    return at, at + len(spec.subject)


def gradient_features(lm, specs: list[EditSpec], layers: list[int], chunk: int = 16,
                      positions: str = "answer") -> Features:
    """`positions`: where features are read. "answer" (UltraEdit's): the positions that
    predict a target token; "subject": the subject's last token (MEMIT's lookup token,
    which neighbours with the same relation do not share); "subject+answer": both."""
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    layers = sorted(layers)
    keys: dict[int, list] = {l: [] for l in layers}
    grads: dict[int, list] = {l: [] for l in layers}
    counts: dict[int, int] = {}
    solved: dict[int, bool] = {}
    fed, loss_total = 0, 0.0
    # longest first: chunks of similar length waste little on padding
    order = sorted(range(len(specs)), key=lambda i: -len(specs[i].text) - len(specs[i].target))
    for s in range(0, len(order), chunk):
        part = [specs[i] for i in order[s:s + chunk]]
        batch = encode(lm.tokenizer, [p.text for p in part], [subject_span(p) for p in part],
                       [p.target for p in part]).to(lm.device)
        read = _read_positions(batch, positions)
        k, g, loss, ok = _one_pass(lm, batch, layers, read)
        solved.update(zip(order[s:s + chunk], ok))
        for layer in layers:
            keys[layer].append(k[layer])
            grads[layer].append(g[layer])
        counts.update({i: len(p) for i, p in zip(order[s:s + chunk], read)})
        fed += int(batch.attention_mask.sum())
        loss_total += loss
    # rows back in request order: the result does not depend on the sorting
    inverse = _row_order(order, counts)
    n = len(specs)
    owner = torch.repeat_interleave(torch.arange(n), torch.tensor([counts[i] for i in range(n)]))
    return Features({l: torch.cat(keys[l])[inverse] for l in layers},
                    {l: torch.cat(grads[l])[inverse] for l in layers},
                    sum(counts.values()), fed, loss_total, owner, [solved[i] for i in range(n)])


def _row_order(order: list[int], counts: dict[int, int]) -> torch.Tensor:
    """Index that puts rows grouped per request in `order` back in request order."""
    starts, at = {}, 0
    for i in order:
        starts[i], at = at, at + counts[i]
    return torch.cat([torch.arange(starts[i], starts[i] + counts[i]) for i in sorted(counts)])


def _read_positions(batch, positions: str) -> list[torch.Tensor]:
    subject = [batch.subject_pos[r:r + 1] for r in range(len(batch.target_pos))]
    if positions == "answer":
        return batch.target_pos
    if positions == "subject":
        return subject
    # the subject token may also be the last prompt token: read it once
    return [torch.unique(torch.cat([s, t])) for s, t in zip(subject, batch.target_pos)]


def _rows_cols(per_row: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.cat([torch.full((len(p),), r, dtype=torch.long, device=p.device)
                      for r, p in enumerate(per_row)])
    return rows, torch.cat(per_row)


def _one_pass(lm, batch, layers: list[int], read: list[torch.Tensor]):
    model = lm.model
    rows, cols = _rows_cols(read)
    t_rows, t_cols = _rows_cols(batch.target_pos)
    inputs: dict[int, torch.Tensor] = {}
    outputs: dict[int, torch.Tensor] = {}

    def hook(module, args, output, layer):
        inputs[layer] = args[0].detach()[rows, cols]
        if layer == layers[0]:                  # the leaf the backward stops at
            output = output.detach().requires_grad_(True)
        outputs[layer] = output
        return output

    handles = [arch.mlp_out(model, l).register_forward_hook(
        lambda m, a, o, l=l: hook(m, a, o, l)) for l in layers]
    try:
        with torch.enable_grad():
            hidden = model.base_model(input_ids=batch.input_ids,
                                      attention_mask=batch.attention_mask).last_hidden_state
            logits = model.get_output_embeddings()(hidden[t_rows, t_cols]).float()
            ids = torch.cat(batch.target_ids)
            loss = torch.nn.functional.cross_entropy(logits, ids, reduction="sum")
            got = torch.autograd.grad(loss, [outputs[l] for l in layers])
    finally:
        for h in handles:
            h.remove()
    grads = {l: g[rows, cols].detach() for l, g in zip(layers, got)}
    hit = (logits.detach().argmax(-1) == ids).split([len(p) for p in batch.target_pos])
    return ({l: inputs[l].float() for l in layers}, {l: grads[l].float() for l in layers},
            float(loss.detach()), [bool(h.all()) for h in hit])
