"""Project configuration (`kbsync.yaml`): model, editor and its overrides, gates, batching.

Relative paths (`model`, `facts`, hparams `stats_corpus`) are relative to the folder
holding kbsync.yaml (`resolve_paths`), never to the current folder.
Errors point at file:line like fact-file errors (same YAML reader).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kbsync.errors import ConfigError, FactsError, KbsyncError
from kbsync.facts.yaml_io import read_yaml_file, validation_error

__all__ = ["CONFIG_NAME", "Gates", "Retry", "Config", "load_config", "render_config", "resolve_paths"]

CONFIG_NAME = "kbsync.yaml"
# `stats_corpus` values that name a corpus shipped with kbsync, not a file (editing/stats.py).
SHIPPED_CORPORA = ("mixed", "biographies")

_MODEL = ConfigDict(extra="forbid", strict=True, frozen=True)


class Gates(BaseModel):
    """Thresholds a candidate model must meet before a batch is committed."""

    model_config = _MODEL
    efficacy_min: float = Field(0.9, ge=0, le=1, description="share of edited facts answered")
    generalization_min: float = Field(
        0.0, ge=0, le=1, description="share of paraphrases answered; recorded always, not "
        "blocking by default: CounterFact-style paraphrases are noisy for small models")
    locality_min: float = Field(0.9, ge=0, le=1,
                                description="share of unrelated probes whose answer is unchanged")
    kl_max: float = Field(0.5, ge=0, description="max mean KL on the locality probes' next token")
    retention_min: float = Field(0.98, ge=0, le=1,
                                 description="share of earlier committed facts still answered")
    retention_sample: int = Field(200, ge=0, description="how many earlier facts to re-check")
    ppl_drift_max: float = Field(0.1, ge=0,
                                 description="max relative perplexity rise on the reference text")
    general_knowledge_min: float = Field(
        0.9, ge=0, le=1, description="share of shipped general-knowledge prompts whose answer "
        "is still the base model's (of those it answers with confidence)")
    general_knowledge_margin: float = Field(
        1.0, ge=0, description="nats by which the base model's answer to a general-knowledge "
        "prompt must lead its runner-up for the prompt to count")


class Retry(BaseModel):
    """What a failing batch gets instead of a bisection: its edits that fail their own check
    are retried alone, with more optimisation and then the fallback editor, if any."""

    model_config = _MODEL
    effort: float = Field(2.0, ge=1, description="target-optimisation steps multiplier for "
                          "the lone retry of an edit that failed its own efficacy")
    fallback_editor: str | None = Field(None, description="editor tried last for an edit "
                                        "that still fails alone, e.g. grace, and the one "
                                        "that makes the batches, in its own batch size, "
                                        "once a cumulative gate's budget is nearly spent; "
                                        "null: none")
    fallback_hparams: dict[str, Any] = Field(default_factory=dict,
                                             description="overrides of its hyper-parameters")
    repair: bool = Field(True, description="a batch or lone edit that fails only retention "
                         "is made again with the earlier facts it lost taught back")


class Config(BaseModel):
    model_config = _MODEL
    model: str = Field("default", description='a Hugging Face model folder, or "default" '
                                              "(SmolLM2-135M-Instruct)")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16")
    editor: str = Field("alphaedit", description="`kbsync editors` lists the choices")
    hparams: dict[str, Any] = Field(default_factory=dict,
                                    description="overrides of the editor's hyper-parameters")
    batch_size: int | None = Field(None, ge=1, description="edits per batch; null: the "
                                   "editor's own (`kbsync editors`: ultraedit 100, grace 50, "
                                   "others 10)")
    patch_precision: Literal["float16", "float32"] = Field(
        "float16", description="how weight deltas are stored: float16 x a float32 scale per "
        "rank-one component (half the bytes), or float32 exactly as the editor made them")
    # the trade-off, measured on the default model with AlphaEdit (issue 22): a weights
    # checkpoint is 17.7 MB (5 layers), its editor memory 94.5 MB, and folding one batch's
    # keys into that memory takes about 35 ms per layer, replaying its weights a few ms
    checkpoint_every: int = Field(128, ge=1, description="patches between checkpoints of the "
                                  "edited layers: loading a snapshot replays fewer than this many")
    editor_checkpoint_every: int = Field(256, ge=1, description="patches between checkpoints of "
                                         "the editor's memory (folded again at each apply's start)")
    facts: str = Field("facts", description="folder (or file) holding the knowledge base")
    gates: Gates = Field(default_factory=Gates,
                         description="a batch is committed only if every gate passes")
    retry: Retry = Field(default_factory=Retry,
                         description="how a failing batch's edits are retried")
    seed: int = Field(0, description="random seed for the editor")
    allow_pickle: bool = Field(False, description="load pickled (.bin) weights; unsafe, "
                                                  "safetensors are preferred")


def load_config(path: Path | str) -> Config:
    path = Path(path)
    if not path.is_file():
        raise KbsyncError(f"no config file at {path}", hint="run `kbsync init` to create one")
    try:
        return _parse(path)
    except FactsError as err:
        raise ConfigError.from_facts_error(err) from None


def _parse(path: Path) -> Config:
    doc = read_yaml_file(path)
    if doc.data is None:
        return Config()
    if not isinstance(doc.data, dict):
        raise doc.location(()).error(f"{CONFIG_NAME} must be a mapping of settings",
                                     hint="see `kbsync init` for an example")
    try:
        return Config.model_validate(doc.data)
    except ValidationError as err:
        raise validation_error(err, doc, Config) from None


def resolve_paths(config: Config, root: Path | str) -> Config:
    """`config` with `model` and hparams `stats_corpus` made absolute against `root`, the
    folder of kbsync.yaml. Resolved against the current folder instead, `kbsync -C proj`
    or a run from a subfolder would miss the model, or edit another one found there."""
    updates: dict[str, Any] = {}
    if config.model != "default":
        updates["model"] = str(_under(root, config.model))
    corpus = config.hparams.get("stats_corpus")
    if isinstance(corpus, str) and corpus not in SHIPPED_CORPORA:
        updates["hparams"] = {**config.hparams, "stats_corpus": str(_under(root, corpus))}
    return config.model_copy(update=updates)


def _under(root: Path | str, path: str) -> Path:
    # An absolute `path` stays as it is: Path("/a") / "/b" is "/b".
    return (Path(root) / Path(path).expanduser()).resolve()


def render_config(config: Config) -> str:
    """kbsync.yaml text for `config`, every setting on its own commented line."""
    import yaml

    lines = ["# kbsync project configuration; relative paths are relative to this file.",
             "# Every key is optional; shown here with its current value."]
    for name, info in Config.model_fields.items():
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            lines.append(_line(f"{name}:", info.description))
            for sub, sub_info in type(value).model_fields.items():
                lines.append(_line(f"  {sub}: {_scalar(yaml, getattr(value, sub))}",
                                   sub_info.description))
        else:
            lines.append(_line(f"{name}: {_scalar(yaml, value)}", info.description))
    return "\n".join(lines) + "\n"


def _scalar(yaml: Any, value: Any) -> str:
    # yaml.safe_dump quotes whatever would be misread (`no`, `1.10`, ...).
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix(
        "\n...").removesuffix("...").strip()


def _line(text: str, comment: str | None) -> str:
    return f"{text:<32} # {comment}" if comment else text
