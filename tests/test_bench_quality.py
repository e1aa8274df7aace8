"""`kbsync bench quality` on a tiny model: the trace follows every batch and the weight
growth figures describe the matrices the editor changed (and none for a side memory)."""

import json
import math

import pytest

from kbsync.bench.quality import run_quality
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
