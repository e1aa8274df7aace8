"""NMKE (Liu et al., NeurIPS 2025, arXiv 2510.22139): AlphaEdit whose update
touches only the FFN neurons that matter for the batch, so sequential edits stop
perturbing every neuron of the edited projection.

Attribution, once per batch on the model as it is: for every templated prompt p of the
batch (context × request), at its last token, with y_p the model's top-1 next token, h_p
the residual stream at layer ℓ without the FFN's contribution, m_{p,i} the activation of
neuron i (the out-projection's input, what the keys are made of) and w_i its column,

    s_{p,i} = log p(y_p | lens(h_p + 30·m_{p,i}·w_i)) − log p(y_p | lens(h_p))

lens = the final norm with its scale frozen at the model's final residual at p (as the
reference's patched modeling file does), then the unembedding. Frozen, it is linear:
lens(h + c·w_i) = lens(h) + c·s_p·U g⊙w_i, one (vocab × D) product per layer, not per prompt.

Masks over the D neurons (the reference's NMKE_main.py):
  knowledge-general ("resonance"): neurons whose within-prompt z-score is > 0 in the most
    prompts, the top r_res share; r_res = 0.3 + 0.1·(H̄ / ln D)³, H̄ the mean over prompts of
    the entropy of softmax(30·(s_p − max s_p));
  knowledge-specific ("burst"): the top r_burst share by max_p s_{p,i};
    r_burst = 0.3 + 0.1·(H_b / ln D)², H_b the entropy of q ∝ max(0, max_p s_{p,i});
  mask = union.

Update (`nmke_solve`), Δ = R Xᵀ changing only the out-projection columns of masked neurons:
  mask      the reference: AlphaEdit's solution X (d_in, n) with the rows of unmasked
            neurons zeroed. Zeroing rows moves X out of range(P), so the update leaks
            into the preserved keys' space (tiny random Llama, α = 1e-3: KL 1.07 on an
            unrelated prompt that AlphaEdit moves by 0.02; restrict: 0.02).
  restrict  AlphaEdit's solve with P replaced by the projector Q onto range(P) ∩ {vectors
            on the masked neurons}: the best update under both constraints, null space
            kept. But dim Q can be as small as rank P + |mask| − d_in: with AlphaEdit's
            τ = 0.02 on Llama3 (rank P ≈ 0.7 d_in) a 30 % mask may leave nothing to
            edit with; hence not the default.

Cost: the attribution's log-softmax over the vocabulary for every (prompt, neuron), P·D·V
exponentials per layer (SmolLM2, 2 CPU cores: ~0.07 s per prompt and layer); a GPU does it
in milliseconds."""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from kbsync.editing.alphaedit import AlphaEdit
from kbsync.editing.base import Solution
from kbsync.editing.keys import states_at
from kbsync.errors import EditorError
from kbsync.lm import arch

BLOCK = 1 << 22       # floats of one (prompts × neurons × vocab) block of logits


class NMKE(AlphaEdit):
    name = "nmke"

    def __init__(self, hparams):
        super().__init__(hparams)
        if self.hp.extra.get("nmke_solve", "mask") not in ("mask", "restrict"):
            raise EditorError(f"unknown nmke_solve {self.hp.extra['nmke_solve']!r}",
                              hint="use mask (the reference) or restrict")
        self.masks: dict[int, torch.Tensor] = {}     # the last batch's, for inspection

    def prepare(self, lm, specs, contexts) -> dict[int, torch.Tensor]:
        """The batch's neuron mask per layer, from the model before the edit."""
        hp, x = self.hp, self.hp.extra
        shape = dict(resonance=tuple(x.get("nmke_resonance", (0.3, 0.4))),
                     burst=tuple(x.get("nmke_burst", (0.3, 0.4))),
                     gamma_resonance=float(x.get("nmke_gamma_resonance", 3.0)),
                     gamma_burst=float(x.get("nmke_gamma_burst", 2.0)),
                     temperature=float(x.get("nmke_temperature", 30.0)))
        with self.clock.phase("keys", lm.device):      # a forward pass, like the keys'
            scores = neuron_scores(lm, specs, contexts, sorted(hp.layers),
                                   float(x.get("nmke_amplify", 30.0)))
            self.masks = {layer: neuron_mask(s, **shape) for layer, s in scores.items()}
        self.last_stats["neurons_kept"] = {l: float(m.float().mean())
                                           for l, m in self.masks.items()}
        return self.masks

    def projector(self, layer: int, cov: torch.Tensor, batch=None) -> torch.Tensor:
        proj = super().projector(layer, cov)
        if self.hp.extra.get("nmke_solve", "mask") == "restrict" and batch is not None:
            return restricted_projector(proj, batch[layer])
        return proj

    def solve(self, layer, keys, resid, cov, *, preserve=None, batch=None) -> Solution:
        solution = super().solve(layer, keys, resid, cov, preserve=preserve, batch=batch)
        mask = batch[layer].to(solution.v.device, solution.v.dtype)    # (d_in,)
        return replace(solution, v=solution.v * mask[:, None])         # rows of X = neurons


