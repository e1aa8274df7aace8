"""Memory of past edits' keys, Σ K_p K_pᵀ per edited layer, shared by the editors that
keep earlier facts fixed with an explicit term (AlphaEdit §3.2, ENCORE §4.2).

The keys of a batch (n, d_in), recomputed with the edited model, travel in the patch as
`keys.<layer>`: far smaller than the d_in² sum they fold into, and folding them again
along a snapshot's chain rebuilds the memory exactly. At layer ℓ these are also the keys
the solve used: an update of layer ℓ or above does not change layer ℓ's MLP input."""

from __future__ import annotations

import torch


def accumulate(state: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
    """state[key] += value, starting from value: how every editor folds a patch's state."""
    state[key] = state[key] + value if key in state else value


class KeyMemory:
    """Mixin for a LocateThenEdit editor: state `past_kkt.<layer>` (d_in, d_in) float64."""

    state: dict[str, torch.Tensor]

    def past_gram(self, layer: int, like: torch.Tensor) -> torch.Tensor | int:
        """Σ K_p K_pᵀ of accepted patches at `layer` on like's device/dtype (0 if none)."""
        past = self.state.get(f"past_kkt.{layer}")
        return past.to(like) if past is not None else 0

    def state_update(self, keys) -> dict[str, torch.Tensor]:
        return {f"keys.{l}": k.float() for l, k in keys.items()}

    def remember(self, patch) -> None:
        for name, k in patch.state_update.items():
            layer = name.split(".")[1]
            kkt = k.T.double() @ k.double()                            # (d_in, d_in)
            accumulate(self.state, f"past_kkt.{layer}", kkt)
