"""Side-memory editors (GRACE, WISE, CASE) on tiny random models: an edit changes the
prediction through the memory and leaves the weights and unrelated prompts alone; GRACE's
radii grow and split; CASE shares a compatible subspace and opens one on conflict; the
memory round-trips through a snapshot, rollback, a new process and export."""

import pytest
import torch

from kbproject import (FACTS, answer, applied_objects, assert_kept_model_is_head, head, key,
                       make_project, prompt)
from kbsync.editing.registry import make_editor
from kbsync.editing.request import EditSpec
from kbsync.editing.side.memory import attached
from kbsync.editing.side.patch import MemoryPatch
from kbsync.editing.side.train import memory_off
from kbsync.lm.score import next_token_logprobs, target_nll
from kbsync.testing import TINY_HPARAMS, tiny_model

SPEC = EditSpec("The river {subject}", "Danube", "American", key="danube")
UNRELATED = ["He was born in the city of", "The weather today is"]
# on top of TINY_HPARAMS: one layer below the top, and margins for the tiny model's scale
TINY_SIDE = {"layers": [2], "steps": 80, "lr": 0.5}
TINY = {"grace": {"eps": 0.5},
        "wise": {"lr": 0.05, "alpha": 0.05, "beta": 1.0, "gamma": 0.5, "unrelated": 8},
        "case": {"lr": 0.1, "radius_scale": 0.5, "radius_min": 0.02, "preserve": 10.0}}
SIDE = list(TINY)


pytestmark = pytest.mark.usefixtures("fresh_cache")


def _editor(name, lm, **overrides):
    return make_editor(name, lm.model.config, {**TINY_HPARAMS, **TINY_SIDE, **TINY[name], **overrides})


@pytest.mark.parametrize("editor", SIDE)
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_edit_goes_through_the_memory_and_spares_the_rest(family, editor):
    lm = tiny_model(family)
    ed = _editor(editor, lm)
    weights = {n: p.clone() for n, p in lm.model.state_dict().items()}
    before = next_token_logprobs(lm, UNRELATED)
    assert not bool(target_nll(lm, [SPEC.text], [SPEC.target])[1][0])

    patch = ed.edit(lm, [SPEC])
    assert isinstance(patch, MemoryPatch) and not patch.is_empty()
    patch.apply(lm.model)
    assert bool(target_nll(lm, [SPEC.text], [SPEC.target])[1][0]), ed.last_stats
    for name, w in lm.model.state_dict().items():             # the weights never change
        assert torch.equal(w, weights[name]), name
    # unrelated prompts are routed around the memory: exactly what they were
    assert torch.equal(next_token_logprobs(lm, UNRELATED), before)
    with memory_off(lm.model):                                 # and the edit lives in it
        assert not bool(target_nll(lm, [SPEC.text], [SPEC.target])[1][0])


@pytest.mark.parametrize("editor", SIDE)
def test_a_refused_batch_is_taken_out_exactly(editor):
    lm = tiny_model("llama")
    ed = _editor(editor, lm)
    first = ed.edit(lm, [SPEC])
    first.apply(lm.model)
    mem = attached(lm.model)[(editor, 2)]
    kept = {k: v.clone() for k, v in mem.tensors.items()}
    second = ed.edit(lm, [EditSpec("The lake {subject}", "Geneva", "British")])
    saved = second.checkpoint(lm.model)
    second.apply(lm.model)
    assert any(k not in kept or not torch.equal(v, kept[k]) for k, v in mem.tensors.items())
    second.restore(lm.model, saved)
    assert set(mem.tensors) == set(kept)
    assert all(torch.equal(mem.tensors[k], v) for k, v in kept.items())


def _grace_memory(keys, radius, labels):
    from kbsync.editing.side.grace import GraceMemory
    return GraceMemory(0, {"keys": keys, "values": torch.zeros(len(keys), 3),
                           "radius": torch.tensor(radius), "label": torch.tensor(labels)})


# one stored key at the origin with radius 1 and label 7; the new key at distance 1.2,
# eps 0.5 × its norm (0.6): within reach of the old entry (1.0 + 0.6 > 1.2)
@pytest.mark.parametrize("new_label, n_entries, old_radius, new_radius", [
    (7, 1, 1.2, None),        # same answer: the old radius grows to cover the new key
    (8, 2, 0.6 - 1e-5, 0.6),  # another answer: a new entry, both radii half the distance
])
def test_grace_radii_grow_and_split(new_label, n_entries, old_radius, new_radius):
    from kbsync.editing.side.grace import GRACE
    lm = tiny_model("llama")
    ed = _editor("grace", lm)
    mem = _grace_memory(torch.zeros(1, 4), [1.0], [7])
    entry, plan = ed._allocate(mem, torch.tensor([[1.2, 0.0, 0.0, 0.0]]), [new_label],
                               torch.zeros(1, 3))
    assert len(plan["keys"]) == n_entries
    assert float(plan["radius"][0]) == pytest.approx(old_radius, abs=1e-6)
    if new_radius is not None:
        assert entry == [1] and float(plan["radius"][1]) == pytest.approx(new_radius)
    else:
        assert entry == [0]
    assert isinstance(ed, GRACE)


