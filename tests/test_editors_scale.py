"""The scale editors: UltraEdit (gradient features, lifelong moments, ridge solve) and the
NAS regulariser, on tiny random models, plus their pieces on random float64 matrices
against the closed forms of arXiv 2505.14679 / 2602.02543."""

import pytest
import torch

from kbsync.editing.gradients import gradient_features
from kbsync.editing.moments import RunningMoments
from kbsync.editing.patch import WeightPatch
from kbsync.editing.regularize import RegularizerMemory, anchor_targets, trimmed_mean
from kbsync.editing.registry import make_editor
from kbsync.editing.request import EditSpec
from kbsync.editing.ultraedit import (known_facts, prior_factors, pseudo_values,
                                      ridge_factors)
from kbsync.lm import arch
from kbsync.lm.score import next_token_logprobs, target_nll
from kbsync.testing import FAMILIES, TINY_HPARAMS, tiny_model

SPECS = [EditSpec("The river {subject}", "Danube", "American"),
         EditSpec("The lake {subject} is in", "Geneva", "British"),
         EditSpec("{subject} plays", "Paul", "football")]
NEXT = [EditSpec("The mountain {subject}", "Everest", "University")]
UNRELATED = "He was born in the city of"
# fits a 4-layer 64-wide random model: its features are ~100x smaller than a trained one's
# (measured: every family's three edits top-1; the unrelated prompt's KL 0.023, against
# 0.44 at η = 0.01, where a solved request's unit-scale gradient overshoots)
TINY_ULTRA = {"layers": [1, 2], "eta": 0.002, "iterations": 6, "warmup": 50, "chunk": 2,
              "stop_solved": True}

pytestmark = pytest.mark.usefixtures("fresh_cache")


def _ultra(lm, **over):
    return make_editor("ultraedit", lm.model.config, {**TINY_ULTRA, **over})


# -- closed forms on random matrices ---------------------------------------------------

def test_dual_ridge_is_the_primal_ridge():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(7, 20, generator=g, dtype=torch.float64)
    values = torch.randn(7, 5, generator=g, dtype=torch.float64)
    u, v = ridge_factors(keys, values, 0.3)
    primal = torch.linalg.solve(keys.T @ keys + 0.3 * torch.eye(20, dtype=torch.float64),
                                keys.T @ values).T
    torch.testing.assert_close(u @ v.T, primal)
    u2, v2 = prior_factors(keys, values, torch.zeros(20, 20, dtype=torch.float64), 0.3)
    torch.testing.assert_close(u2 @ v2.T, primal)


def test_prior_solve_minimises_its_objective():
    # Δ = argmin ‖ΔK̃ − Ṽ‖² + tr(Δ P Δᵀ) + λ‖Δ‖²: its gradient vanishes there
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(6, 12, generator=g, dtype=torch.float64)
    values = torch.randn(6, 4, generator=g, dtype=torch.float64)
    a = torch.randn(12, 12, generator=g, dtype=torch.float64)
    prior = a @ a.T
    u, v = prior_factors(keys, values, prior, 0.5)
    delta = u @ v.T                                                     # (d_out, d_in)
    grad = (delta @ keys.T - values.T) @ keys + delta @ prior + 0.5 * delta
    assert grad.abs().max() < 1e-9


def test_pseudo_values_scale_the_gradient_by_the_key_norm():
    rows = torch.tensor([[1.0, 2.0, 3.0, -1.0], [0.0, 1.0, 0.5, 2.0]], dtype=torch.float64)
    out = pseudo_values(rows, d_in=2, eta=0.1)
    torch.testing.assert_close(out, torch.tensor([[-1.5, 0.5], [-0.05, -0.2]],
                                                 dtype=torch.float64))


