"""Routing by the nearest stored key: a token goes through the memory entry whose key is
nearest to its input, if that distance is within the entry's radius (GRACE's deferral
radius; CASE routes the same way in a sketched key space)."""

from __future__ import annotations

import torch


def nearest_within(queries: torch.Tensor, keys: torch.Tensor, radius: torch.Tensor):
    """queries (M, d), keys (N, d), radius (N,) -> (hit (M,) bool, entry (M,) long, distance (M,))."""
    if len(keys) == 0:
        empty = torch.zeros(len(queries), dtype=torch.long, device=queries.device)
        return empty.bool(), empty, torch.full((len(queries),), float("inf"), device=queries.device)
    dist = torch.cdist(queries, keys.to(queries))                  # (M, N)
    best, entry = dist.min(dim=1)
    return best <= radius.to(best)[entry], entry, best
