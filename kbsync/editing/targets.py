"""Target vectors (MEMIT §1.5): for each request find δ, added to the output of block
`z_layer` at the subject's last token, that makes the model say the target.

All requests of a batch and all their context prompts go through the model together:
one forward/backward per step. Loss per request:

    mean over its prompts of the target's mean token NLL (teacher forced)
  + kl_factor · KL(p_δ ‖ p_0) of the next token after "{subject} is a"   (keeps the essence)
  + weight_decay · ‖δ‖ / ‖h‖²                                             (MEMIT's form)

with ‖δ‖ ≤ clamp · ‖h‖ after every step (h: the block's original output there).
Early stop (ENCORE's most-probable early stopping): a request is done once every target
token is the top-1 prediction in every one of its prompts for `early_stop_k` consecutive
steps; its δ is then frozen. The loop ends when all requests are done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kbsync.editing.forcing import Forcing
from kbsync.editing.hooks import capture_block_output, capture_mlp_output, shift_block_output
from kbsync.editing.prefix import PrefixRunner, split_at_subject, to_device
from kbsync.editing.request import EditSpec
from kbsync.lm.tokens import encode, render
from kbsync.lm.score import kl_per_row

KL_TEMPLATE = "{subject} is a"


@dataclass
class TargetResult:
    z: torch.Tensor          # (n, d_model) desired block output on the bare prompt
    delta: torch.Tensor      # (n, d_model)
    h: torch.Tensor          # (n, d_model) the block's output before the edit
    mlp: torch.Tensor        # (n, d_model) the block's MLP output there (NAS's v0)
    steps: int
    nll: torch.Tensor        # (n,) final mean target NLL over prompts
    tokens: dict             # real (unpadded) tokens: prefix (once), suffix and target (per step)


@dataclass(frozen=True)
class TargetParams:
    """The target optimisation's settings, made by HParams.target_params(); no defaults
    here: they live in HParams and hparams/front_end.yaml."""
    z_layer: int
    steps: int
    lr: float
    clamp: float
    kl_factor: float
    weight_decay: float
    early_stop: bool
    early_stop_k: int
    min_loss: float


def _rows(specs: list[EditSpec], contexts: list[str]):
    texts, spans, targets, owner = [], [], [], []
    for i, spec in enumerate(specs):
        for ctx in contexts:
            text, span = render(ctx, spec.prompt, spec.subject)
            texts.append(text), spans.append(span), targets.append(spec.target), owner.append(i)
    for i, spec in enumerate(specs):   # one KL row per request, after all rewrite rows
        text, span = render("{}", KL_TEMPLATE, spec.subject)
        texts.append(text), spans.append(span), targets.append(None), owner.append(i)
    return texts, spans, targets, torch.tensor(owner)


def optimise_targets(lm, specs: list[EditSpec], contexts: list[str], p: TargetParams) -> TargetResult:
    model, device, n = lm.model, lm.device, len(specs)
    texts, spans, targets, owner = _rows(specs, contexts)
    split = to_device(split_at_subject(encode(lm.tokenizer, texts, spans, targets)), device)
    batch = split.suffix            # positions below are in suffix coordinates
    owner = owner.to(device)
    n_rw = n * len(contexts)
    rows = torch.arange(len(texts), device=device)
    unembed = model.get_output_embeddings()

    forcing = Forcing.of(batch, n_rw)      # every target token of the rewrite rows
    kl_rows = rows[n_rw:]

    run_suffix = PrefixRunner(model, split, frozen_below=p.z_layer)
    with torch.no_grad():
        store: dict = {}
        mlp: dict = {}
        with capture_block_output(model, p.z_layer, store), \
                capture_mlp_output(model, p.z_layer, mlp):
            hidden = run_suffix().to(device)
        bare = (rows[:n_rw:len(contexts)], batch.subject_pos[:n_rw:len(contexts)])
        h0 = store[p.z_layer].to(device)[bare].float()
        v0 = mlp[p.z_layer].to(device)[bare].float()
        kl_init = torch.log_softmax(unembed(hidden[kl_rows, batch.last_pos[n_rw:]]).float(), -1)

    delta = torch.zeros(n, h0.shape[1], device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=p.lr)
    h_norm = h0.norm(dim=1)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    streak = torch.zeros(n, dtype=torch.long, device=device)
    nll_req = torch.zeros(n, device=device)
    step = 0
    for step in range(1, p.steps + 1):
        with shift_block_output(model, p.z_layer, rows, batch.subject_pos, lambda: delta[owner]):
            hidden = run_suffix().to(device)      # the last block's device under a device map
        nll_req, req_ok = forcing.per_request(hidden, unembed, owner, n, len(contexts))
        kl_cur = torch.log_softmax(unembed(hidden[kl_rows, batch.last_pos[n_rw:]]).float(), -1)
        kl = kl_per_row(kl_cur, kl_init)
        decay = delta.norm(dim=1) / h_norm ** 2
        loss = nll_req + p.kl_factor * kl + p.weight_decay * decay

        streak = torch.where(req_ok, streak + 1, torch.zeros_like(streak))
        finished = loss.detach() < p.min_loss
        if p.early_stop:
            finished |= streak >= p.early_stop_k
        done |= finished
        if bool(done.all()) or step == p.steps:
            break
        opt.zero_grad()
        loss[~done].sum().backward()
        frozen = delta.detach()[done].clone()
        opt.step()
        with torch.no_grad():
            delta[done] = frozen
            scale = (p.clamp * h_norm / delta.norm(dim=1).clamp_min(1e-12)).clamp(max=1.0)
            delta.mul_(scale[:, None])
    delta = delta.detach()
    # the rewrite rows' prompts alone are what the key passes read (floor of `bench speed`)
    prompts = int(split.prefix_mask[:n_rw].sum()) + int((batch.last_pos[:n_rw] + 1).sum())
    tokens = {"prefix": int(split.prefix_mask.sum()), "suffix": int(batch.attention_mask.sum()),
              "target": len(forcing.ids), "rows": len(texts), "rewrite_prompts": prompts}
    return TargetResult(h0 + delta, delta, h0, v0, step, nll_req.detach(), tokens)