def test_running_moments_merge_in_any_batching_to_the_whole_sample():
    g = torch.Generator().manual_seed(2)
    rows = torch.randn(50, 6, generator=g, dtype=torch.float64) * 3 + 1
    whole = RunningMoments.empty(6, 2).merged(rows)
    parts = RunningMoments.empty(6, 2)
    for a, b in ((0, 1), (1, 17), (17, 18), (18, 50)):      # one-row batches included
        parts = parts.merged(rows[a:b])
    assert parts.n == whole.n == 50
    torch.testing.assert_close(parts.mean, rows.mean(0))
    torch.testing.assert_close(parts.std(), rows.std(0))
    torch.testing.assert_close(parts.scatter, whole.scatter)
    centred = rows[:, -2:] - rows[:, -2:].mean(0)
    torch.testing.assert_close(whole.scatter, centred.T @ centred)
    assert torch.isfinite(RunningMoments.empty(3).merged(rows[:1, :3]).standardise(rows[:2, :3])).all()


def test_whitening_decorrelates_the_gradient_half():
    g = torch.Generator().manual_seed(3)
    mix = torch.tensor([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [0.0, 0.3, 1.0]], dtype=torch.float64)
    rows = torch.cat([torch.randn(4000, 2, generator=g, dtype=torch.float64),
                      torch.randn(4000, 3, generator=g, dtype=torch.float64) @ mix.T], 1)
    moments = RunningMoments.empty(5, 3).merged(rows)
    out = moments.standardise(rows)
    cov = torch.cov(out[:, 2:].T)
    torch.testing.assert_close(cov, torch.eye(3, dtype=torch.float64), atol=0.01, rtol=0)
    plain = RunningMoments.empty(5).merged(rows).standardise(rows)
    assert torch.corrcoef(plain[:, 2:].T)[0, 1] > 0.5           # without: still correlated


def test_moments_round_trip_through_tensors():
    m = RunningMoments.empty(4, 2).merged(torch.randn(9, 4))
    back = RunningMoments.from_tensors(m.to_tensors("moments.3."), "moments.3.")
    assert back.n == m.n
    for a, b in ((m.mean, back.mean), (m.m2, back.m2), (m.scatter, back.scatter)):
        assert torch.equal(a, b)


def test_nas_rescales_to_the_anchor_and_drops_the_outliers():
    class Target:
        h = torch.zeros(4, 2)
        mlp = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
        delta = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0], [30.0, 40.0]])
        z = h + delta
    hp = make_editor("memit+nas", tiny_model("llama").model.config, TINY_HPARAMS).hp
    z, update, stats = anchor_targets(hp, Target, RegularizerMemory())
    norms = torch.tensor([2.0, 3.0, 2 ** 0.5, 50.0])
    anchor = float(trimmed_mean(norms, 0.05))            # 4 rows: nothing trimmed
    assert float(update["nas.anchor"]) == pytest.approx(anchor)
    assert stats["nas_skipped"] == 1                     # 50 > 2 × anchor
    # the target is h − v0 + v*: rescaled rows have the anchor norm, the skipped one is h
    torch.testing.assert_close((z - Target.h + Target.mlp)[:3].norm(dim=1),
                               torch.full((3,), anchor))
    torch.testing.assert_close(z[3], Target.h[3])
    z2, update2, _ = anchor_targets(hp, Target, RegularizerMemory(torch.tensor([1.0])))
    assert not update2                                   # fixed once set
    torch.testing.assert_close(z2[0], torch.tensor([1.0, 0.0]) - Target.mlp[0])


# -- gradient features -----------------------------------------------------------------

