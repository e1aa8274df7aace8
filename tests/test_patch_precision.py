"""Weight deltas stored in float16 with a float32 scale per rank-one component
(editing/patch.py, kbsync.yaml `patch_precision`): the rounding error is bounded per
column whatever the column's range, the stored tensors are what was applied (a replay of
HEAD equals the model that passed the gates, bit for bit), and float32 keeps the editor's
factors exactly. A tiny random Llama (CPU)."""

from __future__ import annotations

import pytest
import torch
import yaml

from kbproject import make_project
from kbsync import scheduler as scheduler_module
from kbsync.apply import apply
from kbsync.editing.patch import WeightPatch, from_half, load_patch, stored_precision, to_half
from kbsync.editing.rebuild import load_at
from kbsync.lm import arch
from kbsync.project import Project

OPEN_GATES = dict(efficacy_min=0.0, locality_min=0.0, kl_max=1e9, retention_min=0.0,
                  ppl_drift_max=1e9)
FACTS = {"Danube": "British", "Volga": "American", "Rhine": "November"}


@pytest.mark.parametrize("magnitude", [1e-30, 1e-6, 1.0, 1e6, 1e30])
def test_each_column_keeps_eleven_significant_bits_whatever_its_range(magnitude):
    torch.manual_seed(0)
    t = torch.randn(64, 3) * torch.tensor([magnitude, 1.0, magnitude * 1e-3])
    q, scale = to_half(t)
    assert q.dtype == torch.float16 and scale.dtype == torch.float32 and scale.shape == (3,)
    back = from_half(q, scale)
    peak = t.abs().amax(0)
    assert bool(((back - t).abs() <= peak * 2.0 ** -11).all())     # half an fp16 ulp of 1
    assert bool((back.abs().amax(0) == peak).all())                # the peak itself is exact


def test_zero_and_non_finite_columns():
    t = torch.zeros(8, 3)
    t[2, 1] = float("nan")
    t[0, 2] = float("inf")
    back = from_half(*to_half(t))
    assert bool((back[:, 0] == 0).all())                # a zero column stays zero
    assert not torch.isfinite(back[:, 1]).all() and not torch.isfinite(back[:, 2]).all()


def random_patch(rank: int = 4) -> WeightPatch:
    g = torch.Generator().manual_seed(1)
    factors = {layer: (torch.randn(16, rank, generator=g) * 1e-3, torch.randn(40, rank, generator=g))
               for layer in (1, 2)}
    return WeightPatch(factors, {"keys.1": torch.randn(rank, 40, generator=g)})


def test_a_half_patch_stores_what_it_applies_and_loads_back_bit_for_bit():
    exact = random_patch()
    half = exact.half_factors()
    tensors = half.tensors()
    assert tensors["delta.1.U"].dtype == torch.float16 and tensors["scale.1.U"].shape == (4,)
    assert torch.equal(tensors["state.keys.1"], exact.state_update["keys.1"])   # state exact
    back = load_patch(tensors)
    for layer in (1, 2):
        assert torch.equal(back.delta(layer), half.delta(layer))
        rel = (half.delta(layer) - exact.delta(layer)).norm() / exact.delta(layer).norm()
        assert 0 < rel < 1e-3
    assert half.half_factors() is half and back.half_factors() is back
    stored = sum(t.numel() * t.element_size() for t in tensors.values())
    assert stored < 0.75 * exact.nbytes            # U and V halved, the keys kept


def test_float32_and_side_memory_patches_are_kept_as_made():
    exact = random_patch()
    assert stored_precision(exact, "float32") is exact
    assert stored_precision(exact, "float16").halves
    assert stored_precision(None, "float16") is None


@pytest.mark.parametrize("precision", ["float16", "float32"])
def test_head_rebuilt_from_the_store_is_the_model_that_passed_the_gates(
        tmp_path, tiny_llama_dir, monkeypatch, precision):
    root = tmp_path / "proj"
    make_project(root, tiny_llama_dir, FACTS, editor="alphaedit", batch_size=1,
                 gates=OPEN_GATES)
    config = yaml.safe_load((root / "kbsync.yaml").read_text())
    (root / "kbsync.yaml").write_text(yaml.safe_dump({**config, "patch_precision": precision}))
    project = Project(root)

    gated = []               # the edited layers at each commit, as the gates saw them
    real_commit = scheduler_module.Scheduler.commit

    def commit(self, patch, *args, **kwargs):
        gated.append({l: arch.weight_of(self.lm.model, l).detach().clone() for l in patch.layers})
        return real_commit(self, patch, *args, **kwargs)

    monkeypatch.setattr(scheduler_module.Scheduler, "commit", commit)
    assert len(apply(project).applied) == 3 and len(gated) == 3

    lm, _ = load_at(project, project.snapshots().head(), with_editor=False)
    for layer, weight in gated[-1].items():
        assert torch.equal(arch.weight_of(lm.model, layer), weight)
    store = project.snapshots()
    tensors = store.objects.get_tensors(store.read(store.head()).patch)
    u = tensors[next(n for n in tensors if n.startswith("delta.") and n.endswith(".U"))]
    assert u.dtype == (torch.float16 if precision == "float16" else torch.float32)
