"""ENCORE, LyapLock (alone and around MEMIT / AlphaEdit) and ROME on tiny random models,
plus their solves on random matrices against the closed forms of editors.md §2, §4, §5."""

import math

import pytest
import torch

from kbsync.editing.hparams import HParams, resolve_hparams
from kbsync.editing.lyaplock import LyapLock, queue_step
from kbsync.editing.patch import WeightPatch
from kbsync.editing.registry import editor_names, make_editor
from kbsync.editing.request import EditSpec
from kbsync.errors import EditorError
from kbsync.lm.score import next_token_logprobs, target_nll
from kbsync.testing import TINY_HPARAMS, tiny_model

SPEC = EditSpec("The river {subject}", "Danube", "American", key="danube")
NEXT = EditSpec("The lake {subject}", "Geneva", "British")
UNRELATED = "He was born in the city of"
EDITORS = ["encore", "lyaplock", "lyaplock+memit", "lyaplock+alphaedit", "rome"]
# per editor, on top of TINY_HPARAMS: the tiny model's keys are ~100x smaller than a
# trained model's, so ENCORE's λ_n = 10 (set against those) would forbid any update; ROME
# edits one layer
TINY = {"encore": {"norm_lambda": 0.1}, "rome": {"layers": [2]}}


pytestmark = pytest.mark.usefixtures("fresh_cache")


def _editor(name, lm, **overrides):
    return make_editor(name, lm.model.config, {**TINY_HPARAMS, **TINY.get(name, {}), **overrides})


def _kl(before, after) -> float:
    return float((before.exp() * (before - after)).sum())


@pytest.mark.parametrize("editor", EDITORS)
@pytest.mark.parametrize("family", ["gpt2", "llama", "gpt_neox"])
def test_single_edit_changes_prediction(family, editor):
    lm = tiny_model(family)
    ed = _editor(editor, lm)
    weights = {n: p.clone() for n, p in lm.model.state_dict().items()}
    assert not bool(target_nll(lm, [SPEC.text], [SPEC.target])[1][0])
    patch = ed.edit(lm, [SPEC])
    for name, w in lm.model.state_dict().items():          # edit() leaves the model as it was
        assert torch.equal(w, weights[name]), name
    patch.apply(lm.model)
    nll, top1 = target_nll(lm, [SPEC.text], [SPEC.target])
    assert bool(top1[0]), f"{family}/{editor}: NLL after {float(nll[0]):.2f}"


# locality is measurable on tiny llama where the preservation term has room (as in
# test_editing.py). Measured KL: encore 0.005, lyaplock(+memit) 0.003, +alphaedit 0.002,
# rome 0.051 (one layer takes the whole change). The last rows are the controls: without
# the term that spares it, the same edit moves the prompt (KL 0.59, 0.19, 0.46).
@pytest.mark.parametrize("editor, overrides, spared, bound", [
    ("encore", {}, True, 0.05),
    ("lyaplock", {"mom2_weight": 1000.0}, True, 0.05),
    ("lyaplock+memit", {"mom2_weight": 1000.0}, True, 0.05),
    ("lyaplock+alphaedit", {"mom2_weight": 1000.0}, True, 0.05),
    ("rome", {}, True, 0.1),
    ("lyaplock", {"mom2_weight": 1e-3}, False, 0.05),
    ("encore", {"mom2_weight": 1e-3, "norm_lambda": 1e-3}, False, 0.05),
    ("rome", {"mom2_adjustment": False}, False, 0.1),
])
def test_edit_spares_an_unrelated_prompt(editor, overrides, spared, bound):
    lm = tiny_model("llama")
    ed = _editor(editor, lm, **overrides)
    before = next_token_logprobs(lm, [UNRELATED])
    ed.edit(lm, [SPEC]).apply(lm.model)
    after = next_token_logprobs(lm, [UNRELATED])
    assert target_nll(lm, [SPEC.text], [SPEC.target])[1].all()
    if spared:
        assert _kl(before, after) < bound
        assert int(before.argmax()) == int(after.argmax())
    else:
        assert _kl(before, after) > bound


def test_queue_rises_above_its_budget_and_falls_below_it():
    d_base, alpha = 2.0, 60.0
    floor = math.sqrt(alpha * d_base)                      # Z₀ = Z_max = √(αD_base)
    assert queue_step(floor, d_base, d_base, alpha) == floor   # first batch: PL = D_base
    up = queue_step(20.0, 3 * alpha * d_base, d_base, alpha)    # PL over the budget αD_base
    assert up == pytest.approx(20.0 + 2 * alpha * d_base / floor)
    down = queue_step(up, 0.5 * alpha * d_base, d_base, alpha)  # PL under it
    assert floor < down < up
    assert queue_step(floor + 0.1, 0.0, d_base, alpha) == floor  # never below the floor
    assert queue_step(floor, alpha * d_base, d_base, alpha, b=0.5) == floor + 0.5


