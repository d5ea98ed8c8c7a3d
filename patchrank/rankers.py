"""Patch rankers: anything that orders the patches of an image by importance.

A ranker implements ``scores(m, x, h) -> [B,P]`` (higher = more important = kept first), where
``x`` is the preprocessed batch and ``h`` the tokens entering block ``m.prune_layer`` (already
computed by the pruned forward, so prefix-based rankers cost nothing extra). A *merger* (ToMe-style)
implements ``reduce(m, h, k) -> [B,1+k,D]`` instead. Strings name registered rankers.
"""
from __future__ import annotations

from typing import Callable

import torch

from .errors import PatchRankError

_REGISTRY: dict[str, Callable[[], object]] = {}


def register(name: str, factory: Callable[[], object]) -> None:
    _REGISTRY[name] = factory


def available() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def _load_builtin() -> None:
    # Importing these modules registers their rankers; kept lazy to avoid import cycles.
    from . import baselines, golden  # noqa: F401


def resolve(ranker) -> object:
    """A ranker object from a name or an object with ``scores``/``reduce``/``rank``."""
    if isinstance(ranker, str):
        _load_builtin()
        key = ranker.strip().lower()
        if key not in _REGISTRY:
            raise PatchRankError(f"unknown ranker {ranker!r}; choose one of {', '.join(available())} "
                                 "or pass a predictor")
        return _REGISTRY[key]()
    if ranker is None:
        raise PatchRankError("keep_ratio needs a ranker: a predictor, 'golden', 'attention', "
                             "'norm', 'random' or 'tome'")
    if hasattr(ranker, "scores") or hasattr(ranker, "reduce"):
        return ranker
    raise PatchRankError(f"{type(ranker).__name__} is not a ranker (it needs a scores() method)")


def ranker_gflops(m, ranker) -> float | None:
    """GFLOPs per image the ranker spends choosing patches for model ``m`` (its ``gflops(m)``; 0
    for a ranker that declares none, e.g. a custom one). None: it depends on the image (a
    coarse-to-fine golden search). Sweeps and the app add it to the encoder's FLOPs: equal cost
    means all cost."""
    fn = getattr(resolve(ranker), "gflops", None)
    if not callable(fn):
        return 0.0
    g = fn(m)
    return None if g is None else float(g)


def scores_from_order(order: torch.Tensor) -> torch.Tensor:
    """Turn an order [B,P] (most important first) into scores (P for the first, 1 for the last)."""
    b, p = order.shape
    s = torch.empty(b, p, dtype=torch.float32)
    s.scatter_(1, order, torch.arange(p, 0, -1, dtype=torch.float32).expand(b, -1).contiguous())
    return s


def order_from_scores(scores: torch.Tensor) -> torch.Tensor:
    """Most important first; ties broken by patch id (stable sort) so orders are deterministic."""
    return torch.sort(scores.float(), dim=1, descending=True, stable=True).indices


def keep_from_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` highest-scoring patch ids per image, sorted by id (row-major on the grid)."""
    return order_from_scores(scores)[:, :k].sort(dim=1).values
