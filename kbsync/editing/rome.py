"""ROME (Meng et al. 2022, arXiv 2202.05262): a rank-one edit of one MLP out-projection.

With k* the subject's last-token key (the MLP input, averaged over the context templates
by the front end), C the keys' second moment and r = v* − W k* the change of the layer's
output the target vector asks for:

    Δ = r (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k*)       so that (W + Δ) k* = W k* + r exactly,

the least change (in the C-weighted sense) that writes the fact. Solved in float64, C
factorised once per layer. `mom2_adjustment: false` skips C⁻¹ (u = k*), as the AlphaEdit
repository's Llama-3 config does.

ROME is a batch-1 method: edit() applies a batch's requests one after another, each on
the model as edited by the ones before it, and returns their sum (rank ≤ batch size).
The front end places the target vector at the block output of the edited layer; at one
position that is the same as adding it to the MLP output, which ROME optimises."""

from __future__ import annotations

import torch

from kbsync.editing.base import LocateThenEdit, Solution
from kbsync.editing.patch import WeightPatch, restore_layers, save_layers
from kbsync.errors import EditorError


class ROME(LocateThenEdit):
    name = "rome"

    def __init__(self, hparams):
        super().__init__(hparams)
        if len(hparams.layers) != 1:
            raise EditorError(f"rome edits one layer, got layers {list(hparams.layers)}",
                              hint="set hparams: {layers: [5]} (one layer) in kbsync.yaml")
        self._lu: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def solve(self, layer, keys, resid, cov, *, preserve=None, batch=None) -> Solution:
        if keys.shape[1] != 1:
            raise EditorError(f"rome solves one request at a time, got {keys.shape[1]}")
        if self.hp.extra.get("mom2_adjustment", True):
            if layer not in self._lu:      # C is fixed per model and layer: factorise once
                self._lu[layer] = torch.linalg.lu_factor(cov)
            lu, pivots = self._lu[layer]
            u = torch.linalg.lu_solve(lu.to(keys), pivots.to(keys.device), keys)   # C⁻¹k*
        else:
            u = keys.clone()
        u = u / u.norm()                   # scale-free: only the direction of C⁻¹k* matters
        return Solution(resid / (u.T @ keys), u)     # Δ = r uᵀ / (uᵀk*)

    def solve_flops(self, d_in: int, n: int) -> float:
        return 2 / 3 * d_in ** 3 + 2 * d_in * d_in * n

    def edit(self, lm, specs) -> WeightPatch:
        if len(specs) <= 1:
            return super().edit(lm, specs)
        layer = self.hp.layers[0]
        originals = save_layers(lm.model, [layer])
        us, vs, dense, stats = [], [], [], []
        try:
            for spec in specs:
                step = super().edit(lm, [spec])    # leaves the model as this loop made it
                if step.state_update:              # PRUNE's memory: one batch, one update
                    raise EditorError("rome with a regularizer that keeps memory needs batch size 1")
                step.apply(lm.model)               # the next request sees this one
                if layer in step.factors:
                    us.append(step.factors[layer][0]), vs.append(step.factors[layer][1])
                dense += list(step.dense.values())   # RECT's sparse updates
                stats.append(self.last_stats)
        finally:   # bit for bit, as base.edit does
            restore_layers(lm.model, originals)
        # one (steps, tokens) pair for bench speed's floor: tokens summed, steps averaged,
        # so that their product is about Σ tokens_i · steps_i
        tokens = {k: sum(s["target_tokens"][k] for s in stats) for k in stats[0]["target_tokens"]}
        self.last_stats = {
            "target_steps": round(sum(s["target_steps"] for s in stats) / len(stats)),
            "target_nll": [x for s in stats for x in s["target_nll"]], "target_tokens": tokens}
        patch = WeightPatch({layer: (torch.cat(us, 1), torch.cat(vs, 1))} if us else {})
        if dense:
            patch.dense[layer] = torch.stack(dense).sum(0)
        return patch
