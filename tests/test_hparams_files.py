"""The hyperparameter files: the MEMIT-family front end (layers per family, target
optimisation) lives in hparams/front_end.yaml alone, and each editor's file resolves to
the values its reference gives (a table of the ones that differ between editors)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import yaml

from kbsync.editing.hparams import HPARAMS_DIR, resolve_hparams
from kbsync.editing.registry import EDITORS

DEFAULT = SimpleNamespace(model_type="llama", num_hidden_layers=30, hidden_size=576)
LLAMA3 = SimpleNamespace(model_type="llama", num_hidden_layers=32, hidden_size=4096)
GPT2XL = SimpleNamespace(model_type="gpt2", num_hidden_layers=48, hidden_size=1600)


def _file(name: str) -> dict:
    return yaml.safe_load((HPARAMS_DIR / f"{name}.yaml").read_text())


FRONT_END = [n for n in EDITORS if "+" not in n and (HPARAMS_DIR / f"{n}.yaml").exists()
             and _file(n).get("base") == "front_end"]


def test_the_front_end_editors_are_the_memit_family():
    assert set(FRONT_END) == {"memit", "alphaedit", "encore", "lyaplock", "nmke", "rlsedit"}


@pytest.mark.parametrize("editor", FRONT_END)
def test_layers_per_family_live_in_front_end_yaml_only(editor):
    levels = _file(editor)
    for level in ("family", "model"):
        assert all("layers" not in v for v in levels.get(level, {}).values()), level
    for config in (DEFAULT, LLAMA3, GPT2XL):
        assert resolve_hparams(editor, config).layers == \
            resolve_hparams("memit", config).layers


@pytest.mark.parametrize("editor, config, expected", [
    ("memit", DEFAULT, {"layers": [3, 4, 5, 6, 7], "lr": 0.5, "early_stop_k": 3,
                        "mom2_weight": 1000}),
    ("memit", LLAMA3, {"layers": [4, 5, 6, 7, 8], "lr": 0.1, "mom2_weight": 15000}),
    ("memit", GPT2XL, {"layers": [13, 14, 15, 16, 17], "steps": 20}),
    ("alphaedit", DEFAULT, {"mom2_weight": 15000, "l2": 10, "nullspace_threshold": 0.02}),
    ("encore", DEFAULT, {"lr": 0.5, "early_stop_k": 2, "mom2_weight": 1000}),
    ("encore", LLAMA3, {"lr": 0.5, "early_stop_k": 2}),
    ("encore", GPT2XL, {"mom2_weight": 20000, "early_stop_k": 4, "steps": 20}),
    ("nmke", LLAMA3, {"l2": 1, "lr": 0.1}),
    ("nmke", DEFAULT, {"l2": 10}),
    ("lyaplock", LLAMA3, {"mom2_weight": 1000, "lr": 0.1}),
    ("lyaplock+memit", DEFAULT, {"mom2_weight": 1000, "layers": [3, 4, 5, 6, 7]}),
    ("rome", LLAMA3, {"layers": [5], "lr": 0.5, "steps": 25, "contexts": 20}),
    ("ultraedit", DEFAULT, {"layers": [4, 5, 6, 7, 8], "mom2_weight": 1000}),
])
def test_resolved_values(editor, config, expected):
    got = resolve_hparams(editor, config).to_dict()
    flat = {**got, **got["extra"]}
    assert {k: flat[k] for k in expected} == expected
