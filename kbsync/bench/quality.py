"""`kbsync bench quality`: N sequential edits from CounterFact or zsRE in batches of B,
all scored after the last batch against the unedited model (the sequential protocol of
AlphaEdit, arXiv 2410.02355, and ENCORE, arXiv 2502.01636).

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
from kbsync.bench.prescores import cached_scores
from kbsync.bench.setup import load_bench_model, timed_statistics
from kbsync.editing.patch import save_layers
from kbsync.editing.registry import make_editor
from kbsync.editing.side.memory import attached
from kbsync.editing.side.train import memory_off
from kbsync.evaluate.drift import BENCH_PASSAGES, reference_text
from kbsync.evaluate.metrics import exact_match, rewrite_scores, snapshot_scores
from kbsync.lm import arch
from kbsync.lm.score import next_token_top1, perplexity
from kbsync.output import progress_enabled
from kbsync.report.norms import frobenius_norm

EXACT_MATCH_CASES = 1000     # greedy decoding is the slowest score: the first 1,000 cases


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
                offset: int = 0, trace: int = 0, trace_every: int = 0,
                on_batch: Callable[[dict], None] | None = None,
                checkpoint: str | os.PathLike | None = None,
                checkpoint_every: float = 60.0) -> dict:
    """With `trace`, every `trace_every` edits (default: every batch) and after the last,
    the first `trace` edits' efficacy and their neighbours' locality, and the perplexity
    drift, are recorded. With `checkpoint`, the run saves its progress there at most every `checkpoint_every`
    seconds (and after the last batch) and, started again with the same arguments, goes on
    from the last save (kbsync.bench.checkpoint)."""
    torch.manual_seed(seed)
    lm = load_bench_model(model, device)
    cases = DATASETS[dataset](edits, offset)
    ed = make_editor(editor, lm.model.config, {**(hparams or {}), "seed": seed})
    reference = reference_text(BENCH_PASSAGES)
    layers = ed.weight_layers                       # side memories: none
    run = {"editor": editor, "dataset": dataset, "edits": edits, "batch": batch, "seed": seed,
           "model": model, "hparams": hparams or {}, "offset": offset, "trace": trace,
           "trace_every": trace_every}

    originals = save_layers(lm.model, layers)
    # the statistics are cached per model and layer, so a resumed run only reads them back
    stats_seconds = timed_statistics(ed, lm)
    progress = load_checkpoint(checkpoint, run, lm, ed, layers) if checkpoint else None
    if progress is None:
        pre = cached_scores(lm, dataset, len(cases), offset,
                            lambda: snapshot_scores(lm, cases, dataset))
        progress = Progress(pre=pre,
                            ppl_before=perplexity(lm, reference), stats_seconds=stats_seconds)
    last_save = wall_start = time.perf_counter()
    run_start = progress.done

    bar = tqdm(total=len(cases), initial=progress.done, desc=f"{editor} edits", unit="edit",
               disable=None if progress_enabled() else True)
    every = trace_every or batch
    for start in range(progress.done, len(cases), batch):
        t0 = time.perf_counter()
        patch = ed.edit(lm, [c.spec for c in cases[start:start + batch]])
        patch.apply(lm.model)
        ed.accept(patch)
        progress.done = min(start + batch, len(cases))
        progress.edit_seconds += time.perf_counter() - t0
        bar.update(progress.done - start)
        rate = (progress.done - run_start) / max(time.perf_counter() - wall_start, 1e-9)
        record = {"type": "batch", "done": progress.done, "edits_per_second": rate,
                  "eta_seconds": (len(cases) - progress.done) / rate, **ed.last_stats}
        if trace and (progress.done % every < batch or progress.done == len(cases)):
            record.update(_trace_point(lm, cases[:min(trace, progress.done)], dataset,
                                       progress, reference))
            progress.traced.append({k: record[k] for k in
                                    ("done", "efficacy_first", "locality_first", "ppl_drift")})
        if checkpoint and (progress.done == len(cases)
                           or time.perf_counter() - last_save >= checkpoint_every):
            save_checkpoint(checkpoint, run, progress, lm, ed, layers)
            last_save = time.perf_counter()
        if on_batch:
            on_batch(record)

    bar.close()
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
        "exact_match": exact_match(lm, cases[:EXACT_MATCH_CASES]),
        "exact_match_cases": min(len(cases), EXACT_MATCH_CASES),
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


def _trace_point(lm, first, dataset: str, progress: Progress, reference) -> dict:
    """Measured outside the edit clock: how the earliest edits and the model hold up."""
    top1 = next_token_top1(lm, [c.neighbour for c in first])
    progress.ppl_now = perplexity(lm, reference)
    return {"efficacy_first": float(rewrite_scores(lm, first, dataset).mean()),
            "locality_first": float((top1 == progress.pre["neighbour_top1"][:len(first)])
                                    .float().mean()),
            "ppl_drift": progress.ppl_now / progress.ppl_before - 1.0}
