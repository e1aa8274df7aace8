"""Editors on tiny random models of every family in the architecture map."""

import pytest
import torch

from kbsync.editing.patch import WeightPatch
from kbsync.editing.registry import make_editor
from kbsync.editing.request import EditSpec
from kbsync.lm.tokens import encode, render
from kbsync.lm import arch
from kbsync.lm.score import kl_per_row, next_token_logprobs, target_nll
from kbsync.testing import FAMILIES, TINY_HPARAMS, tiny_model, tiny_tokenizer

# the prompt ends with the subject, so a random model reads the subject's hidden state
# at the position that predicts the target (DESIGN.md §9 on tiny models); targets are
# single tokens of the tiny vocabulary: a random model cannot steer later tokens
SPEC = EditSpec("The river {subject}", "Danube", "American", key="danube")
UNRELATED = "He was born in the city of"


pytestmark = pytest.mark.usefixtures("fresh_cache")


def _weights(lm):
    return {n: p.clone() for n, p in lm.model.state_dict().items()}


@pytest.mark.parametrize("editor", ["memit", "alphaedit"])
@pytest.mark.parametrize("family", FAMILIES)
def test_single_edit_changes_prediction(family, editor):
    lm = tiny_model(family)
    ed = make_editor(editor, lm.model.config, TINY_HPARAMS)
    prompt = SPEC.text
    nll_before, top1_before = target_nll(lm, [prompt], [SPEC.target])
    weights_before = _weights(lm)

    patch = ed.edit(lm, [SPEC])
    for name, w in lm.model.state_dict().items():          # edit() leaves the model as it was
        assert torch.equal(w, weights_before[name]), name
    patch.apply(lm.model)

    nll_after, top1_after = target_nll(lm, [prompt], [SPEC.target])
    assert not bool(top1_before[0])
    assert bool(top1_after[0]), f"{family}/{editor}: NLL {float(nll_before[0]):.2f} -> {float(nll_after[0]):.2f}"


# random tiny models share most of their key space between prompts, so locality is only
# measurable where the preservation term has room: llama with a stronger λ (measured KL:
# MEMIT 0.003, AlphaEdit 0.025; with λ=1 MEMIT moves the same prompt by KL > 0.2)
# NMKE: post-masking leaks into the preserved keys' space; with α = 0.1 the reference's mask
# still edits and spares the unrelated prompt (α = 1e-3: KL 1.07, top-1 changed); restrict
# keeps the null space at the tiny α (KL 0.02, AlphaEdit's own: 0.025)
@pytest.mark.parametrize("editor, overrides", [("memit", {"mom2_weight": 1000.0}),
                                               ("alphaedit", {}),
                                               ("nmke", {"l2": 0.1}),
                                               ("nmke", {"nmke_solve": "restrict"})])
def test_edit_spares_an_unrelated_prompt(editor, overrides):
    lm = tiny_model("llama")
    ed = make_editor(editor, lm.model.config, {**TINY_HPARAMS, **overrides})
    before = next_token_logprobs(lm, [UNRELATED])
    ed.edit(lm, [SPEC]).apply(lm.model)
    after = next_token_logprobs(lm, [UNRELATED])
    assert float(kl_per_row(before, after).sum()) < 0.05
    assert int(before.argmax()) == int(after.argmax())
    assert target_nll(lm, [SPEC.text], [SPEC.target])[1].all()


def test_preservation_term_is_what_spares_it():
    """The same edit without MEMIT's λC term disturbs the unrelated prompt: the
    locality test above can fail."""
    lm = tiny_model("llama")
    before = next_token_logprobs(lm, [UNRELATED])
    ed = make_editor("memit", lm.model.config, {**TINY_HPARAMS, "mom2_weight": 1e-3})
    ed.edit(lm, [SPEC]).apply(lm.model)
    assert float(kl_per_row(before, next_token_logprobs(lm, [UNRELATED])).sum()) > 0.05