def restricted_projector(proj: torch.Tensor, mask: torch.Tensor,
                         tol: float = 1e-8) -> torch.Tensor:
    """Projector onto range(P) ∩ span(e_i : i ∈ mask). P's block over the masked neurons has
    eigenvalue 1 exactly on the vectors supported there that P leaves unchanged."""
    idx = mask.to(proj.device).nonzero()[:, 0]
    eigvals, eigvecs = torch.linalg.eigh(proj[idx][:, idx])
    basis = torch.zeros(len(proj), int((eigvals > 1 - tol).sum()), dtype=proj.dtype,
                        device=proj.device)
    basis[idx] = eigvecs[:, eigvals > 1 - tol]
    return basis @ basis.T


def neuron_scores(lm, specs, contexts: list[str], layers: list[int],
                  amplify: float = 30.0) -> dict[int, torch.Tensor]:
    """{layer: s (prompts, D)}, prompts ordered spec-major as the keys' rows are."""
    model = lm.model
    family = arch.arch_for(model)
    top = arch.num_layers(model) - 1
    norm = arch.get_module(model, family.final_norm)
    head = model.get_output_embeddings()                               # (V, d), GPT-J: + bias
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for inputs, outputs in states_at(lm, specs, contexts, layers, sorted(set(layers) | {top}),
                                     position="last_pos"):
        with torch.no_grad():
            dev = head.weight.device
            final = outputs[top].to(dev).float()                # the final norm's input
            lens = _Lens(norm, head, final)
            target = lens(final).argmax(-1)                     # the model's own top-1
            for layer in layers:
                acts = inputs[layer]                                           # (P, D)
                ffn = arch.mlp_out(model, layer)(acts)                         # (P, d)
                resid = (outputs[layer] - ffn).to(dev).float()
                weight = arch.weight_of(model, layer).to(dev).float()          # (d, D)
                out[layer].append(_scores(lens, resid, acts.to(dev).float() * amplify,
                                          weight, target))
    return {layer: torch.cat(parts).cpu() for layer, parts in out.items()}


class _Lens:
    """Logit lens through the final norm with its scale frozen per prompt at `final`."""

    def __init__(self, norm, head, final: torch.Tensor):
        self.centre = isinstance(norm, torch.nn.LayerNorm)       # else RMSNorm
        eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None) or 1e-6
        spread = final.var(-1, unbiased=False) if self.centre else final.pow(2).mean(-1)
        self.scale = torch.rsqrt(spread + eps)[:, None]                        # (P, 1)
        self.gain = norm.weight.float().to(final.device)
        self.unembed = head.weight.float()                                     # (V, d)
        self.offset = 0.0                                  # constant logits: the biases
        if getattr(norm, "bias", None) is not None:
            self.offset = self.unembed @ norm.bias.float().to(final.device)
        if getattr(head, "bias", None) is not None:
            self.offset = self.offset + head.bias.float()

    def direction(self, v: torch.Tensor) -> torch.Tensor:
        """The linear part, unscaled: U (g ⊙ centred v), v (..., d) -> (..., V)."""
        if self.centre:
            v = v - v.mean(-1, keepdim=True)
        return (v * self.gain) @ self.unembed.T

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        return self.direction(v) * self.scale + self.offset


