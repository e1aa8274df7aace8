"""Is the covariance sample large enough? Doubling it should barely move C, the null-space
projector, or an edit. Prints one row per sample size against the next smaller one.

    python benchmarks/stats_stability.py [--sizes 25000 50000 100000] [--edits 10]

The shipped corpus holds about 135k tokens of the default model's tokenizer, so the last
doubling measured is 50k -> 100k (the default, `stats_tokens: 100000`).
"""

from __future__ import annotations

import argparse
import time

import torch

from kbsync.bench.datasets import counterfact
from kbsync.editing.projector import nullspace_projector
from kbsync.editing.registry import make_editor
from kbsync.editing.stats import second_moments
from kbsync.lm.load import load_model


def rel(new: torch.Tensor, old: torch.Tensor) -> float:
    return float((new - old).norm() / new.norm())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 50_000, 100_000])
    parser.add_argument("--edits", type=int, default=10)
    args = parser.parse_args()
    lm = load_model("default", device="cpu")
    specs = [c.spec for c in counterfact(args.edits)]
    rows, previous = [], None
    for size in args.sizes:
        editor = make_editor("alphaedit", lm.model.config, {"stats_tokens": size})
        layers = list(editor.hp.layers)
        start = time.perf_counter()
        covs = second_moments(lm, layers, size)
        seconds = time.perf_counter() - start
        projs = {l: nullspace_projector(covs[l], editor.hp.nullspace_threshold) for l in layers}
        patch = editor.edit(lm, specs)
        deltas = {l: patch.delta(l) for l in layers}
        current = (covs, projs, deltas)
        if previous is not None:
            rows.append((size, seconds,
                         max(rel(covs[l], previous[0][l]) for l in layers),
                         max(rel(projs[l], previous[1][l]) for l in layers),
                         max(rel(deltas[l], previous[2][l]) for l in layers),
                         [int(torch.trace(projs[l]).round()) for l in layers]))
        else:
            rows.append((size, seconds, None, None, None,
                         [int(torch.trace(projs[l]).round()) for l in layers]))
        previous = current
    print(f"{'tokens':>8} {'seconds':>8} {'ΔC/C':>8} {'ΔP/P':>8} {'ΔΔ/Δ':>8}  null-space rank per layer")
    for size, seconds, dc, dp, dd, ranks in rows:
        fmt = lambda x: f"{x:8.4f}" if x is not None else f"{'-':>8}"   # noqa: E731
        print(f"{size:>8} {seconds:8.1f} {fmt(dc)} {fmt(dp)} {fmt(dd)}  {ranks}")
    print("(each Δ column: max over edited layers of ‖X(n) − X(n/2)‖_F / ‖X(n)‖_F; seconds: "
          "near 0 when the statistics were already cached: set KBSYNC_CACHE to a new folder)")


if __name__ == "__main__":
    main()