# memit+rect: a dense delta per layer (WeightPatch.dense) instead of factors
@pytest.mark.parametrize("editor", ["memit", "memit+rect"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_patch_apply_revert_round_trip(family, editor):
    lm = tiny_model(family)
    ed = make_editor(editor, lm.model.config, TINY_HPARAMS)
    before = _weights(lm)
    patch = ed.edit(lm, [SPEC])
    patch.apply(lm.model)
    changed = [n for n, w in lm.model.state_dict().items() if not torch.equal(w, before[n])]
    assert sorted(changed) == sorted(arch.mlp_out_name(lm.model, l) for l in TINY_HPARAMS["layers"])
    patch.revert(lm.model)
    for name, w in lm.model.state_dict().items():
        torch.testing.assert_close(w, before[name], atol=1e-6, rtol=0)
    again = WeightPatch.from_tensors(patch.tensors())
    assert again.layers == patch.layers == TINY_HPARAMS["layers"]
    for layer in patch.layers:
        assert torch.equal(again.delta(layer), patch.delta(layer))


def test_gpt2_conv1d_delta_is_transposed():
    lm = tiny_model("gpt2")
    layer = 1
    param = arch.mlp_out(lm.model, layer).weight
    d_out, d_in = arch.dims(lm.model, layer)
    assert param.shape == (d_in, d_out)                      # Conv1D stores (d_in, d_out)
    u, v = torch.randn(d_out, 1), torch.randn(d_in, 1)
    before = param.clone()
    WeightPatch({layer: (u, v)}).apply(lm.model)
    torch.testing.assert_close(param - before, (u @ v.T).T)


def test_alphaedit_state_round_trip_gives_identical_next_edit():
    lm = tiny_model("llama")
    first = make_editor("alphaedit", lm.model.config, TINY_HPARAMS)
    patch = first.edit(lm, [SPEC])
    patch.apply(lm.model)
    first.accept(patch)
    assert first.state_dict(), "AlphaEdit remembers the edited keys"

    second = make_editor("alphaedit", lm.model.config, TINY_HPARAMS)
    second.load_state_dict(first.state_dict())
    nxt = EditSpec("The lake {subject}", "Geneva", "British")
    a, b = first.edit(lm, [nxt]), second.edit(lm, [nxt])
    for layer in a.factors:
        torch.testing.assert_close(a.delta(layer), b.delta(layer))
    fresh = make_editor("alphaedit", lm.model.config, TINY_HPARAMS).edit(lm, [nxt])
    assert not torch.allclose(fresh.delta(1), a.delta(1)), "the memory must change the solve"


def test_batch_of_edits_goes_through_together():
    lm = tiny_model("llama")
    specs = [SPEC, EditSpec("The lake {subject}", "Geneva", "British"),
             EditSpec("The mountain {subject}", "Everest", "football")]
    patch = make_editor("alphaedit", lm.model.config, TINY_HPARAMS).edit(lm, specs)
    patch.apply(lm.model)
    _, top1 = target_nll(lm, [s.text for s in specs], [s.target for s in specs])
    assert top1.all()
    assert max(u.shape[1] for u, _ in patch.factors.values()) == len(specs)   # rank ≤ batch


@pytest.mark.parametrize("bos", [False, True])
@pytest.mark.parametrize("context", ["{}", "Some words here. {}"])
def test_subject_position_is_subject_last_token(bos, context):
    tok = tiny_tokenizer()
    text, span = render(context, "Where is {subject} located?", "Mont Blanc")
    if bos:   # a tokenizer that prepends a special token must not shift positions
        tok = _with_bos(tok)
    batch = encode(tok, [text, "x"], [span, (0, 1)], ["Alps", "y"])
    ids = batch.input_ids[0].tolist()
    pos = int(batch.subject_pos[0])
    assert tok.decode(ids[pos]).strip().endswith("lanc") or "Blanc".endswith(tok.decode(ids[pos]).strip())
    assert tok.decode(ids[pos + 1]).strip().startswith("l")
    assert tok.decode(batch.target_ids[0]).strip() == "Alps"


def _with_bos(tok):
    import copy

    from tokenizers import processors
    tok = copy.deepcopy(tok)
    inner = tok.backend_tokenizer
    inner.post_processor = processors.TemplateProcessing(single="<eos> $A", special_tokens=[("<eos>", 0)])
    return tok


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_cache_gives_the_full_sequence_hidden_states(family):
    from kbsync.editing.hooks import run, shift_block_output
    from kbsync.editing.prefix import PrefixRunner, split_at_subject
    from kbsync.editing.targets import _rows

    lm = tiny_model(family)
    specs = [SPEC, EditSpec("{subject} plays", "Ronaldo", "football"),
             EditSpec("In {subject}, the language is", "France", "British")]
    contexts = ["{}", "One two three. {}", "A. {}"]
    batch = encode(lm.tokenizer, *_rows(specs, contexts)[:3])
    split = split_at_subject(batch)
    assert split.width > 0 and int(split.suffix.subject_pos.abs().sum()) == 0
    rows = torch.arange(len(batch.subject_pos))
    shift = torch.randn(len(rows), 64) * 0.5
    with torch.no_grad():
        full = run(lm.model, batch).last_hidden_state
        with shift_block_output(lm.model, 2, rows, batch.subject_pos, lambda: shift):
            full_shifted = run(lm.model, batch).last_hidden_state
    for frozen_below in (0, 2):
        fast = PrefixRunner(lm.model, split, frozen_below=frozen_below)
        with torch.no_grad():
            runs = [fast()]                              # records blocks below 2
            with shift_block_output(lm.model, 2, rows, split.suffix.subject_pos, lambda: shift):
                runs += [fast(), fast()]                 # replays them
        for suffix, want in zip(runs, [full, full_shifted, full_shifted]):
            for r, cut in enumerate(batch.subject_pos.tolist()):
                n = int(batch.attention_mask[r].sum())
                torch.testing.assert_close(suffix[r, : n - cut], want[r, cut:n],
                                           atol=1e-4, rtol=1e-4)
