"""NMKE (neuron-masked AlphaEdit) and the RECT / PRUNE regularisers (editors.md §7, §10), on
tiny random models (kbsync.testing)."""

import math
from types import SimpleNamespace

import pytest
import torch

from kbsync.editing import regularize
from kbsync.editing.contexts import context_templates
from kbsync.editing.hooks import capture_block_output, capture_mlp_inputs, run
from kbsync.editing.hparams import resolve_hparams
from kbsync.editing.nmke import neuron_mask, neuron_scores
from kbsync.editing.patch import WeightPatch
from kbsync.editing.registry import make_editor
from kbsync.editing.request import EditSpec
from kbsync.lm.tokens import encode, render
from kbsync.errors import EditorError
from kbsync.lm import arch
from kbsync.lm.score import target_nll
from kbsync.testing import TINY_HPARAMS, edit_in_sequence, tiny_model

SPEC = EditSpec("The river {subject}", "Danube", "American", key="danube")
NEXT = [EditSpec("The lake {subject}", "Geneva", "British"),
        EditSpec("The mountain {subject}", "Everest", "football")]


pytestmark = pytest.mark.usefixtures("fresh_cache")


# -- every new editor / option still edits ----------------------------------------------

@pytest.mark.parametrize("editor, family, overrides", [
    ("nmke", "llama", {}),
    ("nmke", "gpt2", {}),                            # Conv1D: columns of the transposed weight
    ("nmke", "gptj", {"nmke_solve": "restrict"}),    # lm_head with a bias in the lens
    ("memit+rect", "llama", {}),
    ("memit+rect", "gpt2", {}),
    ("memit+prune", "llama", {}),
    ("memit+prune", "gpt2", {}),
    ("alphaedit+rect", "llama", {}),
    ("alphaedit", "qwen2", {"regularizer": "prune"}),   # the option through the hparams
])
def test_edit_changes_prediction(editor, family, overrides):
    lm = tiny_model(family)
    ed = make_editor(editor, lm.model.config, {**TINY_HPARAMS, **overrides})
    assert not bool(target_nll(lm, [SPEC.text], [SPEC.target])[1][0])
    ed.edit(lm, [SPEC]).apply(lm.model)
    nll, top1 = target_nll(lm, [SPEC.text], [SPEC.target])
    assert bool(top1[0]), f"{family}/{editor}: NLL {float(nll[0]):.2f}"


# -- NMKE -------------------------------------------------------------------------------

@pytest.mark.parametrize("family, solve", [("llama", "mask"), ("gpt2", "mask"),
                                           ("llama", "restrict")])
def test_nmke_update_touches_only_masked_neurons(family, solve):
    lm = tiny_model(family)
    ed = make_editor("nmke", lm.model.config, {**TINY_HPARAMS, "nmke_solve": solve})
    patch = ed.edit(lm, [SPEC, *NEXT])
    assert sorted(ed.masks) == sorted(patch.layers) == TINY_HPARAMS["layers"]
    for layer, mask in ed.masks.items():
        delta = patch.delta(layer)                                   # (d_out, d_in)
        assert 0.3 <= float(mask.float().mean()) < 0.95, "a mask, not all neurons"
        assert torch.count_nonzero(delta[:, ~mask]) == 0
        assert bool((delta[:, mask].abs().sum(0) > 0).all()), "every kept neuron may move"


def test_nmke_scores_follow_their_definition():
    """s_{p,i} = log p(y_p | lens(h_p + 30 m_{p,i} w_i)) − log p(y_p | lens(h_p)), computed
    here the slow way: the FFN's own output from a hook, one neuron at a time."""
    for family in ("gpt2", "gptj", "llama"):
        lm = tiny_model(family)
        model, layer = lm.model, 2
        norm = arch.get_module(model, arch.arch_for(model).final_norm)
        head = model.get_output_embeddings()
        with torch.no_grad():          # zero at init: give the lens' offsets something to do
            for module in (norm, head):
                if getattr(module, "bias", None) is not None:
                    module.bias.normal_()
        contexts = context_templates(lm, 2, 4)
        scores = neuron_scores(lm, [SPEC], contexts, [layer])[layer]          # (P, D)
        texts = [render(c, SPEC.prompt, SPEC.subject) for c in contexts]
        batch = encode(lm.tokenizer, [t for t, _ in texts], [s for _, s in texts])
        acts, ffn = {}, {}
        mlp = arch.block(model, layer).mlp
        handle = mlp.register_forward_hook(lambda _m, _i, out: ffn.setdefault("out", out))
        with torch.no_grad(), capture_mlp_inputs(model, [layer], acts):
            out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                        output_hidden_states=True)
        handle.remove()
        top, store = arch.num_layers(model) - 1, {}
        with torch.no_grad(), capture_block_output(model, top, store):
            run(model, batch)                                   # the final norm's input
        for p, pos in enumerate(batch.last_pos.tolist()):
            final = store[top][p, pos]
            lens = _frozen_lens(norm, head, final)
            torch.testing.assert_close(lens(final), out.logits[p, pos], atol=1e-4, rtol=1e-4)
            y = int(out.logits[p, pos].argmax())
            h = out.hidden_states[layer + 1][p, pos] - ffn["out"][p, pos]
            base = torch.log_softmax(lens(h), -1)[y]
            weight = arch.weight_of(model, layer)
            for i in (0, 7, 100, 255):
                moved = lens(h + 30 * acts[layer][p, pos, i] * weight[:, i])
                want = torch.log_softmax(moved, -1)[y].clamp(min=math.log(1e-8)) - base
                assert abs(float(scores[p, i]) - float(want)) < 1e-3, (family, p, i)


