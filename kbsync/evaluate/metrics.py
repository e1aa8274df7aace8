"""Editing metrics, each computed on the model as it is now.

CounterFact (ROME/MEMIT definitions, probability comparisons on mean token NLL):
  efficacy / generalization: share of rewrite / paraphrase prompts with P(new) > P(true);
  neighborhood_score: share of neighbour prompts with P(true) > P(new).
zsRE (MEMIT-family): efficacy / generalization = teacher-forced token accuracy of the new
  answer; neighborhood_score = token accuracy of the neighbour's gold answer.
Both: locality = agreement of the neighbour prompts' top-1 next token with the unedited
  model (1.0 = untouched); exact_match = greedy decoding starts with the whole new object.
"""

from __future__ import annotations

import torch

from kbsync.lm.score import (accuracy_and_first, answers_match, greedy, target_nll,
                             target_scores, token_accuracy)


def prefers(lm, prompts, better, worse) -> torch.Tensor:
    a, _ = target_nll(lm, prompts, better)
    b, _ = target_nll(lm, prompts, worse)
    return (a < b).float()


def rewrite_scores(lm, cases, dataset: str, paraphrase: bool = False) -> torch.Tensor:
    """Per case: efficacy on the rewrite prompt (or generalization on its paraphrase)."""
    prompts = [c.paraphrase if paraphrase else c.rewrite for c in cases]
    new = [c.spec.target for c in cases]
    if dataset == "counterfact":
        return prefers(lm, prompts, new, [c.true for c in cases])
    return token_accuracy(lm, prompts, new)


def snapshot_scores(lm, cases, dataset: str) -> dict:
    """Scores of every case, plus the raw top-1 of neighbour prompts for locality."""
    nbr = [c.neighbour for c in cases]
    new = [c.spec.target for c in cases]
    eff = rewrite_scores(lm, cases, dataset)
    gen = rewrite_scores(lm, cases, dataset, paraphrase=True)
    # the neighbour's top-1 next token comes with its first teacher-forced position
    if dataset == "counterfact":
        true_nll, _, top1 = target_scores(lm, nbr, [c.true for c in cases])
        nbr_score = (true_nll < target_nll(lm, nbr, new)[0]).float()
    else:
        nbr_score, top1 = accuracy_and_first(lm, nbr, [c.neighbour_answer for c in cases])
    return {"efficacy": float(eff.mean()), "generalization": float(gen.mean()),
            "neighborhood_score": float(nbr_score.mean()), "neighbour_top1": top1}


def exact_match(lm, cases) -> float:
    answers = greedy(lm, [c.rewrite for c in cases], max_new_tokens=8)
    return sum(answers_match(a, c.spec.target) for a, c in zip(answers, cases)) / len(cases)
