"""ENCORE (Gupta et al. 2025, arXiv 2502.01636): Early stopping and
Norm-Constrained Robust knowledge Editing. MEMIT with

* MPES, most-probable early stopping of the target optimisation: a request's δ is frozen
  once its target is the top-1 token in every prompt for `early_stop_k` steps (the front
  end's TargetParams.early_stop; on by default in hparams/encore.yaml with the reference's
  |prob_cutoff| per family). Over-optimised targets are one of the two causes of
  degradation the paper names;
* a Frobenius penalty λ_n‖Ŵ − W‖²_F on the update against the other one, the growth of
  ‖W‖_F over thousands of edits;
* a memory of past edits' keys, Σ K_p K_pᵀ, held fixed like the general-text keys:

    min_Ŵ λ_p‖(Ŵ − W)K₀‖² + ‖(Ŵ − W)K_p‖² + λ_n‖Ŵ − W‖²_F + ‖ŴK − V‖²
    ⇒ Δ = R Kᵀ (λ_p C₀ + λ_n I + K_p K_pᵀ + K Kᵀ)⁻¹       (float64)

as `encore_main.py` builds it: past batches only in K_p (the current one enters once,
through KKᵀ; accept adds it afterwards). λ_p = mom2_weight, λ_n = `norm_lambda`."""

from __future__ import annotations

import torch

from kbsync.editing.memit import MEMIT
from kbsync.editing.memory import KeyMemory


class ENCORE(KeyMemory, MEMIT):
    name = "encore"

    def system(self, layer, keys, cov, preserve=None):
        norm = float(self.hp.extra.get("norm_lambda", 10.0))
        eye = torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        return super().system(layer, keys, cov, preserve) + norm * eye + self.past_gram(layer, keys)
