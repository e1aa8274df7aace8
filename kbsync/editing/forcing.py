"""Teacher forcing over a batch: every target token of the first `n_rows` rows, flattened,
so one gather scores them all (no Python loop per row or token)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kbsync.lm.tokens import Batch


@dataclass
class Forcing:
    row: torch.Tensor      # (n_tok,) the row each target token belongs to
    pos: torch.Tensor      # (n_tok,) the position whose logits predict it
    ids: torch.Tensor      # (n_tok,) the token
    count: torch.Tensor    # (n_rows,) target tokens per row
    n_rows: int

    @classmethod
    def of(cls, batch: Batch, n_rows: int) -> "Forcing":
        row = torch.cat([torch.full_like(batch.target_pos[r], r) for r in range(n_rows)])
        count = torch.tensor([len(batch.target_pos[r]) for r in range(n_rows)],
                             device=row.device)
        return cls(row, torch.cat(batch.target_pos[:n_rows]),
                   torch.cat(batch.target_ids[:n_rows]), count, n_rows)

    def score(self, hidden: torch.Tensor, unembed) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-row mean target NLL (n_rows,), per-token top-1 flags (n_tok,))."""
        logp = torch.log_softmax(unembed(hidden[self.row, self.pos]).float(), -1)
        tok_nll = -logp.gather(1, self.ids[:, None]).squeeze(1)
        row_nll = torch.zeros(self.n_rows, device=hidden.device).index_add(
            0, self.row, tok_nll) / self.count
        return row_nll, logp.argmax(-1) == self.ids

    def per_request(self, hidden: torch.Tensor, unembed, owner: torch.Tensor, n_requests: int,
                    n_contexts: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean target NLL per request over its rows (n_requests,), whether every target
        token of every row of the request is top-1); owner (n_rows,): each row's request."""
        row_nll, top1 = self.score(hidden, unembed)
        owner = owner[: self.n_rows].to(row_nll.device)
        nll = torch.zeros(n_requests, device=row_nll.device).index_add(0, owner, row_nll)
        row_ok = all_per_row(top1, self.row, self.n_rows)
        return nll / n_contexts, all_per_row(row_ok, owner, n_requests)


def all_per_row(flags: torch.Tensor, row: torch.Tensor, n_rows: int) -> torch.Tensor:
    """For each row, whether every flag that belongs to it is True."""
    bad = torch.zeros(n_rows, device=flags.device).index_add(0, row, (~flags).float())
    return bad == 0
