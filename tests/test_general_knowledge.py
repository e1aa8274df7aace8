"""The general_knowledge gate (issue 22, item 5): the shipped general-knowledge prompts'
top-1 next token against the BASE model's, on a tiny random Llama, damaged by a real
MEMIT patch on one of them."""

from __future__ import annotations

import torch

from kbsync.editing.registry import make_editor
from kbsync.editing.request import EditSpec
from kbsync.evaluate.gates import general_knowledge
from kbsync.evaluate.general import UNSURE, base_top1, top1
from kbsync.lm.score import next_token_logprobs
from kbsync.evaluate.probes import GENERAL_FACTS, general_prompts
from kbsync.testing import TINY_HPARAMS, TINY_TARGETS, tiny_model

EIFFEL = "The Eiffel Tower is in the city of"


def test_the_shipped_set_is_fixed_and_well_formed():
    prompts = general_prompts()
    assert 30 <= len(prompts) <= 50 and len(set(prompts)) == len(prompts)
    assert EIFFEL in prompts and all(answer.strip() for _, answer in GENERAL_FACTS)


def test_a_patch_that_damages_one_general_fact_fails_the_gate():
    lm = tiny_model("llama")
    prompts = general_prompts()
    base = top1(lm, prompts)
    assert general_knowledge(lm, prompts, base, 1.0).passed      # the base agrees with itself

    # teach the Eiffel prompt another answer: the whole prompt is the subject, so the tiny
    # model's next token reads the edited layers (DESIGN.md §9)
    at = prompts.index(EIFFEL)
    ids = [lm.tokenizer(" " + t, add_special_tokens=False).input_ids[0] for t in TINY_TARGETS]
    target = next(t for t, i in zip(TINY_TARGETS, ids) if i != int(base[at]))
    editor = make_editor("memit", lm.model.config, dict(TINY_HPARAMS))
    patch = editor.edit(lm, [EditSpec("{subject}", EIFFEL, target)])
    patch.apply(lm.model)

    now = top1(lm, prompts)
    assert now[at] != base[at]                                   # the damage is real
    check = general_knowledge(lm, prompts, base, 1.0)
    assert check.metric == "general_knowledge" and not check.passed
    assert check.value == float((now == base).float().mean()) < 1.0
    assert general_knowledge(lm, prompts, base, 0.0).passed     # the threshold decides

    # an answer the base model was unsure of does not count: the same damage passes
    unsure = base.clone()
    unsure[at] = UNSURE
    flipped = (now != base) & (unsure != UNSURE)
    check = general_knowledge(lm, prompts, unsure, 1.0)
    assert check.passed == (not bool(flipped.any()))
    assert check.value == float((now == unsure)[unsure != UNSURE].float().mean())


def test_only_answers_leading_by_the_margin_are_kept():
    lm = tiny_model("llama")
    prompts = general_prompts()
    best = next_token_logprobs(lm, prompts).topk(2, dim=-1)
    lead = best.values[:, 0] - best.values[:, 1]
    assert torch.equal(top1(lm, prompts), best.indices[:, 0])   # margin 0: every prompt
    cut = float(lead.median())
    sure = top1(lm, prompts, cut)
    assert torch.equal(sure != UNSURE, lead >= cut) and 0 < int((sure == UNSURE).sum()) < len(prompts)
    assert torch.equal(sure[sure != UNSURE], best.indices[lead >= cut, 0])
    assert bool((top1(lm, prompts, float("inf")) == UNSURE).all())
    # nothing counted: nothing to lose
    assert general_knowledge(lm, prompts, top1(lm, prompts, float("inf")), 1.0).value == 1.0


def test_the_base_answers_are_measured_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("KBSYNC_CACHE", str(tmp_path))
    calls = []

    def compute() -> torch.Tensor:
        calls.append(1)
        return torch.tensor([3, 1, 4])

    first = base_top1("fp", ["a", "b", "c"], compute)
    again = base_top1("fp", ["a", "b", "c"], compute)
    assert calls == [1] and torch.equal(first, again) and again.dtype == torch.long
    base_top1("fp", ["a", "b"], compute)                         # another prompt set: a miss
    assert calls == [1, 1]
    base_top1("fp", ["a", "b", "c"], compute, min_margin=1.0)   # another margin: a miss
    assert calls == [1, 1, 1]
