"""The general_knowledge gate (issue 22, item 5): the shipped general-knowledge prompts'
top-1 next token against the BASE model's, on a tiny random Llama, damaged by a real
MEMIT patch on one of them."""

from __future__ import annotations

import torch

from kbsync.editing.registry import make_editor
from kbsync.editing.request import EditSpec
from kbsync.evaluate.gates import general_knowledge
from kbsync.evaluate.general import base_top1, top1
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
