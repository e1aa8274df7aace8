"""Keys: the input of the MLP out-projection at the subject's last token (MEMIT §1.4),
averaged over context templates: the bare prompt weighs 1/2, the prefixed ones share 1/2."""

from __future__ import annotations

import torch

from kbsync.editing.hooks import capture_block_output, capture_mlp_inputs, run
from kbsync.editing.request import EditSpec
from kbsync.editing.tokens import encode, render

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
    rendered = [render(ctx, spec.prompt, spec.subject) for spec in specs for ctx in contexts]
    stop = max(layers + ([out_layer] if out_layer is not None else []))
    keys_raw: dict[int, list] = {layer: [] for layer in layers}
    outs_raw = []
    for start in range(0, len(rendered), CHUNK):
        chunk = rendered[start:start + CHUNK]
        batch = encode(lm.tokenizer, [t for t, _ in chunk], [s for _, s in chunk]).to(lm.device)
        rows = torch.arange(len(chunk), device=lm.device)
        inputs: dict = {}
        outputs: dict = {}
        with torch.no_grad(), capture_mlp_inputs(lm.model, layers, inputs):
            if out_layer is None:
                run(lm.model, batch, stop_after=stop)
            else:
                with capture_block_output(lm.model, out_layer, outputs):
                    run(lm.model, batch, stop_after=stop)
                outs_raw.append(_at(outputs[out_layer], rows, batch.subject_pos))
        for layer in layers:
            keys_raw[layer].append(_at(inputs[layer], rows, batch.subject_pos))
    weights = context_weights(len(specs), contexts)
    keys = {layer: weights @ torch.cat(keys_raw[layer]) for layer in layers}
    bare = torch.cat(outs_raw)[:: len(contexts)] if out_layer is not None else None
    return keys, bare


def _at(states: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """states[rows, positions] in float32 on the CPU; under a device map the layer that
    produced `states` may sit on another GPU than the indices."""
    return states[rows.to(states.device), positions.to(states.device)].float().cpu()