def test_grace_far_key_opens_an_entry_with_its_own_radius():
    lm = tiny_model("llama")
    ed = _editor("grace", lm)
    mem = _grace_memory(torch.zeros(1, 4), [1.0], [7])
    entry, plan = ed._allocate(mem, torch.tensor([[9.0, 0.0, 0.0, 0.0]]), [8], torch.zeros(1, 3))
    assert entry == [1] and plan["radius"].tolist() == pytest.approx([1.0, 4.5])


# CASE's conflict assessment on a stored subspace 0 (neuron 1, column c). A new edit whose
# descent direction −G is along c shares it; one against c (a conflict) opens subspace 1;
# a full subspace is not offered.
@pytest.mark.parametrize("grad_sign, capacity, expected", [(-1.0, 8, 0), (1.0, 8, 1), (-1.0, 1, 1)])
def test_case_shares_compatible_subspace_and_opens_one_on_conflict(grad_sign, capacity, expected):
    lm = tiny_model("llama")
    ed = _editor("case", lm, capacity=capacity, conflict=0.1)
    column = torch.tensor([[1.0, 2.0, 0.0]])
    t = {"columns": (column * 50).to(torch.int8), "column_scale": torch.tensor([0.02]),
         "column_neuron": torch.tensor([1], dtype=torch.int32),
         "column_subspace": torch.tensor([0], dtype=torch.int32),
         "edit_subspace": torch.tensor([0], dtype=torch.int32)}
    keys = torch.tensor([[[0.0, 2.0, 0.0, 0.0]]])                 # (edits, rows, d_in)
    grads = grad_sign * column[None]                              # (edits, rows, d_out)
    fisher = torch.tensor([[0.0, 4.0, 1.0, 0.0]])
    plan = ed._allocate(t, keys, grads, fisher)
    assert plan["edit_sub"].tolist() == [expected]
    # KNT: the edit brings its most sensitive neuron not yet in the subspace
    new_neurons = plan["neuron"][plan["col_sub"] == expected].tolist()
    assert new_neurons == ([1, 2] if expected == 0 else [1])


def _project(tmp_path, tiny_llama_dir, kb_cache, monkeypatch, editor):
    monkeypatch.setenv("KBSYNC_CACHE", str(kb_cache))
    return make_project(tmp_path / "proj", tiny_llama_dir, editor=editor, batch_size=2,
                        hparams={**TINY_SIDE, **TINY[editor]},
                        gates={"locality_min": 0.9, "kl_max": 0.05, "ppl_drift_max": 0.01})


@pytest.mark.parametrize("editor", SIDE)
def test_memory_round_trips_snapshot_rollback_and_export(editor, tmp_path, tiny_llama_dir,
                                                         kb_cache, monkeypatch):
    import kbsync
    from kbsync.apply import apply
    from kbsync.editing.rebuild import load_at
    from kbsync.history import committed, export, rollback
    from kbsync.store.snapshots import SnapshotStore
    from transformers import AutoModelForCausalLM

    project = _project(tmp_path, tiny_llama_dir, kb_cache, monkeypatch, editor)
    result = apply(project)
    assert sorted(result.applied) == sorted(key(s) for s in FACTS), result.to_dict()
    snaps = [sid for sid, _ in committed(SnapshotStore(project.kbsync_dir))]
    first, last = snaps[0], snaps[-1]
    # a new process (here: a fresh load) rebuilds the memory from the chain and answers
    for subject, obj in FACTS.items():
        assert answer(project, subject).strip().startswith(obj), subject
    out = export(project, tmp_path / "exported")
    assert out["side_memory"] == [editor]
    loaded = kbsync.load_model(tmp_path / "exported", device="cpu", dtype="float32")
    prompts = [prompt(s) for s in FACTS] + UNRELATED
    at_head, _ = load_at(project, head(project), with_editor=False)
    assert torch.allclose(next_token_logprobs(loaded, prompts), next_token_logprobs(at_head, prompts))
    # plain transformers sees the unedited base (the README says which editors need the loader)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    assert not attached(plain)
    # rollback to the first batch: its facts answer, the second batch's do not
    rollback(project, first)
    at_first, _ = load_at(project, head(project), with_editor=False)
    mem = attached(at_first.model)[(editor, 2)]
    at_last, _ = load_at(project, last, with_editor=False)
    assert mem.nbytes < attached(at_last.model)[(editor, 2)].nbytes or editor == "wise"
    kept = {k.split("/")[0] for k in applied_objects(project)}
    assert 0 < len(kept) < len(FACTS)
    for subject in kept:
        assert answer(project, subject).strip().startswith(FACTS[subject]), subject
    for subject in set(FACTS) - kept:
        assert not answer(project, subject).strip().startswith(FACTS[subject]), subject