def test_gradient_features_are_the_weight_gradient_and_do_not_depend_on_chunking():
    lm = tiny_model("llama")
    feats = gradient_features(lm, SPECS, [1, 3], chunk=16)
    one = gradient_features(lm, SPECS, [1, 3], chunk=1)
    for layer in (1, 3):
        torch.testing.assert_close(feats.keys[layer], one.keys[layer])
        torch.testing.assert_close(feats.grads[layer], one.grads[layer])
    # at the top block an output reaches only its own position's logits, so there Σ g xᵀ
    # over the supervised positions is the whole ∂loss/∂W, as autograd computes it
    from kbsync.lm.tokens import encode
    weight = arch.weight_of(lm.model, 3)
    weight.requires_grad_(True)
    try:
        total = 0.0
        for spec in SPECS:
            b = encode(lm.tokenizer, [spec.text], [(0, len(spec.text))], [spec.target])
            logits = lm.model(input_ids=b.input_ids).logits[0, b.target_pos[0]]
            total = total + torch.nn.functional.cross_entropy(logits, b.target_ids[0],
                                                              reduction="sum")
        (expected,) = torch.autograd.grad(total, [weight])
    finally:
        weight.requires_grad_(False)
    torch.testing.assert_close(feats.grads[3].T @ feats.keys[3], expected, rtol=1e-4, atol=1e-5)
    assert feats.tokens == feats.keys[3].shape[0]


def test_subject_positions_read_one_row_per_request():
    lm = tiny_model("llama")
    feats = gradient_features(lm, SPECS, [1], positions="subject")
    assert feats.keys[1].shape[0] == len(SPECS)


# -- the editor on tiny models ---------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_ultraedit_edit_lands_and_leaves_the_model_as_it_was(family):
    lm = tiny_model(family)
    ed = _ultra(lm)
    weights = {n: p.clone() for n, p in lm.model.state_dict().items()}
    before = target_nll(lm, [s.text for s in SPECS], [s.target for s in SPECS])[0]
    patch = ed.edit(lm, SPECS)
    for name, w in lm.model.state_dict().items():
        assert torch.equal(w, weights[name]), name
    patch.apply(lm.model)
    nll, top1 = target_nll(lm, [s.text for s in SPECS], [s.target for s in SPECS])
    assert bool((nll < before).all()), f"{family}: {before.tolist()} -> {nll.tolist()}"
    assert int(top1.sum()) >= 2, f"{family}: NLL after {nll.tolist()}"


def test_ultraedit_barely_moves_an_unrelated_prompt():
    lm = tiny_model("llama")
    before = next_token_logprobs(lm, [UNRELATED])
    _ultra(lm).edit(lm, SPECS[:1]).apply(lm.model)
    after = next_token_logprobs(lm, [UNRELATED])
    kl = float((before.exp() * (before - after)).sum())
    assert target_nll(lm, [SPECS[0].text], [SPECS[0].target])[1].all()
    assert kl < 0.05 and int(before.argmax()) == int(after.argmax()), kl


def test_one_fact_alone_edits_only_with_warm_statistics():
    # a single-row first turn standardises to zero: nothing would be written
    lm = tiny_model("llama")
    cold = _ultra(lm, warmup=0, positions="subject").edit(lm, SPECS[:1])
    assert all(float(u.abs().max()) == 0.0 for u, _ in cold.factors.values())
    warm = _ultra(lm, positions="subject").edit(lm, SPECS[:1])
    assert all(float(u.abs().max()) > 0.0 for u, _ in warm.factors.values())


@pytest.mark.parametrize("over", [{}, {"whiten": True}])
def test_ultraedit_state_round_trip_gives_identical_next_edit(over):
    lm = tiny_model("llama")
    first = _ultra(lm, **over)
    patch = first.edit(lm, SPECS)
    patch.apply(lm.model)
    first.accept(patch)
    state = first.state_dict()
    assert state["moments.1.n"].item() > 50               # warm-up rows plus this turn's

    rebuilt = _ultra(lm, **over)                           # a snapshot rebuild
    rebuilt.accept(WeightPatch.from_tensors(patch.tensors()))
    loaded = _ultra(lm, **over)
    loaded.load_state_dict(state)
    for other in (rebuilt, loaded):
        assert other.state_dict().keys() == state.keys()
        for k, t in state.items():
            assert torch.equal(other.state_dict()[k], t), k
    a, b, c = (ed.edit(lm, NEXT) for ed in (first, loaded, rebuilt))
    for layer in a.factors:
        assert torch.equal(a.delta(layer), b.delta(layer))
        assert torch.equal(a.delta(layer), c.delta(layer))
    fresh = _ultra(lm, **over).edit(lm, NEXT)
    assert not torch.allclose(fresh.delta(1), a.delta(1)), "the moments must change the solve"


