"""A long `bench quality` run's progress on disk, so a killed run goes on where it stopped.

A 1,000-edit run on a CPU takes hours; a killed process (a session's end, a preempted node)
would otherwise lose all of it. After a batch the run may save one safetensors file:

    weight.<layer>               the edited matrices as they are now
    memory.<kind>.<layer>.<name> every attached side memory
    editor.<name>                the editor's state_dict (AlphaEdit's projector, queues...)
    pre.<name>                   the unedited model's scores, which cannot be measured again
    rng.torch                    the CPU generator, so a resumed run draws what it would have

and, as metadata, the run's identity (editor, dataset, sizes, seed, model, hparams), the
progress counters and the editor's Python RNG. Written atomically: a kill while saving
leaves the previous checkpoint. Resumed on a CPU, a run gives the result of the run never
killed, bit for bit (tests/test_bench_quality.py); on a GPU, as far as its kernels are
deterministic. Seconds per edit count the edit time of every process that took part."""

from __future__ import annotations

import json
import os
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from kbsync.editing.patch import restore_layers
from kbsync.editing.side.memory import attach_memory_tensors, memory_tensors
from kbsync.errors import KbsyncError
from kbsync.lm import arch
from kbsync.store.atomic import atomic_write_bytes


@dataclass
class Progress:
    """Everything the loop carries from batch to batch, apart from model and editor."""
    pre: dict                          # snapshot_scores of the unedited model
    ppl_before: float
    stats_seconds: float
    done: int = 0
    edit_seconds: float = 0.0
    ppl_now: float | None = None
    traced: list = field(default_factory=list)


def save_checkpoint(path: str | os.PathLike, run: dict, progress: Progress, lm, editor,
                    layers) -> None:
    from safetensors.torch import save

    tensors = {f"weight.{layer}": arch.weight_of(lm.model, layer).detach() for layer in layers}
    tensors |= {f"memory.{k}": t for k, t in memory_tensors(lm.model).items()}
    tensors |= {f"editor.{k}": t for k, t in editor.state_dict().items()}
    tensors |= {f"pre.{k}": v for k, v in progress.pre.items() if torch.is_tensor(v)}
    tensors["rng.torch"] = torch.get_rng_state()
    scalars = {k: v for k, v in progress.pre.items() if not torch.is_tensor(v)}
    meta = {"run": json.dumps(run, sort_keys=True),
            "progress": json.dumps({**asdict(progress), "pre": scalars}),
            "rng.python": json.dumps(_python_rng(editor).getstate())}
    # safetensors refuses tensors that share storage: each entry gets its own copy
    data = save({k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()}, meta)
    atomic_write_bytes(path, data)


def load_checkpoint(path: str | os.PathLike, run: dict, lm, editor, layers) -> Progress | None:
    """Put the model, editor and generators back as the checkpoint left them and return its
    progress; None when `path` does not exist yet. A checkpoint of another run is an error,
    not a silent restart."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    saved_run = json.loads(meta.get("run", "null"))
    if saved_run != json.loads(json.dumps(run, sort_keys=True)):
        raise KbsyncError(f"{path} is the checkpoint of another run: {saved_run}",
                          hint="delete it, or pass another --checkpoint path")
    restore_layers(lm.model, {layer: tensors[f"weight.{layer}"] for layer in layers})
    attach_memory_tensors(lm.model, _section(tensors, "memory"))
    editor.load_state_dict(_section(tensors, "editor"))
    torch.set_rng_state(tensors["rng.torch"])
    _python_rng(editor).setstate(_as_tuple(json.loads(meta["rng.python"])))
    saved = json.loads(meta["progress"])
    saved["pre"] |= _section(tensors, "pre")
    return Progress(**saved)


def _section(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1:]: t for k, t in tensors.items() if k.startswith(prefix + ".")}


def _python_rng(editor) -> random.Random:
    # side editors draw their unrelated texts from their own Random; others have none and
    # get a throwaway one, so the file layout does not depend on the editor
    return getattr(editor, "rng", None) or random.Random(0)


def _as_tuple(value):
    """JSON turned getstate()'s nested tuples into lists; setstate wants them back."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value