@pytest.mark.parametrize("editor", SIDE)
def test_a_kept_side_memory_is_the_memory_a_fresh_rebuild_gives(tmp_path, tiny_llama_dir,
                                                               kb_cache, monkeypatch, editor):
    assert_kept_model_is_head(_project(tmp_path, tiny_llama_dir, kb_cache, monkeypatch, editor))


def test_wise_general_margin_bounds_the_side_output_on_the_statistics_text():
    """general_alpha: a margin on the RMS side output over the statistics corpus,
    tr(ΔCΔᵀ)^½, lowers it against the plain margins (on the tiny model the target's loss
    keeps it above A: 0.19 for A = 0.05, against 0.23 without)."""
    lm = tiny_model("llama")
    rms = {}
    for general in (None, 0.05):
        ed = _editor("wise", lm, general_alpha=general)
        assert bool(ed.covariances(lm)) == (general is not None)
        patch = ed.edit(lm, [SPEC])
        patch.apply(lm.model)
        mem = attached(lm.model)[("wise", 2)]
        cov = _editor("wise", lm, general_alpha=1.0).covariances(lm)[2].float()
        rms[general] = float(((mem.delta @ cov) * mem.delta).sum().sqrt())
        mem.restore({})                                # the next run starts empty
    assert rms[0.05] < 0.9 * rms[None], rms


@pytest.mark.parametrize("retrieve, memories", [(True, 2), (False, 1)])
def test_wise_closed_shards_are_kept_apart_or_merged(retrieve, memories):
    """save_freq 1: the second edit closes the first one's shard. WISE-Retrieve keeps it as
    its own memory (each prompt goes through the memory it activates most); WISE-Merge
    TIES-merges it into one. Both edits hold and unrelated prompts are routed around."""
    lm = tiny_model("llama")
    ed = _editor("wise", lm, retrieve=retrieve, save_freq=1)
    before = next_token_logprobs(lm, UNRELATED)
    second = EditSpec("The lake {subject}", "Geneva", "British", key="geneva")
    for spec in (SPEC, second):
        ed.edit(lm, [spec]).apply(lm.model)
    mem = attached(lm.model)[("wise", 2)]
    assert len(mem.memories) == memories and ("merged" in mem.tensors) == (not retrieve)
    assert bool(target_nll(lm, [SPEC.text, second.text], [SPEC.target, second.target])[1].all())
    assert torch.equal(next_token_logprobs(lm, UNRELATED), before)


def test_wise_closed_shard_is_rebuilt_when_a_restore_brings_other_values():
    """Closed shards' Δ are built once per memory; a restored memory whose shard of the same
    id holds other values must not route through the stale one."""
    from kbsync.editing.side.wise import WiseMemory, shard_mask
    mask = shard_mask((3, 4), 0, 0, 0.5, "cpu")
    n = int(mask.sum())

    def tensors(value):
        return {"shape": torch.tensor([3, 4]), "seed": torch.tensor(0), "ratio": torch.tensor(0.5),
                "act_ratio": torch.tensor(0.9), "shard_id": torch.tensor(1),
                "shard": torch.zeros(int(shard_mask((3, 4), 0, 1, 0.5, "cpu").sum())),
                "min_score": torch.tensor(1.0), "bank": torch.full((n,), value),
                "bank_shard": torch.tensor([0]), "bank_min_score": torch.tensor([1.0])}
    mem = WiseMemory(0, tensors(1.0))
    assert torch.equal(mem.memories[0][0][mask], torch.ones(n))
    mem.restore(tensors(2.0))
    assert torch.equal(mem.memories[0][0][mask], torch.full((n,), 2.0))
    assert len(mem.memories) == 2 and float(mem.memories[0][1]) == pytest.approx(0.9)


def test_wise_trains_with_the_installed_memory_off(monkeypatch):
    """Training adds what the closed memories give the suffix itself, once (their number
    grows with the edits): the installed memory must not also route every step. With it
    on, a key token would get an old memory's output on top of the new memory's."""
    import kbsync.editing.side.wise as wise
    lm = tiny_model("llama")
    ed = _editor("wise", lm, retrieve=True, save_freq=1)
    seen = []

    def spy(*args, **kwargs):
        seen.append([m.enabled for m in attached(lm.model).values()])
        return fit(*args, **kwargs)
    fit = wise.fit
    monkeypatch.setattr(wise, "fit", spy)
    for spec in (SPEC, EditSpec("The lake {subject}", "Geneva", "British", key="geneva")):
        ed.edit(lm, [spec]).apply(lm.model)
    assert seen == [[False], [False]]
    mem = attached(lm.model)[("wise", 2)]
    assert mem.enabled
    x, out = torch.randn(3, 5, mem.delta.shape[1]), torch.randn(3, 5, mem.delta.shape[0])
    side, score = mem.best(x, upto=0)            # the first 0 memories route nothing
    assert torch.equal(out + side, out) and not score.any()
