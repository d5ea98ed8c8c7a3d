"""The methods a sweep compares: how each chooses patches, and what choosing costs.

A method is a ranker or merger from the registry (``attention``, ``norm``, ``random``, ``tome``,
``attention+fuse``, ...), the predictor (the bundled one or a file), ``golden`` (orders read from
a ranking folder of ``python -m patchrank golden``, else the registered golden ranker searching
per image), each optionally ``+tokens`` (with learnable tokens). A method whose bundled weights
are missing or made for another model is skipped with a note, so a default sweep still runs;
weights the caller named raise instead, because then the mistake is the caller's to fix.

Each method carries a fingerprint of its weights and settings: the resumable cell store refuses
to mix predictions of a retrained predictor with those of the old one under the same name.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import torch

from . import rankers
from .errors import ModelMismatch, PatchRankError, WeightsUnavailable
from .golden import search_gflops
from .predictor import load_predictor
from .rankings import load_rankings
from .tokens import load_tokens

TOKENS_SUFFIX = "+tokens"
#: What a sweep compares, and at which keep ratios, unless told otherwise.
DEFAULT_METHODS = ("golden", "predictor", "predictor+tokens", "attention", "norm", "norm-low", "random",
                   "tome")
DEFAULT_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


@dataclass
class Method:
    """One column of a sweep: how patches are chosen (a ranker/merger, or stored golden orders),
    with or without learnable tokens."""
    name: str
    ranker: Any = None                      # a ranker of either kind; None with ``orders``
    orders: dict | None = None              # image id -> golden order [P] (from a ranking folder)
    tokens: Any = None                      # learnable tokens (visual_tokens(), num_visual)
    fingerprint: str = ""
    precomputed: bool = False               # orders searched beforehand: latency without the search
    search_gflops: float | None = None      # golden read from a folder: its search's cost
    note: str = ""

    @property
    def extra_tokens(self) -> int:
        return int(getattr(self.tokens, "num_visual", 0) or 0) if self.tokens is not None else 0

    @property
    def merges(self) -> bool:
        return self.ranker is not None and rankers.merges(self.ranker)

    def extra(self) -> torch.Tensor | None:
        return None if self.tokens is None else self.tokens.visual_tokens()

    def ratios(self, ratios: Sequence[float]) -> list[float]:
        """The keep ratios this method runs at: all, or those its tokens were trained for
        (``LearnableTokens.covers``); the others are left out of its rows."""
        covers = getattr(self.tokens, "covers", None)
        return [r for r in ratios if covers is None or covers(r)]


def check_ratios(m, ratios: Iterable[float]) -> list[float]:
    """Distinct keep ratios, each checked by the model (in (0, 1]), highest first."""
    out = []
    for r in ratios:
        m.keep_count(r)
        if float(r) not in out:
            out.append(float(r))
    if not out:
        raise PatchRankError("give at least one keep ratio")
    return sorted(out, reverse=True)


def ranker_gflops(m, method: Method) -> float | None:
    """GFLOPs per image of choosing the patches: golden orders read from a folder cost their
    search (``golden.search_gflops`` of the folder's settings), every ranker its own
    ``gflops(m)`` (``rankers.ranker_gflops``); None when unknown (coarse-to-fine golden)."""
    if method.search_gflops is not None or method.orders is not None or method.ranker is None:
        return method.search_gflops
    return rankers.ranker_gflops(m, method.ranker)


# -- fingerprints ---------------------------------------------------------------------------------
def digest(*parts: Any) -> str:
    """A short hash of tensors and JSON-able values: what identifies weights and settings."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, torch.Tensor):
            h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _module_fingerprint(obj: Any) -> str:
    """Hash of a module's weights (predictor, tokens): a retrained one is a different method."""
    sd = obj.state_dict() if hasattr(obj, "state_dict") else {}
    return digest(type(obj).__name__, *[sd[k] for k in sorted(sd)], sorted(sd))


def _ranker_fingerprint(r: Any) -> str:
    keys = {k: v for k, v in vars(r).items() if isinstance(v, (int, float, str, bool, dict, list, tuple))}
    return digest(type(r).__name__, getattr(r, "name", ""), keys)


# -- golden orders from a ranking folder ----------------------------------------------------------
def _check_rankings(m, meta: dict, orders: dict, ids: Sequence[str], where: str) -> None:
    if meta.get("model_id") not in (None, m.model_id):
        raise ModelMismatch(f"{where} holds golden rankings of model {meta['model_id']!r}, not "
                            f"{m.model_id!r}; rank with this model (`python -m patchrank golden`)")
    layer = (meta.get("settings") or {}).get("prune_layer")
    if layer is not None and layer != m.prune_layer:
        raise ModelMismatch(f"{where} ranks the input of block {layer}; the model prunes at block "
                            f"{m.prune_layer}")
    missing = [i for i in ids if i not in orders]
    if missing:
        raise PatchRankError(f"{where} has golden rankings for {len(ids) - len(missing)} of the "
                             f"{len(ids)} images (first missing: {missing[0]!r}); finish the golden "
                             "job (rerun it to resume), or sweep fewer images with --limit")
    bad = next((i for i in ids if orders[i].numel() != m.num_patches), None)
    if bad is not None:
        raise PatchRankError(f"{where}: the ranking of {bad!r} has {orders[bad].numel()} patches, the "
                             f"model has {m.num_patches}")


def golden_method(m, name: str, rankings, ids: Sequence[str]) -> Method:
    """A method of golden orders for ``ids`` from a ranking folder or a (meta, orders) pair;
    its cost is the search's, as the folder's settings describe it."""
    if isinstance(rankings, (str, os.PathLike)):
        meta, orders = load_rankings(rankings)
        where = str(rankings)
    else:
        meta, orders = rankings
        where = "the given rankings"
    _check_rankings(m, meta, orders, ids, where)
    s = meta.get("settings") or {}
    note = (f"golden orders read from {where} (score={s.get('score')}, step={s.get('step')}, "
            f"block={s.get('block')}, mode={s.get('mode')}, stop_at={s.get('stop_at')})")
    return Method(name, orders={i: orders[i] for i in ids}, precomputed=True, note=note,
                  fingerprint=digest("store", meta.get("settings_hash"), meta.get("settings")),
                  search_gflops=search_gflops(m, s) if s.get("mode") else None)


# -- building the methods -------------------------------------------------------------------------
class _Weights:
    """The predictor and tokens the methods share, loaded once, on first use: objects are
    checked against the model, paths (or None for the bundled ones) loaded for it."""

    def __init__(self, m, predictor, tokens):
        self.m, self.given = m, {"predictor": predictor, "tokens": tokens}
        self.loaded: dict[str, Any] = {}

    def _get(self, kind: str, load: Any) -> Any:
        """The given object (checked against the model) or the file it names (loaded), once."""
        if kind not in self.loaded:
            given = self.given[kind]
            if given is None or isinstance(given, (str, os.PathLike)):
                given = load(given, model=self.m)
            else:
                given.check_model(self.m)
            self.loaded[kind] = given.eval() if hasattr(given, "eval") else given
        return self.loaded[kind]

    def predictor(self):
        return self._get("predictor", load_predictor)

    def tokens(self):
        return self._get("tokens", load_tokens)


def _ranker_method(name: str, base: str, weights: _Weights, extra: dict | None) -> Method:
    """A method ranked by a ranker object: the predictor, a custom one, or a registered one."""
    if base == "predictor":
        ranker = weights.predictor()
        return Method(name, ranker=ranker, fingerprint=_module_fingerprint(ranker))
    ranker = rankers.resolve(extra[base] if extra and base in extra else base)
    meth = Method(name, ranker=ranker, fingerprint=_ranker_fingerprint(ranker))
    if base.startswith("golden") and not (extra and base in extra):
        meth.precomputed = True
        meth.note = ("golden orders computed per image by the registered golden ranker "
                     "(give a ranking folder to reuse cached ones)")
    return meth


def build_methods(m, names: Iterable[str], ids: Sequence[str], *, rankings=None, predictor=None,
                  tokens=None, extra: dict | None = None) -> tuple[list[Method], dict[str, str]]:
    """Method objects for ``names`` and {name: reason} for those skipped (weights missing or made
    for another model). ``predictor``/``tokens``: objects, file paths, or None for the bundled
    ones; ``extra``: {name: ranker object} for custom rankers. Only missing or mismatched
    bundled defaults are skipped; weights or rankings the caller named raise instead."""
    weights = _Weights(m, predictor, tokens)
    named = {"rankings": rankings, "predictor": predictor, "tokens": tokens}
    methods, skipped, seen = [], {}, set()
    for name in (raw.strip() for raw in names):
        if not name or name in seen:
            continue
        seen.add(name)
        base = name[:-len(TOKENS_SUFFIX)] if name.endswith(TOKENS_SUFFIX) else name
        source = None                 # which input a WeightsUnavailable / ModelMismatch came from
        try:
            if base == "golden" and rankings is not None:
                source = "rankings"
                meth = golden_method(m, name, rankings, ids)
            else:
                source = "predictor" if base == "predictor" else None
                meth = _ranker_method(name, base, weights, extra)
            if base != name:
                source = "tokens"
                meth.tokens = weights.tokens()
                meth.fingerprint = digest(meth.fingerprint, _module_fingerprint(meth.tokens))
        except (WeightsUnavailable, ModelMismatch) as e:
            if named.get(source) is not None:   # the caller named these weights: report, don't skip
                raise
            skipped[name] = str(e)
            continue
        methods.append(meth)
    return methods, skipped
