"""Moved to kbsync.lm.tokens (tokenisation is the model layer's: kbsync.lm.score uses it).

Kept only for importers written while the move landed; import kbsync.lm.tokens."""

from kbsync.lm.tokens import Batch, encode, render  # noqa: F401

__all__ = ["Batch", "encode", "render"]
