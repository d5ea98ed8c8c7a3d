"""Patch rankers: what decides which tokens go on past the prune layer, and the registry of them.

A ranker is one of two kinds (its ``kind`` attribute):
- ``"scores"``: ``scores(m, x, h) -> [B,P]``, higher = more important = kept first, where ``x``
  is the preprocessed batch and ``h`` the tokens entering block ``m.prune_layer`` (already
  computed by the pruned forward, so prefix-based rankers cost nothing extra). The predictor,
  golden search, CLS attention, token norm and random are of this kind.
- ``"merge"``: ``reduce(m, h, n_keep) -> [B,1+n_keep,D]``, tokens combined rather than chosen
  (ToMe, EViT's fused token). Such a ranker has no patch order.
Each declares ``gflops(m)``, the GFLOPs per image it spends choosing (None when that depends on
the image): equal cost means all cost, so sweeps and the app add it to the encoder's.
A custom ranker may omit ``kind`` (a ``scores`` method makes it a scorer) and ``gflops`` (0).

The registry below is written out where the built-in rankers are composed: no module registers
itself by being imported. ``reduce`` is the one step every caller (``PatchModel.encode_image``,
sweeps, token training, the app) takes to go from a ranker to the reduced token sequence.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import forward, ordering
from .baselines import AttentionFuseMerger, AttentionRanker, NormRanker, RandomRanker, ToMeMerger
from .errors import PatchRankError
from .golden import GoldenRanker

SCORES, MERGE = "scores", "merge"

#: Built-in rankers by name. ``golden`` is one-shot leave-one-out; ``golden-greedy`` the paper's
#: step-10 search (docs/paper.md).
REGISTRY: dict[str, Callable[[], object]] = {
    "random": RandomRanker,
    "attention": AttentionRanker,
    "attention+fuse": AttentionFuseMerger,
    "norm": NormRanker,
    "norm-low": lambda: NormRanker(largest=False),
    "tome": ToMeMerger,
    "golden": GoldenRanker,
    "golden-greedy": lambda: GoldenRanker(mode="greedy"),
}


def available() -> list[str]:
    return sorted(REGISTRY)


def kind(ranker) -> str:
    """``"scores"`` or ``"merge"`` (see the module docstring)."""
    k = getattr(ranker, "kind", None)
    if k in (SCORES, MERGE):
        return k
    if callable(getattr(ranker, "scores", None)):
        return SCORES
    if callable(getattr(ranker, "reduce", None)):
        return MERGE
    raise PatchRankError(f"{type(ranker).__name__} is not a ranker (it needs a scores() method)")


def resolve(ranker) -> object:
    """A ranker object from a registered name or an object of either kind."""
    if isinstance(ranker, str):
        key = ranker.strip().lower()
        if key not in REGISTRY:
            raise PatchRankError(f"unknown ranker {ranker!r}; choose one of {', '.join(available())} "
                                 "or pass a predictor")
        return REGISTRY[key]()
    if ranker is None:
        raise PatchRankError("keep_ratio needs a ranker: a predictor, 'golden', 'attention', "
                             "'norm', 'random' or 'tome'")
    kind(ranker)
    return ranker


def merges(ranker) -> bool:
    """Whether the ranker (object or name) combines tokens instead of ordering patches."""
    return kind(resolve(ranker)) == MERGE


def ranker_gflops(m, ranker) -> float | None:
    """GFLOPs per image the ranker spends choosing patches for model ``m`` (its ``gflops(m)``; 0
    for a ranker that declares none, e.g. a custom one). None: it depends on the image (a
    coarse-to-fine golden search)."""
    fn = getattr(resolve(ranker), "gflops", None)
    if not callable(fn):
        return 0.0
    g = fn(m)
    return None if g is None else float(g)


def order(ranker, m, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Patch order [B,P] of a scoring ranker, most important first."""
    if kind(ranker) != SCORES:
        raise PatchRankError(f"{getattr(ranker, 'name', ranker)!r} merges tokens and has no patch order")
    return ordering.order_from_scores(ranker.scores(m, x, h))


def reduce(ranker, m, x: torch.Tensor, h: torch.Tensor, n_keep: int,
           order_: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens [B,1+n_keep,D] going on from the prune layer: a merger's ``reduce``, else CLS + the
    ``n_keep`` patches first in ``order_`` (default: the ranker's own order of this batch; given,
    e.g. golden orders read from a ranking folder, the ranker may be None)."""
    if order_ is None and kind(ranker) == MERGE:
        return forward.reduce_tokens(h, merge=lambda t: ranker.reduce(m, t, n_keep))
    o = order(ranker, m, x, h) if order_ is None else order_.to(h.device)
    return forward.reduce_tokens(h, keep=ordering.keep_first(o, n_keep))