def test_known_facts_are_well_formed():
    specs = known_facts(1000)
    assert len(specs) == 1000
    assert all(s.text.startswith(s.text) and s.subject in s.text and s.target for s in specs)


@pytest.mark.parametrize("editor", ["memit+nas", "alphaedit+nas", "lyaplock+nas"])
def test_nas_regularised_editors_edit_and_keep_the_anchor(editor):
    lm = tiny_model("llama")
    ed = make_editor(editor, lm.model.config, TINY_HPARAMS)
    patch = ed.edit(lm, SPECS[:1])
    assert "nas.anchor" in patch.state_update
    patch.apply(lm.model)
    ed.accept(patch)
    assert target_nll(lm, [SPECS[0].text], [SPECS[0].target])[1].all()
    anchor = ed.state_dict()["nas.anchor"].clone()
    second = ed.edit(lm, NEXT)
    assert "nas.anchor" not in second.state_update
    ed.accept(second)
    assert torch.equal(ed.state_dict()["nas.anchor"], anchor)


# -- RLSEdit ---------------------------------------------------------------------------

def test_rls_recursion_is_the_batch_inverse_and_memits_solve_over_all_keys():
    from kbsync.editing.rlsedit import spd_inverse, woodbury_gain
    g = torch.Generator().manual_seed(4)
    a = torch.randn(10, 30, generator=g, dtype=torch.float64)
    sigma = a @ a.T / 30 + 0.1 * torch.eye(10, dtype=torch.float64)
    c = spd_inverse(50.0 * sigma)
    turns = [torch.randn(10, n, generator=g, dtype=torch.float64) for n in (3, 1, 4)]
    for keys in turns:
        gain, f = woodbury_gain(c, keys)
        c = c - gain @ f.T
    direct = torch.linalg.inv(50.0 * sigma + sum(k @ k.T for k in turns))
    torch.testing.assert_close(c, direct)
    # the next turn's Δ = R (C_t K)ᵀ is MEMIT's R Kᵀ(wΣ + Σ_all K Kᵀ)⁻¹ with every key
    keys, resid = torch.randn(10, 2, generator=g, dtype=torch.float64), torch.randn(
        5, 2, generator=g, dtype=torch.float64)
    gain, _ = woodbury_gain(c, keys)
    memit_all = resid @ keys.T @ torch.linalg.inv(
        50.0 * sigma + sum(k @ k.T for k in turns) + keys @ keys.T)
    torch.testing.assert_close(resid @ gain.T, memit_all)


def test_rlsedit_edits_and_a_rebuilt_chain_gives_the_same_next_edit():
    lm = tiny_model("llama")
    ed = make_editor("rlsedit", lm.model.config, TINY_HPARAMS)
    patches = []
    for spec in (SPECS[0], EditSpec("The lake {subject}", "Geneva", "British")):
        patch = ed.edit(lm, [spec])
        patch.apply(lm.model)
        ed.accept(patch)
        patches.append(WeightPatch.from_tensors(patch.tensors()))
    assert target_nll(lm, ["The lake Geneva"], ["British"])[1].all()
    rebuilt = make_editor("rlsedit", lm.model.config, TINY_HPARAMS)
    for patch in patches:              # as editing/rebuild.py folds a chain: no model at hand
        rebuilt.accept(patch)
    loaded = make_editor("rlsedit", lm.model.config, TINY_HPARAMS)
    loaded.load_state_dict(ed.state_dict())
    a, b, c = (e.edit(lm, NEXT) for e in (ed, rebuilt, loaded))
    for layer in a.factors:
        assert torch.equal(a.delta(layer), b.delta(layer))
        assert torch.equal(a.delta(layer), c.delta(layer))
    fresh = make_editor("rlsedit", lm.model.config, TINY_HPARAMS).edit(lm, NEXT)
    assert not torch.allclose(fresh.delta(1), a.delta(1)), "past keys must change the solve"
