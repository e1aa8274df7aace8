"""Architecture map: where, per model family, the blocks and the MLP out-projection live.

Editors ask this module for modules; they never spell a module path themselves.
GPT-2 keeps its MLP projections in `Conv1D`, whose weight is stored transposed
(d_in, d_out); `weight_of` / `set_delta` hide that so editors always see (d_out, d_in).
"""

from __future__ import annotations

from dataclasses import dataclass

from kbsync.errors import ModelError


@dataclass(frozen=True)
class Arch:
    family: str
    blocks: str          # dotted path of the ModuleList of transformer blocks
    mlp_out: str         # path of the MLP out-projection inside one block
    final_norm: str      # dotted path from the model root
    unembed: str         # dotted path of the output embedding
    transposed: bool = False   # weight stored as (d_in, d_out)


ARCHS: dict[str, Arch] = {
    "gpt2": Arch("gpt2", "transformer.h", "mlp.c_proj", "transformer.ln_f", "lm_head", True),
    "gptj": Arch("gptj", "transformer.h", "mlp.fc_out", "transformer.ln_f", "lm_head"),
    "gpt_neox": Arch("gpt_neox", "gpt_neox.layers", "mlp.dense_4h_to_h",
                     "gpt_neox.final_layer_norm", "embed_out"),
    **{name: Arch(name, "model.layers", "mlp.down_proj", "model.norm", "lm_head")
       for name in ("llama", "qwen2", "qwen3", "mistral")},
}


def arch_for(model) -> Arch:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHS:
        raise ModelError(f"unsupported architecture {model_type!r}",
                         hint=f"supported: {', '.join(sorted(ARCHS))}")
    return ARCHS[model_type]


def get_module(root, dotted: str):
    module = root
    for part in dotted.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)
    return module


def num_layers(model) -> int:
    return len(get_module(model, arch_for(model).blocks))


def block(model, layer: int):
    return get_module(model, arch_for(model).blocks)[layer]


def mlp_out(model, layer: int):
    return get_module(block(model, layer), arch_for(model).mlp_out)


def mlp_out_name(model, layer: int) -> str:
    arch = arch_for(model)
    return f"{arch.blocks}.{layer}.{arch.mlp_out}.weight"


def weight_of(model, layer: int):
    """The edited matrix as (d_out, d_in), a view of the parameter."""
    weight = mlp_out(model, layer).weight
    return weight.T if arch_for(model).transposed else weight


def dims(model, layer: int) -> tuple[int, int]:
    d_out, d_in = weight_of(model, layer).shape
    return d_out, d_in
