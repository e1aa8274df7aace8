"""What both benchmarks do before their first edit: load the model (a directory, `default`,
or a named random-weight shape) and compute the editor's covariance statistics, timed
apart because they are cached per model and layer and so paid once, not per edit."""

from __future__ import annotations

import time


def load_bench_model(model: str, device: str):
    from kbsync.bench.shapes import load_shape_model
    from kbsync.editing.side.memory import attach_memory_tensors
    from kbsync.lm.load import load_model

    if model.endswith("-shape"):
        return load_shape_model(model, device)
    return load_model(model, device=device, attach_memory=attach_memory_tensors)


def timed_statistics(editor, lm) -> float:
    """Seconds to make (or read from the cache) the editor's statistics; 0 for editors
    that use none."""
    start = time.perf_counter()
    if hasattr(editor, "covariances"):
        editor.covariances(lm)
    return time.perf_counter() - start