def _scores(lens: _Lens, resid, coef, weight, target) -> torch.Tensor:
    """s (P, D) for residuals (P, d), amplified activations (P, D), columns weight (d, D).

    The log-softmax of every (prompt, neuron) pair runs over the vocabulary: P·D·V
    exponentials, bound by memory traffic more than arithmetic. So each block of pairs is
    written into one reused buffer and shifted by an upper bound of its row maximum known in
    advance (max_v base + the largest the neuron's shift can be), which lets exp and the sum
    run in place instead of through logsumexp's temporaries: 5x faster on a CPU than
    materialising each block with logsumexp, equal to 2e-6. A pair whose bound overshoots so
    far that every term underflows is redone exactly."""
    n_prompts, n_neurons = coef.shape
    floor = math.log(1e-8)                       # the reference clamps probabilities at 1e-8
    base = lens(resid)                                                     # (P, V)
    vocab = base.shape[-1]
    rows = torch.arange(n_prompts, device=base.device)
    base_top = base.max(-1).values                                         # (P,)
    base_picked = base[rows, target]                                       # (P,)
    base_lp = (base_picked - torch.logsumexp(base, -1)).clamp(min=floor)
    shift = coef * lens.scale                    # (P, D): logits move by shift · direction
    out = torch.empty(n_prompts, n_neurons, device=base.device)
    pairs = max(1, BLOCK // vocab)               # (prompt, neuron) pairs per block
    step = max(1, min(n_neurons, pairs))
    per = max(1, pairs // step)                  # prompts per block
    buffer = torch.empty(per * step * vocab, device=base.device)
    for at in range(0, n_neurons, step):
        cols = lens.direction(weight[:, at:at + step].T)                   # (c, V)
        c = cols.shape[0]
        high, low = cols.max(-1).values, cols.min(-1).values               # (c,)
        picked_cols = cols[:, target].T                                    # (P, c)
        for p0 in range(0, n_prompts, per):
            a = shift[p0:p0 + per, at:at + c]                              # (p, c)
            bound = base_top[p0:p0 + per, None] + torch.where(a > 0, a * high, a * low)
            logits = buffer[:a.numel() * vocab].view(a.shape[0], c, vocab)
            torch.mul(a[..., None], cols, out=logits)
            logits.add_(base[p0:p0 + per, None, :]).sub_(bound[..., None]).exp_()
            lse = logits.sum(-1).log_() + bound
            bad = ~torch.isfinite(lse)           # every term underflowed: redo exactly
            if bool(bad.any()):
                p_bad, c_bad = bad.nonzero(as_tuple=True)
                exact = base[p0 + p_bad] + a[p_bad, c_bad, None] * cols[c_bad]
                lse[p_bad, c_bad] = torch.logsumexp(exact, -1)
            picked = base_picked[p0:p0 + per, None] + a * picked_cols[p0:p0 + per]
            out[p0:p0 + per, at:at + c] = (picked - lse).clamp(min=floor) - base_lp[p0:p0 + per, None]
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def neuron_mask(scores: torch.Tensor, resonance=(0.3, 0.4), burst=(0.3, 0.4),
                gamma_resonance: float = 3.0, gamma_burst: float = 2.0,
                temperature: float = 30.0) -> torch.Tensor:
    """Boolean (D,): knowledge-general ∪ knowledge-specific neurons, entropy-sized."""
    scores = scores.float()
    log_d = math.log(scores.shape[1])
    probs = torch.softmax(temperature * (scores - scores.max(1, keepdim=True).values), dim=1)
    spread = (-(probs * (probs + 1e-8).log()).sum(1).mean() / log_d).clamp(0, 1)
    r_res = resonance[0] + (resonance[1] - resonance[0]) * float(spread) ** gamma_resonance
    peak = scores.max(0).values                                               # (D,)
    positive = peak.clamp(min=0)
    if float(positive.sum()) < 1e-8:             # no neuron helps: the lower bound
        r_burst = burst[0]
    else:
        q = positive / (positive.sum() + 1e-8)
        h_b = (-(q * (q + 1e-8).log()).sum() / log_d).clamp(0, 1)
        r_burst = burst[0] + (burst[1] - burst[0]) * float(h_b) ** gamma_burst
    z = (scores - scores.mean(1, keepdim=True)) / (scores.std(1, keepdim=True) + 1e-6)
    counts = (z > 0).float().sum(0)                                          # prompts per neuron
    general = counts >= torch.quantile(counts, 1 - r_res)
    specific = peak >= torch.quantile(peak, 1 - r_burst)
    return general | specific
