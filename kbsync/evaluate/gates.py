"""Gates: a candidate model (parent + patch) is measured against its parent before a batch
is committed. Every gate is a (metric, value, threshold, passed) row for the ledger.

  efficacy        share of the batch's facts whose object is the top-1 answer (teacher forced)
  generalization  the same on the other templates of the relation and the fact's paraphrases
  locality        share of probes (the facts' locality probes, a fixed sample of unrelated
                  facts, fixed general prompts) whose top-1 next token is unchanged
  locality_kl     mean KL(parent ‖ candidate) of those probes' next-token distributions
  retention       share of earlier facts the parent answered that the candidate still answers
  ppl_drift       perplexity on a reference text, relative to the base model, minus 1
  general_knowledge  share of the shipped general-knowledge prompts (probes.GENERAL_FACTS)
                  whose top-1 next token is the BASE model's: damage that builds up batch
                  by batch, which `locality` (against the parent) cannot see
  finite          every edited weight is finite

`check` also scores each edit on its own (`own_passed`: its efficacy and its paraphrases,
from the same forward passes): when a batch fails, the scheduler drops the edits that fail
their own check and retries the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kbsync.evaluate.general import UNSURE
from kbsync.lm.score import kl_per_row, next_token_logprobs, perplexity, target_nll


@dataclass(frozen=True)
class GateCheck:
    metric: str
    value: float
    threshold: float
    passed: bool

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "threshold": self.threshold,
                "passed": self.passed}


@dataclass
class Probes:
    """What a batch is checked on; prompts are rendered strings."""
    edit_prompts: list[str]
    edit_targets: list[str]
    para_prompts: list[str]
    para_targets: list[str]
    locality_prompts: list[str]
    retention_prompts: list[str]
    retention_targets: list[str]
    para_owner: list[int] = field(default_factory=list)   # index of each paraphrase's edit
    general_prompts: list[str] = field(default_factory=list)   # checked against the base
    retention_keys: list[str] = field(default_factory=list)    # the fact of each retention probe


def answered(lm, prompts: list[str], targets: list[str]) -> torch.Tensor:
    if not prompts:
        return torch.zeros(0, dtype=torch.bool)
    return target_nll(lm, prompts, targets)[1]


def parent_reference(lm, probes: Probes) -> dict:
    """What the parent says on the probes, measured once per batch before editing."""
    return {"locality": next_token_logprobs(lm, probes.locality_prompts) if probes.locality_prompts
            else None,
            "retention": answered(lm, probes.retention_prompts, probes.retention_targets)}


@dataclass
class Verdict:
    """The gates' rows, and per edit whether it passed its own check (`own_passed`), for
    the scheduler to drop what fails; `own` is None when the weights are not finite (no
    score means anything then)."""
    checks: list[GateCheck]
    own: list[bool] | None = None
    lost: list[str] = field(default_factory=list)   # retention_keys the candidate lost

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


def own_passed(eff: torch.Tensor, para: torch.Tensor, para_owner: list[int],
               generalization_min: float) -> list[bool]:
    """Per edit: its own prompt answered and its own paraphrases answered at least at
    generalization_min (what more optimisation of that edit alone can fix)."""
    owned: dict[int, list[bool]] = {}
    for owner, hit in zip(para_owner, para.tolist()):
        owned.setdefault(owner, []).append(bool(hit))
    return [bool(hit) and _mean(owned.get(i, [])) >= generalization_min
            for i, hit in enumerate(eff.tolist())]


def _mean(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else 1.0


def check(lm, probes: Probes, parent: dict, gates, base_ppl: float, reference: list[str],
          edited_weights: list[torch.Tensor], *,
          base_general: torch.Tensor | None = None) -> Verdict:
    """`base_general`: the base model's top-1 token on probes.general_prompts
    (general.base_top1); without it the general_knowledge gate is not run."""
    def share(flags: torch.Tensor) -> float:
        return float(flags.float().mean()) if len(flags) else 1.0

    finite = all(bool(torch.isfinite(w).all()) for w in edited_weights)
    checks = [GateCheck("finite", float(finite), 1.0, finite)]
    if not finite:
        return Verdict(checks)
    hits = answered(lm, probes.edit_prompts, probes.edit_targets)
    para_hits = answered(lm, probes.para_prompts, probes.para_targets)
    own = own_passed(hits, para_hits, probes.para_owner, gates.generalization_min)
    eff, gen = share(hits), share(para_hits)
    checks += [GateCheck("efficacy", eff, gates.efficacy_min, eff >= gates.efficacy_min),
               GateCheck("generalization", gen, gates.generalization_min,
                         gen >= gates.generalization_min)]
    if parent["locality"] is not None:
        now = next_token_logprobs(lm, probes.locality_prompts)
        same = share(now.argmax(-1) == parent["locality"].argmax(-1))
        kl = float(kl_per_row(parent["locality"], now).mean())
        checks += [GateCheck("locality", same, gates.locality_min, same >= gates.locality_min),
                   GateCheck("locality_kl", kl, gates.kl_max, kl <= gates.kl_max)]
    known_before, lost = parent["retention"], []
    if known_before.any():
        now = answered(lm, probes.retention_prompts, probes.retention_targets)
        ret = share(now[known_before])
        checks.append(GateCheck("retention", ret, gates.retention_min, ret >= gates.retention_min))
        lost = [key for key, was, still in zip(probes.retention_keys, known_before.tolist(),
                                                 now.tolist()) if was and not still]
    drift = perplexity(lm, reference) / base_ppl - 1.0
    checks.append(GateCheck("ppl_drift", drift, gates.ppl_drift_max, drift <= gates.ppl_drift_max))
    if base_general is not None and probes.general_prompts:
        checks.append(general_knowledge(lm, probes.general_prompts, base_general,
                                        gates.general_knowledge_min))
    return Verdict(checks, own, lost)


def general_knowledge(lm, prompts: list[str], base: torch.Tensor, threshold: float) -> GateCheck:
    """Share of `prompts` whose top-1 next token is still the base model's (`base`, from
    general.base_top1), counting only those the base model answers with confidence."""
    counted = base != UNSURE
    same = next_token_logprobs(lm, prompts).argmax(-1)[counted] == base[counted]
    share = float(same.float().mean()) if len(same) else 1.0
    return GateCheck("general_knowledge", share, threshold, share >= threshold)
