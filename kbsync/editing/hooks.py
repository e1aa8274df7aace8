"""Forward hooks used by the front end: read the input of an MLP out-projection, read or
shift the output of a block, and stop a forward pass early once the last needed layer ran."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from kbsync.lm import arch


class StopForward(Exception):
    """Raised by a hook to skip the layers above the last one we need."""


def _hidden(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output, hidden):
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


@contextmanager
def capture_mlp_inputs(model, layers, store: dict):
    """store[layer] = input of the MLP out-projection, (B, T, d_in)."""
    handles = []
    for layer in layers:
        def hook(_module, inputs, layer=layer):
            store[layer] = inputs[0]
        handles.append(arch.mlp_out(model, layer).register_forward_pre_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture_mlp_output(model, layer: int, store: dict):
    """store[layer] = output of the MLP out-projection, (B, T, d_out)."""
    def hook(_module, _inputs, output):
        store[layer] = output
    handle = arch.mlp_out(model, layer).register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextmanager
def capture_block_output(model, layer: int, store: dict):
    def hook(_module, _inputs, output):
        store[layer] = _hidden(output)
    handle = arch.block(model, layer).register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


@contextmanager
def shift_block_output(model, layer: int, rows: torch.Tensor, positions: torch.Tensor,
                       shift_fn):
    """Add shift_fn() (one vector per row) to the block's output at (rows, positions)."""
    def hook(_module, _inputs, output):
        hidden = _hidden(output)
        # under a device map this block may sit on another GPU than the shift
        shifted = torch.index_put(hidden, (rows.to(hidden.device), positions.to(hidden.device)),
                                  shift_fn().to(hidden.device, hidden.dtype), accumulate=True)
        return _replace_hidden(output, shifted)
    handle = arch.block(model, layer).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def run(model, batch, stop_after: int | None = None):
    """Forward the base model (no LM head). With stop_after, the blocks above that layer
    are skipped (the caller only reads hooks) and None is returned."""
    handle = None
    if stop_after is not None:
        def stop(*_):
            raise StopForward
        # registered after any capture hook on this block, so those run first
        handle = arch.block(model, stop_after).register_forward_hook(stop)
    try:
        return model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    except StopForward:
        return None
    finally:
        if handle is not None:
            handle.remove()
