"""The hardware floor of an edit: the work a phase must do over what this machine can do.

The machine's rates are measured in the same run (one large matmul in the model's dtype,
one in float64 for the solves, one large copy), so the floor moves with the machine and
whatever else it is doing. The work is counted from the model's shape and the tokens the
phase really processed (no padding):

  a block costs 2·P_block FLOPs per token forward (P_block: its weights), the same again
  per token backward for the input gradient only (the weights are frozen); the attention
  scores are left out (short prompts: well under 10% here).

  targets   prefix once through every block; each step the suffix forward through every
            block and backward through the blocks above the target layer; the unembedding
            (2·d·V) forward and backward at each target token
  keys      the rewrite prompts (without targets) up to the target layer, once per edited
            layer (MEMIT's spread recomputes them; an editor that remembers past keys
            keeps these)
  solve     the editor's own count in float64 (Editor.solve_flops)
  gates     the probe prompts forward through the whole model, twice (parent, candidate),
            and the candidate's perplexity on the reference text
  commit    the patch's bytes, written and hashed: bytes over the copy rate
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MachineRates:
    flops: float          # matmul FLOP/s in the model's dtype
    flops_fp64: float     # matmul FLOP/s in float64
    copy_bytes: float     # bytes/s of a large device-memory copy

    def to_dict(self) -> dict:
        return {"matmul_flops": self.flops, "matmul_flops_fp64": self.flops_fp64,
                "copy_bytes_per_s": self.copy_bytes}


def _best_seconds(fn, device, repeats: int = 5) -> float:
    fn()                                  # warm up (allocations, kernel choice)
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_rates(device, dtype: torch.dtype) -> MachineRates:
    device = torch.device(device)
    big = device.type == "cuda"
    n, n64 = (8192, 4096) if big else (2048, 1024)
    a = torch.randn(n, n, device=device, dtype=dtype)
    a64 = torch.randn(n64, n64, device=device, dtype=torch.float64)
    flops = 2 * n ** 3 / _best_seconds(lambda: a @ a, device)
    flops64 = 2 * n64 ** 3 / _best_seconds(lambda: a64 @ a64, device)
    buf = torch.empty((1 << 30 if big else 1 << 27) // 4, device=device, dtype=torch.float32)
    out = torch.empty_like(buf)
    copy = 2 * buf.numel() * 4 / _best_seconds(lambda: out.copy_(buf), device)   # read + write
    return MachineRates(flops, flops64, copy)


@dataclass(frozen=True)
class ModelShape:
    layers: int
    block_params: int
    d_model: int
    vocab: int

    @classmethod
    def of(cls, model) -> "ModelShape":
        from kbsync.lm import arch

        return cls(arch.num_layers(model), sum(p.numel() for p in arch.block(model, 0).parameters()),
                   model.config.hidden_size, model.get_output_embeddings().weight.shape[0])

    def forward_flops(self, tokens: int, blocks: int | None = None) -> float:
        return 2.0 * self.block_params * tokens * (self.layers if blocks is None else blocks)


def target_flops(shape: ModelShape, tokens: dict, steps: int, z_layer: int) -> float:
    above = shape.layers - z_layer - 1
    per_step = (shape.forward_flops(tokens["suffix"]) + shape.forward_flops(tokens["suffix"], above)
                + 2 * 2.0 * shape.d_model * shape.vocab * tokens["target"])
    return shape.forward_flops(tokens["prefix"]) + steps * per_step


def keys_flops(shape: ModelShape, prompt_tokens: int, layers: list[int], z_layer: int) -> float:
    """One pass per edited layer up to the target layer (keys and the current output
    there)."""
    return len(layers) * shape.forward_flops(prompt_tokens, z_layer + 1)


def gate_flops(shape: ModelShape, probe_tokens: int, probe_prompts: int,
               reference_tokens: int) -> float:
    """The probes on parent and candidate (next-token logits only), and the candidate's
    perplexity on the reference text (logits at every token)."""
    unembed = 2.0 * shape.d_model * shape.vocab
    return (2 * (shape.forward_flops(probe_tokens) + unembed * probe_prompts)
            + shape.forward_flops(reference_tokens) + unembed * reference_tokens)
