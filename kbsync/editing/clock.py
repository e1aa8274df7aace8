"""Wall time per phase of an edit (keys, target vectors, solve, ...), for `bench speed` and
the ledger. CUDA work is asynchronous, so a phase ends with a synchronise on that device:
without it the time of a phase would be billed to whichever phase waits next."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch


class PhaseClock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def phase(self, name: str, device=None):
        _sync(device)
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync(device)
            self.seconds[name] += time.perf_counter() - start

    def take(self) -> dict[str, float]:
        """The seconds so far, and start again from zero."""
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


def _sync(device) -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
