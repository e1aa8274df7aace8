"""The unedited model's benchmark scores, cached on disk: they depend only on the model's
weights, the dataset slice and the scoring code, and at 10,000 cases they take as long as
the scoring after the edits. Keyed by the weights' fingerprint, so an edited or another
model never reads them."""

from __future__ import annotations

import torch

from kbsync.home import replace_cache_file
from kbsync.lm.load import cache_dir

VERSION = 2          # bump when snapshot_scores changes what it measures


def _path(fingerprint: str, dataset: str, edits: int, offset: int):
    return cache_dir() / "bench" / fingerprint / f"{dataset}-{offset}-{edits}-v{VERSION}.safetensors"


def cached_scores(lm, dataset: str, edits: int, offset: int, compute) -> dict:
    from safetensors.torch import load_file, save_file

    path = _path(lm.fingerprint, dataset, edits, offset)
    if path.exists():
        try:
            loaded = load_file(path)
            return {k: (v if v.dim() else float(v)) for k, v in loaded.items()}
        except Exception:        # a torn or foreign file: measure again
            path.unlink(missing_ok=True)
    scores = compute()
    replace_cache_file(path, lambda tmp: save_file(
        {k: (v.contiguous() if torch.is_tensor(v) else torch.tensor(v, dtype=torch.float64))
         for k, v in scores.items()}, str(tmp)))
    return scores