def _frozen_lens(norm, head, final):
    layer_norm = isinstance(norm, torch.nn.LayerNorm)
    eps = getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6))
    spread = final.var(unbiased=False) if layer_norm else final.pow(2).mean()
    scale = torch.rsqrt(spread + eps)

    def lens(v):
        v = v - v.mean() if layer_norm else v
        out = v * scale * norm.weight + (norm.bias if layer_norm else 0)
        return head(out)
    return lens


def test_neuron_mask_keeps_general_and_specific_neurons():
    torch.manual_seed(0)
    scores = torch.randn(12, 400)             # 12 prompts, 400 neurons: peaks ≈ 1.6
    scores[:, 5] = 0.3                        # above average in every prompt, a low peak
    scores[:, 9] = -3.0
    scores[3, 9] = 50.0                       # one prompt's neuron
    scores[:, 11] = -10.0                     # hurts everywhere
    mask = neuron_mask(scores)
    assert bool(mask[5]) and bool(mask[9]) and not bool(mask[11])
    kept = float(mask.float().mean())
    assert 0.3 <= kept <= 0.8                 # the union of two 30-40 % shares


# -- RECT -------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [0.05, 0.2, 0.4, 0.9])
def test_rect_keeps_exactly_the_largest_relative_changes(keep):
    torch.manual_seed(1)
    delta, weight = torch.randn(64, 256, dtype=torch.float64), torch.randn(64, 256)
    kept = regularize.rect(delta, weight, keep)
    nonzero = kept != 0
    assert int(nonzero.sum()) == round(keep * delta.numel())
    assert torch.equal(kept[nonzero], delta[nonzero])                    # values untouched
    relative = delta.abs() / (weight.double().abs() + 1e-8)
    assert float(relative[nonzero].min()) >= float(relative[~nonzero].max())


def test_rect_in_the_editor_sparsifies_the_solve():
    """The first layer's Δ of memit+rect is RECT of plain MEMIT's (same keys, targets)."""
    lm = tiny_model("llama")
    plain = make_editor("memit", lm.model.config, TINY_HPARAMS).edit(lm, [SPEC])
    ed = make_editor("memit", lm.model.config,
                     {**TINY_HPARAMS, "regularizer": "rect", "rect_keep": 0.2})
    patch = ed.edit(lm, [SPEC])
    assert ed.hp.extra["rect_keep"] == 0.2 and ed.hp.to_dict()["extra"]["regularizer"] == "rect"
    first = min(patch.layers)
    want = regularize.rect(plain.delta(first).double(), arch.weight_of(lm.model, first), 0.2)
    torch.testing.assert_close(patch.delta(first), want.float())
    for layer in patch.layers:
        assert not patch.factors and layer in patch.dense
        assert int((patch.delta(layer) != 0).sum()) == round(0.2 * patch.delta(layer).numel())


# -- PRUNE ------------------------------------------------------------------------------

