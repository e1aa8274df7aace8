"""`kbsync bench quality` on a tiny model: the trace follows every batch, the weight
growth figures describe the matrices the editor changed (and none for a side memory), and a
run killed after a checkpoint resumes to the result of the run never killed."""

import json
import math

import pytest

from kbsync.bench.quality import run_quality
from kbsync.errors import KbsyncError
from kbsync.testing import TINY_HPARAMS


def test_quality_traces_each_batch_and_measures_weight_growth(tiny_llama_dir):
    seen = []
    result = run_quality("memit", "counterfact", edits=4, batch=2, model=str(tiny_llama_dir),
                         device="cpu", hparams=TINY_HPARAMS, trace=3, on_batch=seen.append)
    json.dumps(result)
    assert [p["done"] for p in result["trace"]] == [2, 4] == [s["done"] for s in seen]
    assert all(0.0 <= p["efficacy_first"] <= 1.0 and math.isfinite(p["ppl_drift"])
               for p in result["trace"])
    assert sorted(result["relative_norm"]) == TINY_HPARAMS["layers"]
    assert all(r != 1.0 for r in result["relative_norm"].values())
    # MEMIT's update is dense on each edited 64 x 256 out-projection
    assert 0 < result["params_changed"] <= 2 * 64 * 256


def test_side_memory_changes_no_weight(tiny_llama_dir):
    result = run_quality("grace", "zsre", edits=2, batch=2, model=str(tiny_llama_dir),
                         device="cpu", hparams={**TINY_HPARAMS, "layers": [2], "steps": 5})
    assert result["relative_norm"] == {} and result["params_changed"] == 0
    assert result["trace"] == []


# editors whose state between batches lives in different places: edited weights only
# (MEMIT), weights and a projector (AlphaEdit), a side memory (GRACE, CASE), a side memory
# and a Python RNG drawing unrelated texts (WISE)
SIDE = {**TINY_HPARAMS, "layers": [2], "steps": 10}
RESUMABLE = {"memit": TINY_HPARAMS, "alphaedit": TINY_HPARAMS, "grace": SIDE,
             "case": {**SIDE, "lr": 0.1}, "wise": {**SIDE, "lr": 0.05, "unrelated": 4}}
CLOCKS = ("seconds_per_edit", "stats_seconds", "inference_slowdown")


class Killed(Exception):
    pass


def _kill_after(done: int):
    def on_batch(record):
        if record["done"] >= done:
            raise Killed
    return on_batch


@pytest.mark.parametrize("editor", RESUMABLE)
def test_a_killed_run_resumes_to_the_uninterrupted_result(editor, tiny_llama_dir, tmp_path):
    args = dict(edits=6, batch=2, model=str(tiny_llama_dir), device="cpu",
                hparams=RESUMABLE[editor], trace=2)
    whole = run_quality(editor, "zsre", **args)
    saved = tmp_path / "run.ckpt"
    with pytest.raises(Killed):
        run_quality(editor, "zsre", **args, checkpoint=saved, checkpoint_every=0.0,
                    on_batch=_kill_after(4))
    seen = []
    resumed = run_quality(editor, "zsre", **args, checkpoint=saved, on_batch=seen.append)
    assert [s["done"] for s in seen] == [6]                 # only the batch not yet done
    assert {k: v for k, v in resumed.items() if k not in CLOCKS} == \
           {k: v for k, v in whole.items() if k not in CLOCKS}


def test_a_checkpoint_of_another_run_is_refused(tiny_llama_dir, tmp_path):
    args = dict(edits=2, batch=2, model=str(tiny_llama_dir), device="cpu",
                hparams=TINY_HPARAMS, checkpoint=tmp_path / "run.ckpt")
    run_quality("memit", "zsre", **args)
    with pytest.raises(KbsyncError, match="checkpoint of another run"):
        run_quality("memit", "zsre", **{**args, "edits": 4})