@pytest.mark.parametrize("editor", ["lyaplock", "lyaplock+memit"])
def test_queue_weights_the_next_solve_by_the_violation(editor):
    """Budget below the drift (α = 0.5): the queue rises and so does the preservation
    weight a·Z·λ; with the reference α = 60 it stays at its floor (weight λ)."""
    lm = tiny_model("llama")
    weights = {}
    for alpha in (0.5, 60.0):
        ed = _editor(editor, lm, lyap_alpha=alpha)
        for spec in (SPEC, NEXT):
            patch = ed.edit(lm, [spec])
            ed.accept(patch)
        weights[alpha] = [ed.weight(l) for l in TINY_HPARAMS["layers"]]
    lam = TINY_HPARAMS["mom2_weight"]
    assert all(w > 1.5 * lam for w in weights[0.5])        # 2λ after one batch, then Z moves
    assert weights[60.0] == pytest.approx([lam, lam])


def test_encore_stops_early_once_the_target_is_top1():
    lm = tiny_model("llama")
    base = {k: v for k, v in TINY_HPARAMS.items() if not k.startswith("early_stop")}
    plain = {**base, **TINY["encore"], "min_loss": 0.0}    # only MPES can end the loop early
    ed = make_editor("encore", lm.model.config, plain)
    assert ed.hp.early_stop and ed.hp.early_stop_k == 2    # encore.yaml: Llama-3's prob_cutoff −2
    ed.edit(lm, [SPEC]).apply(lm.model)
    assert ed.last_stats["target_steps"] < ed.hp.steps
    assert target_nll(lm, [SPEC.text], [SPEC.target])[1].all()
    off = make_editor("encore", lm.model.config, {**plain, "early_stop": False})
    off.edit(lm, [SPEC])
    assert off.last_stats["target_steps"] == off.hp.steps


# lyap_alpha 0.5: the queue leaves its floor after one batch, so even lyaplock+memit's
# next solve depends on the state
@pytest.mark.parametrize("editor", ["encore", "lyaplock", "lyaplock+memit", "lyaplock+alphaedit"])
def test_state_round_trip_gives_identical_next_edit(editor):
    lm = tiny_model("llama")
    over = {"lyap_alpha": 0.5} if editor.startswith("lyaplock") else {}
    first = _editor(editor, lm, **over)
    patch = first.edit(lm, [SPEC])
    patch.apply(lm.model)
    first.accept(patch)
    assert first.state_dict()

    # a snapshot rebuild: the stored patch folded into a fresh editor gives the same state
    rebuilt = _editor(editor, lm, **over)
    rebuilt.accept(WeightPatch.from_tensors(patch.tensors()))
    loaded = _editor(editor, lm, **over)
    loaded.load_state_dict(first.state_dict())
    for other in (rebuilt, loaded):
        assert other.state_dict().keys() == first.state_dict().keys()
        for k, t in first.state_dict().items():
            assert torch.equal(other.state_dict()[k], t), k

    a, b, c = (ed.edit(lm, [NEXT]) for ed in (first, loaded, rebuilt))
    for layer in a.factors:
        torch.testing.assert_close(a.delta(layer), b.delta(layer))
        torch.testing.assert_close(a.delta(layer), c.delta(layer))
    fresh = _editor(editor, lm, **over).edit(lm, [NEXT])
    assert not torch.allclose(fresh.delta(1), a.delta(1)), "the memory must change the solve"


def test_rome_applies_a_batch_one_request_after_another():
    lm = tiny_model("llama")
    specs = [SPEC, NEXT, EditSpec("The mountain {subject}", "Everest", "football")]
    patch = _editor("rome", lm).edit(lm, specs)
    assert list(patch.factors) == [2] and patch.factors[2][0].shape[1] == len(specs)   # rank 1 each
    patch.apply(lm.model)
    assert target_nll(lm, [s.text for s in specs], [s.target for s in specs])[1].all()
    with pytest.raises(EditorError, match="one layer"):
        make_editor("rome", lm.model.config, TINY_HPARAMS)          # layers [1, 2]


# -- the solves on random matrices -----------------------------------------------------------

