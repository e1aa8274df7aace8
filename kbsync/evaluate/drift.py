"""Perplexity drift: perplexity on a fixed reference text (the tail of the shipped corpus,
which the covariance statistics never sample), relative to the base
model. The base model's perplexity is cached per model fingerprint and text, so a later
apply need not load the base model a second time."""

from __future__ import annotations

import hashlib
import json
from typing import Callable

from kbsync.editing.stats import CORPUS, DRIFT_HOLDOUT
from kbsync.home import replace_cache_file
from kbsync.lm.load import cache_dir

GATE_PASSAGES = 8      # apply's drift gate: cheap enough to run on every batch
BENCH_PASSAGES = DRIFT_HOLDOUT    # the quality benchmark: a steadier figure


def reference_text(passages: int) -> list[str]:
    return CORPUS.read_text().splitlines()[-passages:]


def base_perplexity(fingerprint: str, reference: list[str], compute: Callable[[], float]) -> float:
    """compute() measures it on the base model, on a cache miss only."""
    digest = hashlib.sha256("\n".join(reference).encode()).hexdigest()[:16]
    path = cache_dir() / "perplexity" / f"{fingerprint}-{digest}.json"
    if path.exists():
        return json.loads(path.read_text())["perplexity"]
    value = compute()
    replace_cache_file(path, lambda tmp: tmp.write_text(json.dumps({"perplexity": value})))
    return value
