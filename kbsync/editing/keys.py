"""Keys: the input of the MLP out-projection at the subject's last token (MEMIT §1.4),
averaged over context templates: the bare prompt weighs 1/2, the prefixed ones share 1/2."""

from __future__ import annotations

from contextlib import ExitStack
from typing import Iterator

import torch

from kbsync.editing.hooks import capture_block_output, capture_mlp_inputs, run
from kbsync.editing.request import EditSpec
from kbsync.lm.tokens import encode, render

CHUNK = 128   # sequences per forward pass


def context_weights(n_specs: int, contexts: list[str]) -> torch.Tensor:
    """(n_specs, n_specs * len(contexts)) averaging matrix over each spec's rows."""
    per = torch.full((len(contexts),), 0.5 / max(len(contexts) - 1, 1))
    per[0] = 0.5 if len(contexts) > 1 else 1.0
    return torch.block_diag(*[per[None, :]] * n_specs)


def keys_and_outputs(lm, specs: list[EditSpec], contexts: list[str], layers: list[int],
                     out_layer: int | None = None):
    """Keys at `layers`, {layer: (n, d_in)} in float32; and, if out_layer is given, the
    output of that block at the subject's last token of each bare prompt, (n, d_model)."""
    outs = [] if out_layer is None else [out_layer]
    keys_raw: dict[int, list] = {layer: [] for layer in layers}
    outs_raw = []
    for inputs, outputs in states_at(lm, specs, contexts, layers, outs):
        for layer in layers:
            keys_raw[layer].append(inputs[layer].float().cpu())
        outs_raw += [outputs[layer].float().cpu() for layer in outs]
    weights = context_weights(len(specs), contexts)
    keys = {layer: weights @ torch.cat(keys_raw[layer]) for layer in layers}
    bare = torch.cat(outs_raw)[:: len(contexts)] if out_layer is not None else None
    return keys, bare


def states_at(lm, specs: list[EditSpec], contexts: list[str], mlp_inputs: list[int],
              block_outputs: list[int], position: str = "subject_pos"
              ) -> Iterator[tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]]:
    """Per chunk of the templated prompts (spec-major, CHUNK per forward pass): the input of
    each `mlp_inputs` layer's out-projection and the output of each `block_outputs` block,
    (rows, ·) at every prompt's `position` ("subject_pos" or "last_pos"), each on the
    device of the layer that made it (a device map spreads them)."""
    rendered = [render(ctx, spec.prompt, spec.subject) for spec in specs for ctx in contexts]
    stop = max(mlp_inputs + block_outputs)
    for start in range(0, len(rendered), CHUNK):
        chunk = rendered[start:start + CHUNK]
        batch = encode(lm.tokenizer, [t for t, _ in chunk], [s for _, s in chunk]).to(lm.device)
        rows, pos = torch.arange(len(chunk), device=lm.device), getattr(batch, position)
        inputs: dict = {}
        outputs: dict = {}
        with torch.no_grad(), capture_mlp_inputs(lm.model, mlp_inputs, inputs), \
                ExitStack() as stack:
            for layer in block_outputs:
                stack.enter_context(capture_block_output(lm.model, layer, outputs))
            run(lm.model, batch, stop_after=stop)
        yield ({layer: _at(inputs[layer], rows, pos) for layer in mlp_inputs},
               {layer: _at(outputs[layer], rows, pos) for layer in block_outputs})


def _at(states: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """states[rows, positions]; under a device map the layer that produced `states` may
    sit on another GPU than the indices."""
    return states[rows.to(states.device), positions.to(states.device)]
