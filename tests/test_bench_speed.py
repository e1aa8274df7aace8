"""`kbsync bench speed` on a tiny model: every phase is timed and has a floor."""

import json

import pytest
import torch

from kbsync.bench import floor
from kbsync.bench.speed import PHASES, run_speed
from kbsync.testing import TINY_HPARAMS, tiny_model


def test_model_shape_counts_one_block():
    lm = tiny_model("llama")
    shape = floor.ModelShape.of(lm.model)
    block = sum(p.numel() for p in lm.model.model.layers[0].parameters())
    assert (shape.layers, shape.block_params, shape.d_model) == (4, block, 64)
    assert shape.forward_flops(10) == 2 * block * 10 * 4
    assert shape.forward_flops(10, blocks=1) == 2 * block * 10


def test_target_floor_grows_with_steps_and_tokens():
    shape = floor.ModelShape(layers=30, block_params=3_500_000, d_model=576, vocab=49152)
    tokens = {"prefix": 100, "suffix": 50, "target": 10, "rows": 10}
    one = floor.target_flops(shape, tokens, 1, z_layer=7)
    assert floor.target_flops(shape, tokens, 2, z_layer=7) > one
    assert floor.target_flops(shape, {**tokens, "suffix": 100}, 1, z_layer=7) > one
    # backward only above the target layer: a higher target layer costs less
    assert floor.target_flops(shape, tokens, 1, z_layer=20) < one


def test_llama3_8b_shape_has_8b_parameters():
    from kbsync.bench.shapes import llama3_8b_config
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(llama3_8b_config())
    assert 8.0e9 < sum(p.numel() for p in model.parameters()) < 8.1e9


def test_speed_run_reports_every_phase_against_its_floor(tiny_llama_dir):
    seen = []
    result = run_speed(str(tiny_llama_dir), "alphaedit", edits=4, batch=2, device="cpu",
                       hparams=TINY_HPARAMS, on_batch=seen.append)
    json.dumps(result)                                    # one JSON line for --json
    assert result["edits"] == 4 and [e["done"] for e in seen] == [2, 4]
    phases = [result[f"{p}_seconds_per_edit"] for p in PHASES]
    assert all(s > 0 for s in phases)
    assert result["seconds_per_edit"] == pytest.approx(sum(phases))
    floors = [result[f"{p}_floor_seconds_per_edit"] for p in PHASES]
    assert all(f > 0 for f in floors)
    assert result["floor_seconds_per_edit"] == pytest.approx(sum(floors))
    # nothing runs faster than the machine's measured peak
    assert result["seconds_per_edit"] > result["floor_seconds_per_edit"]
    assert result["peak_memory_bytes"] > 0 and result["machine"]["matmul_flops"] > 0