@pytest.mark.parametrize("reduce, f", [
    ("log", lambda s, s0: s0 + math.log(s) - math.log(s0)),
    ("log2", lambda s, s0: s0 + math.log2(s) - math.log2(s0)),
    ("linear", lambda s, s0: (s + s0) / 2),
])
def test_restrain_maps_large_singular_values(reduce, f):
    torch.manual_seed(2)
    u, _ = torch.linalg.qr(torch.randn(40, 6, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(90, 6, dtype=torch.float64))
    sigma = torch.tensor([50.0, 20.0, 5.0, 3.0, 1.0, 0.5], dtype=torch.float64)
    out, changed = regularize.restrain((u * sigma) @ v.T, 4.0, regularize.REDUCE[reduce])
    assert changed
    want = [f(s, 4.0) if s >= 4.0 else s for s in sigma.tolist()]
    got = torch.linalg.svdvals(out)[:6]
    torch.testing.assert_close(got, torch.tensor(sorted(want, reverse=True), dtype=torch.float64))
    small = (u[:, 2:] * sigma[2:]) @ v[:, 2:].T
    assert regularize.restrain(small, 6.0)[0] is small        # below σ₀: untouched


@pytest.mark.parametrize("editor", ["memit+prune", "alphaedit+prune"])
def test_prune_bounds_the_accumulated_delta(editor):
    lm = tiny_model("llama")
    base = {l: arch.weight_of(lm.model, l).detach().clone() for l in TINY_HPARAMS["layers"]}
    ed, patches = edit_in_sequence(editor, lm, [[SPEC], NEXT[:1], NEXT[1:]])
    for layer, w0 in base.items():
        sigma0 = float(torch.linalg.matrix_norm(w0.double(), 2))
        assert float(ed.regularizer.prune_sigma0[layer]) == pytest.approx(sigma0, rel=1e-6)
        raw = sum(p.state_update[f"prune.{layer}.U"] @ p.state_update[f"prune.{layer}.V"].T
                  for p in patches)
        torch.testing.assert_close(ed.regularizer.prune_raw[layer], raw, atol=1e-5, rtol=1e-5)
        raw_s = torch.linalg.svdvals(raw.double())
        assert float(raw_s[0]) > 2 * sigma0, "the test needs the restraint to act"
        want = torch.where(raw_s >= sigma0, sigma0 + torch.log(raw_s / sigma0), raw_s)
        got = torch.linalg.svdvals((arch.weight_of(lm.model, layer).detach() - w0).double())
        torch.testing.assert_close(got, want.sort(descending=True).values, atol=1e-4, rtol=1e-4)
        assert float(got[0]) <= sigma0 + math.log(float(raw_s[0]) / sigma0) + 1e-4


@pytest.mark.parametrize("editor", ["memit+prune", "alphaedit+prune"])
def test_prune_state_round_trips(editor):
    lm = tiny_model("llama")
    first, patches = edit_in_sequence(editor, lm, [[SPEC]])
    assert any(k.startswith("prune.raw.") for k in first.state_dict())
    second = make_editor(editor, lm.model.config, TINY_HPARAMS)
    second.load_state_dict(first.state_dict())
    rebuilt = make_editor(editor, lm.model.config, TINY_HPARAMS)     # as rebuild.load_at
    for patch in patches:
        rebuilt.accept(WeightPatch.from_tensors(patch.tensors()))
    assert sorted(rebuilt.state_dict()) == sorted(first.state_dict())
    a, b, c = (ed.edit(lm, NEXT[:1]) for ed in (first, second, rebuilt))
    for layer in a.layers:
        torch.testing.assert_close(b.delta(layer), a.delta(layer))
        torch.testing.assert_close(c.delta(layer), a.delta(layer))
    fresh = make_editor(editor, lm.model.config, TINY_HPARAMS).edit(lm, NEXT[:1])
    assert not torch.allclose(fresh.delta(1), a.delta(1)), "the memory must change the edit"


# -- names, hparams, patches ---------------------------------------------------------------

def test_composite_names_resolve_to_the_base_editor_with_the_option():
    config = tiny_model("llama").model.config
    a = make_editor("alphaedit+rect", config, TINY_HPARAMS)
    b = make_editor("alphaedit", config, {**TINY_HPARAMS, "regularizer": "rect"})
    assert type(a).__name__ == "AlphaEdit" and a.name == "alphaedit"
    assert a.hp == b.hp and a.hp.extra["rect_keep"] == 0.4
    assert "regularizer" not in make_editor("memit", config, TINY_HPARAMS).hp.extra
    for bad in [("memit+sparse", {}), ("memit+rect", {"regularizer": "prune"}),
                ("memit", {"regularizer": "lora"}), ("memit+prune", {"prune_reduce": "cube"}),
                ("nmke", {"nmke_solve": "both"})]:
        with pytest.raises(EditorError):
            make_editor(bad[0], config, {**TINY_HPARAMS, **bad[1]})


def test_nmke_hparams_for_the_default_model():
    smollm = SimpleNamespace(model_type="llama", num_hidden_layers=30, hidden_size=576)
    hp = resolve_hparams("nmke", smollm)
    assert hp.layers == (3, 4, 5, 6, 7) and hp.l2 == 10 and hp.nullspace_threshold == 0.02
    assert hp.extra["nmke_amplify"] == 30 and hp.extra["nmke_resonance"] == [0.3, 0.4]
    llama3 = SimpleNamespace(model_type="llama", num_hidden_layers=32, hidden_size=4096)
    assert resolve_hparams("nmke", llama3).l2 == 1                      # EasyEdit's


def test_dense_patch_round_trips():
    torch.manual_seed(3)
    lm = tiny_model("gpt2")                                  # transposed Conv1D weight
    before = arch.weight_of(lm.model, 1).detach().clone()
    patch = WeightPatch({1: (torch.randn(64, 2), torch.randn(256, 2))},
                        {"prune.1.U": torch.ones(1)},
                        {1: torch.randn(64, 256), 2: torch.randn(64, 256)})
    assert patch.layers == [1, 2]
    again = WeightPatch.from_tensors(patch.tensors())
    for layer in patch.layers:
        assert torch.equal(again.delta(layer), patch.delta(layer))
    assert torch.equal(again.state_update["prune.1.U"], torch.ones(1))
    again.apply(lm.model)
    torch.testing.assert_close(arch.weight_of(lm.model, 1) - before, patch.delta(1))
    again.revert(lm.model)
    torch.testing.assert_close(arch.weight_of(lm.model, 1), before, atol=1e-5, rtol=0)
    patch.dense[2][0, 0] = float("nan")
    assert not patch.is_finite()
