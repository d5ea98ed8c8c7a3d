"""Patch orders, scores and kept sets: the conversions every ranker and metric shares.

Convention: higher score = more important = kept first; an order lists patch ids most important
first; a kept set is sorted by patch id (row-major on the grid), which is how the pruned forward
takes it. Ties are broken by patch id (a stable sort), so orders are deterministic.
"""
from __future__ import annotations

import torch


def order_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """Most important first; ties broken by patch id (stable sort) so orders are deterministic."""
    return torch.sort(scores.float(), dim=1, descending=True, stable=True).indices


def scores_from_order(order: torch.Tensor) -> torch.Tensor:
    """Turn an order [B,P] (most important first) into scores (P for the first, 1 for the last)."""
    b, p = order.shape
    s = torch.empty(b, p, dtype=torch.float32)
    s.scatter_(1, order, torch.arange(p, 0, -1, dtype=torch.float32).expand(b, -1).contiguous())
    return s


def keep_first(order: torch.Tensor, n_keep: int) -> torch.Tensor:
    """The first ``n_keep`` patch ids of each order, sorted by id: the kept set [B,n_keep]."""
    return order[:, :n_keep].sort(dim=1).values


def keep_from_scores(scores: torch.Tensor, n_keep: int) -> torch.Tensor:
    """The ``n_keep`` highest-scoring patch ids per image, sorted by id (row-major on the grid)."""
    return keep_first(order_from_scores(scores), n_keep)
