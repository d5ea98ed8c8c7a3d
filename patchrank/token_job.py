"""The ``tune-tokens`` command's data and records: the few-shot images it trains on, the accuracy
a token file's header carries, and how the ranker is described there.
"""
from __future__ import annotations

import sys
from typing import Sequence

from .data.datasets import open_dataset
from .errors import PatchRankError
from .token_training import TUNE, evaluate, precompute
from .tokens import LearnableTokens


def few_shot(spec: str = TUNE.data, shots: int = TUNE.shots) -> tuple[list, list[int], tuple[str, ...]]:
    """(images, labels, classnames): the first ``shots`` images per class of a labelled dataset
    spec (``patchrank.data.datasets.open_dataset``; default the bundled training scenes, of
    which only as many are rendered as it takes to fill every class)."""
    ds = open_dataset(spec)
    if ds.classnames is None or ds.label(0) is None:
        raise PatchRankError(f"{spec!r} has no labels/class names; few-shot tuning needs them")
    want = len(ds.classnames)
    count = [0] * want
    images, labels = [], []
    for i in range(len(ds)):
        c = int(ds.label(i))
        if count[c] < shots:
            count[c] += 1
            images.append(ds.image(i))
            labels.append(c)
            if min(count) >= shots:
                break
    short = [ds.classnames[c] for c in range(want) if count[c] < shots]
    if short:
        print(f"warning: fewer than {shots} images of {short} in {spec}", file=sys.stderr)
    return images, labels, tuple(ds.classnames)


# -- one call -------------------------------------------------------------------------------------
def describe_ranker(ranker, source: str | None = None) -> dict:
    if isinstance(ranker, str):
        return {"kind": "builtin", "name": ranker}
    d = {"kind": type(ranker).__name__, "name": getattr(ranker, "name", None)}
    if source:
        d["path"] = source
    meta = getattr(ranker, "meta", None)
    if isinstance(meta, dict) and meta.get("settings") is not None:
        d["settings"] = meta["settings"]
    return d


def measure_on(m, tokens: LearnableTokens, ranker, spec: str, ratios: Sequence[float], *,
               progress: bool = False) -> dict:
    """Accuracy with and without ``tokens`` on the labelled dataset ``spec``, pruned by ``ranker``
    at ``ratios``: the numbers a token file's header carries (``meta["accuracy"]``)."""
    ds = open_dataset(spec)
    cache = precompute(m, [ds.image(i) for i in range(len(ds))], ranker, ratios, progress=progress)
    return {"data": spec, **evaluate(m, cache, ds.labels, ds.classnames, tokens, progress=progress)}
