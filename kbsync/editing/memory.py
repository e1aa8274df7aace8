"""Memory of past edits' keys, Σ K_p K_pᵀ per edited layer, shared by the editors that
keep earlier facts fixed with an explicit term (AlphaEdit §3.2, ENCORE §4.2).

The keys of a batch (n, d_in) travel in the patch as `keys.<layer>`, what the layer's
solve adds (`Solution.adds`): far smaller than the d_in² sum they fold into, and folding
them again along a snapshot's chain rebuilds the memory exactly. At layer ℓ they are the
keys recomputed with the edited model: an update of layer ℓ or above does not change
layer ℓ's MLP input."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kbsync.editing.state import EditorState, Tensors, add, named, per_layer


def batch_keys(keys: torch.Tensor) -> dict[str, torch.Tensor]:
    """A solve's keys (d_in, n) float64 as the patch carries them: (n, d_in) float32, as
    computed (the float64 copy of float32 keys rounds back exactly)."""
    return {"keys": keys.T.float().cpu().contiguous()}


@dataclass
class KeyGram(EditorState):
    """Σ K_p K_pᵀ (d_in, d_in) float64 per layer, folded from each patch's `keys.<layer>`
    (n, d_in): the keys its solve used (editing/memory.py)."""

    TAG = "keys"
    past_kkt: dict[int, torch.Tensor] = field(default_factory=dict)

    def fold(self, patch) -> None:
        for layer, k in per_layer(patch.state_update, "keys.").items():
            self.past_kkt[layer] = add(self.past_kkt.get(layer), k.T.double() @ k.double())

    def keys_update(self, keys: torch.Tensor) -> Tensors:
        return batch_keys(keys)

    def entries(self) -> Tensors:
        return named("past_kkt.", self.past_kkt)

    @classmethod
    def from_entries(cls, tensors: Tensors) -> "KeyGram":
        return cls(per_layer(tensors, "past_kkt."))

class KeyMemory:
    """Mixin for a LocateThenEdit editor whose memory is a KeyGram."""

    memory_class = KeyGram
    memory: KeyGram

    def past_gram(self, layer: int, like: torch.Tensor) -> torch.Tensor | int:
        """Σ K_p K_pᵀ of accepted patches at `layer` on like's device/dtype (0 if none)."""
        past = self.memory.past_kkt.get(layer)
        return past.to(like) if past is not None else 0
