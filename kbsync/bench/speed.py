"""`kbsync bench speed`: where the time of an edit goes, against the machine's floor.

N CounterFact edits in batches of B, each batch run as `kbsync apply` runs it: the parent's
reference on the gate probes, the editor (keys, target vectors, solve), the gates on the
candidate, and a commit (patch object and manifest, fsynced) into a throw-away store.
Covariance statistics are computed first and reported apart (`stats_seconds`): they are
cached per model and layer, so an apply pays them once per model, not per edit.
"""

from __future__ import annotations

import resource
import tempfile
from pathlib import Path
from typing import Callable

import torch

from kbsync.bench import floor
from kbsync.bench.datasets import DATASETS, Case
from kbsync.bench.setup import load_bench_model, timed_statistics
from kbsync.config import Gates
from kbsync.editing.clock import PhaseClock
from kbsync.editing.registry import make_editor
from kbsync.evaluate.drift import GATE_PASSAGES, reference_text
from kbsync.evaluate.gates import Probes, check, parent_reference
from kbsync.lm import arch
from kbsync.lm.score import perplexity

PHASES = ("keys", "targets", "solve", "gates", "commit")
RETENTION_SAMPLE = 200


def probes_for(batch: list[Case], earlier: list[Case]) -> Probes:
    kept = earlier[-RETENTION_SAMPLE:]
    return Probes([c.rewrite for c in batch], [c.spec.target for c in batch],
                  [c.paraphrase for c in batch], [c.spec.target for c in batch],
                  [c.neighbour for c in batch], [c.rewrite for c in kept],
                  [c.spec.target for c in kept])


def _tokens(tokenizer, texts: list[str]) -> int:
    return sum(len(ids) for ids in tokenizer(texts)["input_ids"]) if texts else 0


def _commit(store: Path, patch, serial: int, parent: str | None, lm, editor) -> str:
    from kbsync.store.objects import ObjectStore
    from kbsync.store.manifest import Manifest
    from kbsync.store.snapshots import SnapshotStore

    objects, snapshots = ObjectStore(store), SnapshotStore(store)
    manifest = Manifest(parent=parent, serial=serial, base_model=lm.fingerprint,
                        editor=editor.name, patch=objects.put_tensors(patch.tensors()),
                        facts=objects.put_text("{}"), facts_hash="bench")
    snapshot = snapshots.write(manifest)
    snapshots.set_head(snapshot)
    return snapshot


def run_speed(model: str = "default", editor: str = "alphaedit", edits: int = 50,
              batch: int = 10, *, device: str = "auto", seed: int = 0,
              fixed_steps: int | None = None, hparams: dict | None = None,
              on_batch: Callable[[dict], None] | None = None) -> dict:
    torch.manual_seed(seed)
    lm = load_bench_model(model, device)
    dev, dtype = lm.device, next(lm.model.parameters()).dtype
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    overrides = {**(hparams or {}), "seed": seed}
    if fixed_steps:      # comparable work across machines: no early stop
        overrides.update(steps=fixed_steps, early_stop=False)
    ed = make_editor(editor, lm.model.config, overrides)
    rates = floor.measure_rates(dev, dtype)
    shape = floor.ModelShape.of(lm.model)
    cases = DATASETS["counterfact"](edits, 0)

    stats_seconds = timed_statistics(ed, lm)
    reference = reference_text(GATE_PASSAGES)
    base_ppl = perplexity(lm, reference)
    gates, clock = Gates(), PhaseClock()
    work = dict.fromkeys(PHASES, 0.0)
    commit_bytes, head = 0, None
    ed.clock.take()

    with tempfile.TemporaryDirectory(prefix="kbsync-speed-") as store:
        for number, at in enumerate(range(0, len(cases), batch), start=1):
            chunk = cases[at:at + batch]
            probes = probes_for(chunk, cases[:at])
            with clock.phase("gates", dev):
                parent = parent_reference(lm, probes)
            patch = ed.edit(lm, [c.spec for c in chunk])
            patch.apply(lm.model)
            with clock.phase("gates", dev):
                check(lm, probes, parent, gates, base_ppl, reference,
                      patch.checked_tensors(lm.model))
            with clock.phase("commit", dev):
                ed.accept(patch)
                head = _commit(Path(store), patch, number, head, lm, ed)
            _count_work(work, rates, shape, ed, lm, chunk, probes, reference)
            commit_bytes += patch.nbytes
            if on_batch:
                on_batch({"type": "batch", "done": at + len(chunk)})

    seconds = {**ed.clock.take(), **clock.take()}
    seconds.pop("stats", None)
    work["commit"] = commit_bytes * 2 / rates.copy_bytes          # write + hash read
    n = len(cases)
    total = sum(seconds.get(p, 0.0) for p in PHASES)
    peak_host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux
    floor_total = sum(work.values())
    return {
        "model": model, "editor": editor, "edits": n, "batch": batch,
        "device": str(dev), "dtype": str(dtype).removeprefix("torch."),
        "seconds_per_edit": total / n, "floor_seconds_per_edit": floor_total / n,
        "ratio_to_floor": total / floor_total if floor_total else None,
        **{f"{p}_seconds_per_edit": seconds.get(p, 0.0) / n for p in PHASES},
        **{f"{p}_floor_seconds_per_edit": work[p] / n for p in PHASES},
        "stats_seconds": stats_seconds,
        "peak_memory_bytes": (int(torch.cuda.max_memory_allocated(dev)) if dev.type == "cuda"
                              else peak_host),
        "peak_host_memory_bytes": peak_host,
        "machine": rates.to_dict(), "fixed_steps": fixed_steps,
        "hparams": ed.hp.to_dict() if hasattr(ed, "hp") else {},
    }


def _count_work(work: dict, rates: floor.MachineRates, shape: floor.ModelShape, ed, lm,
                chunk: list[Case], probes: Probes, reference: list[str]) -> None:
    """Add this batch's floor seconds per phase (floor.py says what is counted)."""
    stats, hp = ed.last_stats, ed.hp
    tokens = stats["target_tokens"]
    work["targets"] += floor.target_flops(shape, tokens, stats["target_steps"],
                                          hp.target_layer) / rates.flops
    work["keys"] += floor.keys_flops(shape, tokens["rewrite_prompts"], list(hp.layers),
                                     hp.target_layer) / rates.flops
    d_in = arch.dims(lm.model, hp.layers[0])[1]
    work["solve"] += len(hp.layers) * ed.solve_flops(d_in, len(chunk)) / rates.flops_fp64
    texts = (probes.edit_prompts + probes.para_prompts + probes.locality_prompts
             + probes.retention_prompts)
    work["gates"] += floor.gate_flops(shape, _tokens(lm.tokenizer, texts), len(texts),
                                      _tokens(lm.tokenizer, reference)) / rates.flops
