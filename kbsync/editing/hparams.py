"""Hyperparameters of the locate-then-edit editors, resolved from data files:
`hparams/<editor>.yaml` holds `defaults`, then per `family` (model_type), then per `model`
(`<model_type>-<layers>x<hidden>`, e.g. `llama-30x576` for the default SmolLM2), then the
user's overrides from kbsync.yaml. Later entries win. `<wrapper>+<inner>` reads both files.
A file with `base: front_end` reads hparams/front_end.yaml under it: the MEMIT-family
front end's defaults and layers per family, kept in that one table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from kbsync.editing.targets import TargetParams
from kbsync.errors import EditorError

HPARAMS_DIR = Path(__file__).resolve().parent / "hparams"


@dataclass(frozen=True)
class HParams:
    layers: tuple[int, ...]
    z_layer: int | None = None        # default: the highest edited layer
    steps: int = 25
    lr: float = 0.5
    clamp: float = 0.75
    kl_factor: float = 0.0625
    weight_decay: float = 0.5
    early_stop: bool = True
    early_stop_k: int = 1
    min_loss: float = 0.05
    contexts: int = 5                 # generated context prefixes (plus the bare prompt)
    context_length: int = 10
    stats_tokens: int = 200_000
    stats_corpus: str = "mixed"       # the statistics' text: see editing/stats.py
    mom2_weight: float = 15000.0      # MEMIT's λ on C
    nullspace_threshold: float = 0.02 # AlphaEdit, relative to C's largest eigenvalue
    l2: float = 10.0                  # AlphaEdit's α
    seed: int = 0
    extra: dict = field(default_factory=dict)   # editor-specific knobs

    @property
    def target_layer(self) -> int:
        return self.z_layer if self.z_layer is not None else max(self.layers)

    def target_params(self) -> TargetParams:
        return TargetParams(self.target_layer, self.steps, self.lr, self.clamp, self.kl_factor,
                            self.weight_decay, self.early_stop, self.early_stop_k, self.min_loss)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


def model_key(config) -> str:
    return f"{config.model_type}-{config.num_hidden_layers}x{config.hidden_size}"


def hparams_files(editor: str) -> list[dict]:
    """The data files an editor resolves, lowest first: the shared bases they name
    (`base: front_end`), then the inner editor's, then a wrapper's (`lyaplock+alphaedit`)."""
    files = [HPARAMS_DIR / f"{name}.yaml" for name in reversed(editor.split("+"))]
    datas = [yaml.safe_load(p.read_text()) or {} for p in files if p.exists()]
    bases = list(dict.fromkeys(d["base"] for d in datas if "base" in d))
    return [yaml.safe_load((HPARAMS_DIR / f"{b}.yaml").read_text()) for b in bases] + datas


def resolve_hparams(editor: str, config, overrides: dict | None = None) -> HParams:
    # level by level over the files, a later file's values over an earlier's:
    # defaults < family < model < overrides
    datas = hparams_files(editor)
    merged: dict = {}
    for data in datas:
        merged.update(data.get("defaults", {}))
    for data in datas:
        merged.update(data.get("family", {}).get(config.model_type, {}))
    for data in datas:
        merged.update(data.get("model", {}).get(model_key(config), {}))
    merged.update(overrides or {})
    known = {f.name for f in fields(HParams)}
    extra = {k: merged.pop(k) for k in list(merged) if k not in known | {"extra"}}
    if "layers" not in merged:
        raise EditorError(f"no layers configured for {editor} on {model_key(config)}",
                          hint="set hparams: {layers: [...]} in kbsync.yaml")
    merged["layers"] = tuple(merged["layers"])
    n = config.num_hidden_layers
    if any(not 0 <= l < n for l in merged["layers"]):
        raise EditorError(f"layers {list(merged['layers'])} out of range for a {n}-layer model")
    extra = {**merged.pop("extra", {}), **extra}
    return HParams(**merged, extra=extra)


def more_effort(hp: HParams, factor: float) -> dict:
    """Overrides giving one edit `factor` times the optimisation: the target's gradient
    steps (UltraEdit: its `iterations`), and the early stop's k, so the target must stay
    top-1 that much longer before the search ends (a target that was top-1 only briefly
    is what fails efficacy once the solve spreads it over the layers)."""
    over: dict = {"steps": math.ceil(hp.steps * factor),
                  "early_stop_k": math.ceil(hp.early_stop_k * factor)}
    if "iterations" in hp.extra:
        over["iterations"] = math.ceil(int(hp.extra["iterations"]) * factor)
    return over