def _problem(d_out=6, d_in=10, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(d_in, 4 * d_in, generator=g, dtype=torch.float64)
    return (torch.randn(d_in, n, generator=g, dtype=torch.float64),     # K
            torch.randn(d_out, n, generator=g, dtype=torch.float64),    # R
            x @ x.T / x.shape[1], g)                                    # C


def _hp(**extra):
    known = {k: extra.pop(k) for k in list(extra) if k in ("mom2_weight", "nullspace_threshold", "l2")}
    return HParams(layers=(1,), **known, extra=extra)


def _factors(solution) -> tuple[torch.Tensor, torch.Tensor]:
    return solution.u, solution.v


def test_encore_solve_is_memit_with_norm_and_past_terms():
    keys, resid, cov, g = _problem()
    past = torch.randn(10, 3, generator=g, dtype=torch.float64)
    ed = make_editor("encore", type("C", (), {"model_type": "llama", "num_hidden_layers": 4,
                                              "hidden_size": 64})(), {"layers": [1], "mom2_weight": 2.0,
                                                                      "norm_lambda": 0.5})
    ed.memory.past_kkt[1] = past @ past.T
    u, v = _factors(ed.solve(1, keys, resid, cov))
    want = resid @ keys.T @ torch.linalg.inv(2.0 * cov + 0.5 * torch.eye(10) + past @ past.T + keys @ keys.T)
    torch.testing.assert_close(u @ v.T, want)


def test_lyaplock_solve_minimises_its_objective():
    """∇ of V‖ΔK − R‖² + w·tr((D+Δ)C(D+Δ)ᵀ) + V‖(D+Δ)K_p − U_p‖² vanishes at the solve's Δ."""
    keys, resid, cov, g = _problem()
    ed = LyapLock(_hp(mom2_weight=3.0, lyap_alpha=2.0, lyap_v=0.7))
    drift = torch.randn(6, 10, generator=g, dtype=torch.float64)
    kp, up = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    memory = ed.memory
    memory.drift[1], memory.past_kkt[1], memory.past_ukt[1] = drift, kp @ kp.T, up @ kp.T
    memory.d_base[1] = torch.tensor([0.5], dtype=torch.float64)
    memory.queue[1] = torch.tensor([3.0], dtype=torch.float64)
    w = ed.weight(1)
    assert w == pytest.approx(3.0 / math.sqrt(2.0 * 0.5) * 3.0)   # a·Z·λ
    solution = ed.solve(1, keys, resid, cov)
    u, v = _factors(solution)
    delta = u @ v.T
    grad = 0.7 * (delta @ keys - resid) @ keys.T + w * (drift + delta) @ cov \
        + 0.7 * ((drift + delta) @ kp - up) @ kp.T
    assert float(grad.abs().max()) < 1e-9
    after = drift + delta                                  # the queue saw PL of W after the step
    pl = float(torch.trace(after @ cov @ after.T))
    assert float(solution.adds["lyap.queue"]) == pytest.approx(queue_step(3.0, pl, 0.5, 2.0))


@pytest.mark.parametrize("inner", ["memit", "alphaedit"])
def test_lyaplock_wrapper_is_the_inner_solve_at_the_queue_weight(inner):
    from kbsync.editing.alphaedit import AlphaEdit
    from kbsync.editing.memit import MEMIT

    keys, resid, cov, _ = _problem()
    hp = _hp(mom2_weight=3.0, nullspace_threshold=0.5, l2=0.1, lyap_alpha=2.0)
    ed = LyapLock(hp, {"memit": MEMIT, "alphaedit": AlphaEdit}[inner](hp))
    ed.memory.d_base[1] = torch.tensor([0.5], dtype=torch.float64)
    ed.memory.queue[1] = torch.tensor([2.0], dtype=torch.float64)    # a·Z = 2
    u, v = _factors(ed.solve(1, keys, resid, cov))
    if inner == "memit":     # MEMIT with λ = a·Z·λ
        want = resid @ keys.T @ torch.linalg.inv(6.0 * cov + keys @ keys.T)
    else:                    # AlphaEdit with the weighted C inside its projected system
        p = ed.inner.projector(1, cov)
        x = torch.linalg.solve(p @ (keys @ keys.T + 6.0 * cov) + 0.1 * torch.eye(10), p @ keys)
        want = resid @ x.T
    torch.testing.assert_close(u @ v.T, want)


def test_rome_writes_the_key_exactly_with_the_least_c_weighted_change():
    keys, resid, cov, _ = _problem(n=1)
    ed = make_editor("rome", type("C", (), {"model_type": "llama", "num_hidden_layers": 8,
                                            "hidden_size": 64})(), {})
    u, v = _factors(ed.solve(5, keys, resid, cov))
    delta = u @ v.T
    torch.testing.assert_close(delta @ keys, resid)                     # (W + Δ)k* = W k* + r
    c_inv_k = torch.linalg.solve(cov, keys)
    torch.testing.assert_close(delta, resid @ c_inv_k.T / float(c_inv_k.T @ keys))


def test_names_and_composite_hparams():
    names = editor_names()
    assert set(EDITORS) <= set(names)
    cfg = type("C", (), {"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576})()
    hp = resolve_hparams("lyaplock+alphaedit", cfg)
    assert hp.nullspace_threshold == 0.02 and hp.l2 == 10        # alphaedit.yaml
    assert hp.mom2_weight == 1000 and hp.extra["lyap_alpha"] == 60   # lyaplock.yaml over it
    assert list(hp.layers) == [3, 4, 5, 6, 7] and hp.lr == 0.5
    assert resolve_hparams("encore", cfg).early_stop
    assert list(resolve_hparams("rome", cfg).layers) == [5]
    assert make_editor("lyaplock+alphaedit", cfg).name == "lyaplock+alphaedit"
