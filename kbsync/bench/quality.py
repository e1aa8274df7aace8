"""`kbsync bench quality`: N sequential edits from CounterFact or zsRE in batches of B,
all scored after the last batch against the unedited model (editors.md §12.1).

With `trace`, each batch is followed by the efficacy of the first `trace` edits made so far
and the perplexity drift: how the earliest edits and the model hold up as edits accumulate
(issue 7's plot, benchmarks/lifelong_plot.py)."""

from __future__ import annotations

import os
import time
from typing import Callable

import torch
from tqdm import tqdm

from kbsync.bench.checkpoint import Progress, load_checkpoint, save_checkpoint
from kbsync.bench.datasets import DATASETS
from kbsync.bench.setup import load_bench_model, timed_statistics
from kbsync.editing.base import LocateThenEdit
from kbsync.editing.patch import save_layers
from kbsync.editing.registry import make_editor
from kbsync.editing.side.memory import attached
from kbsync.editing.side.train import memory_off
from kbsync.evaluate.drift import BENCH_PASSAGES, reference_text
from kbsync.evaluate.metrics import exact_match, rewrite_scores, snapshot_scores
from kbsync.lm import arch
from kbsync.lm.score import perplexity
from kbsync.report.norms import frobenius_norm


def inference_slowdown(lm, texts: list[str], repeats: int = 3) -> float:
    """Forward time over `texts` with the side memories routed in, relative to without
    (best of `repeats` each), minus 1; 0 when the model has no side memory."""
    if not attached(lm.model):
        return 0.0

    def best() -> float:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            perplexity(lm, texts)
            times.append(time.perf_counter() - t0)
        return min(times)
    with_memory = best()
    with memory_off(lm.model):
        without = best()
    return with_memory / without - 1.0


def weight_growth(model, originals: dict[int, torch.Tensor]) -> dict:
    """‖W‖_F / ‖W_0‖_F per edited matrix, and how many of their entries changed."""
    now = {layer: arch.weight_of(model, layer).detach() for layer in originals}
    return {"relative_norm": {layer: frobenius_norm(now[layer]) / frobenius_norm(w0)
                              for layer, w0 in originals.items()},
            "params_changed": sum(int((now[layer] != w0).sum()) for layer, w0 in originals.items())}


def run_quality(editor: str, dataset: str, edits: int, batch: int, *, seed: int = 0,
                model: str = "default", device: str = "auto", hparams: dict | None = None,
                offset: int = 0, trace: int = 0,
                on_batch: Callable[[dict], None] | None = None,
                checkpoint: str | os.PathLike | None = None,
                checkpoint_every: float = 60.0) -> dict:
    """With `checkpoint`, the run saves its progress there at most every `checkpoint_every`
    seconds (and after the last batch) and, started again with the same arguments, goes on
    from the last save (kbsync.bench.checkpoint)."""
    torch.manual_seed(seed)
    lm = load_bench_model(model, device)
    cases = DATASETS[dataset](edits, offset)
    ed = make_editor(editor, lm.model.config, {**(hparams or {}), "seed": seed})
    reference = reference_text(BENCH_PASSAGES)
    layers = ed.hp.layers if isinstance(ed, LocateThenEdit) else []    # side memories: none
    run = {"editor": editor, "dataset": dataset, "edits": edits, "batch": batch, "seed": seed,
           "model": model, "hparams": hparams or {}, "offset": offset, "trace": trace}

    originals = save_layers(lm.model, layers)
    # the statistics are cached per model and layer, so a resumed run only reads them back
    stats_seconds = timed_statistics(ed, lm)
    progress = load_checkpoint(checkpoint, run, lm, ed, layers) if checkpoint else None
    if progress is None:
        progress = Progress(pre=snapshot_scores(lm, cases, dataset),
                            ppl_before=perplexity(lm, reference), stats_seconds=stats_seconds)
    last_save = time.perf_counter()

    for start in tqdm(range(progress.done, len(cases), batch), desc=f"{editor} edits",
                      unit="batch", disable=None):
        t0 = time.perf_counter()
        patch = ed.edit(lm, [c.spec for c in cases[start:start + batch]])
        patch.apply(lm.model)
        ed.accept(patch)
        progress.done = min(start + batch, len(cases))
        progress.edit_seconds += time.perf_counter() - t0
        record = {"type": "batch", "done": progress.done, **ed.last_stats}
        if trace:                     # measured outside the edit clock
            record["efficacy_first"] = float(rewrite_scores(
                lm, cases[:min(trace, progress.done)], dataset).mean())
            progress.ppl_now = perplexity(lm, reference)
            record["ppl_drift"] = progress.ppl_now / progress.ppl_before - 1.0
            progress.traced.append({k: record[k] for k in ("done", "efficacy_first", "ppl_drift")})
        if checkpoint and (progress.done == len(cases)
                           or time.perf_counter() - last_save >= checkpoint_every):
            save_checkpoint(checkpoint, run, progress, lm, ed, layers)
            last_save = time.perf_counter()
        if on_batch:
            on_batch(record)

    pre = progress.pre
    post = snapshot_scores(lm, cases, dataset)
    ppl_after = progress.ppl_now if progress.ppl_now is not None else perplexity(lm, reference)
    memories = attached(lm.model).values()
    return {
        "editor": editor, "dataset": dataset, "edits": len(cases), "batch": batch, "seed": seed,
        "efficacy": post["efficacy"], "efficacy_pre": pre["efficacy"],
        "generalization": post["generalization"], "generalization_pre": pre["generalization"],
        "locality": float((post["neighbour_top1"] == pre["neighbour_top1"]).float().mean()),
        "neighborhood_score": post["neighborhood_score"],
        "neighborhood_score_pre": pre["neighborhood_score"],
        "exact_match": exact_match(lm, cases),
        "ppl_drift": ppl_after / progress.ppl_before - 1.0,
        "seconds_per_edit": progress.edit_seconds / len(cases),
        "stats_seconds": progress.stats_seconds,
        # side memory the model carries at inference, and what routing through it costs
        "extra_bytes": sum(m.nbytes for m in memories),
        "inference_slowdown": inference_slowdown(lm, reference),
        **weight_growth(lm.model, originals),
        "trace": progress.traced,
        "hparams": ed.hp.to_dict() if hasattr(ed, "hp") else {},
    }
