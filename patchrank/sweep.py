"""Trade-off sweeps: top-1 accuracy, analytic GFLOPs and measured latency per method per keep ratio.

The paper's evidence is accuracy at matched cost (docs/paper.md); this module measures it for any
model and labelled dataset. ``run_sweep`` makes one pass over the data in batches: per batch the
prefix (blocks < k) runs once (``m.prefix``), the unpruned embedding (``forward.run_suffix`` on all
tokens) is shared by every method's ratio-1.0 cell, each ranker scores the patches once and its
order serves every ratio, and every pruned embedding goes through the public stages of the one
pruned forward (``forward.gather_patches`` / a merger's ``reduce`` -> ``forward.run_suffix``), the
same composition as ``m.encode_image(x, keep_ratio=r, ranker=...)`` (a test checks they agree).

Methods: ``golden`` (from a ranking folder of ``python -m patchrank golden`` when ``rankings`` is
given, else the registered golden ranker, computed per image — slow), ``predictor`` (the bundled
one or a file), ``<method>+tokens`` (with learnable tokens, e.g. ``predictor+tokens``), and any
registered ranker or merger (``attention``, ``norm``, ``random``, ``tome``, ``attention+fuse``).
A method whose weights are missing or made for another model is skipped with a note.

Cost accounting (documented in the results' ``meta.notes``):
- ``encoder_gflops``: ``patchrank.flops(m, keep=K, extra_tokens=T)`` (1 MAC = 2 FLOPs).
- ``ranker_gflops``: what choosing the patches costs on top, every ranker's own ``gflops(m)``
  (``rankers.ranker_gflops``): the predictor's network, the attention ranker's recomputed prefix,
  ToMe's matching. Golden orders are *precomputed* (read from a ranking folder, or searched per
  image): their ``ranker_gflops`` is the search's analytic cost (``golden.search_gflops``; null
  when it depends on the image, for coarse-to-fine) and their latency is the pruned forward with
  given patch ids. At ratio 1.0 nothing is pruned, no ranker runs: all methods share the full
  model's cell (with tokens, the full model plus tokens).
- ``gflops`` = encoder + ranker (encoder alone when the ranker's cost is unknown).

Latency: image-encoder wall time of the public call a user makes
(``m.encode_image(x, keep_ratio=r, ranker=..., tokens=...)``, ranking included) at batch 1 and
batch N, timed with ``patchrank.timing.interleaved`` (all methods x ratios in one run, round after
round, median and min), speedup = full model median / method median at the same batch.

Resuming: finished (batch, method) predictions go to ``<out>.cells.jsonl`` as they complete
(one fsynced line each, with the settings in a header line); a rerun with the same settings
skips them, one with other settings is refused, naming what differs. Accuracy cells are exact
counts; the 95% interval is Wilson's score interval.

Results JSON (``FORMAT``; ``figures.load_results`` reads it, the app reads ``assets/results``)::

    {"format": "patchrank-sweep/1",
     "meta": {model, model_id, pretrained, data, n_images, num_patches, prune_layer, classnames,
              templates, methods, ratios, batch, latency_batches, repeats, device, threads, torch,
              settings_hash, created, full: {accuracy, gflops, latency_ms_b1, latency_ms_bN},
              skipped: {method: why}, notes: {...}, runtime: {...}, command},
     "rows": [{method, ratio, kept, extra_tokens, n, correct, accuracy, ci_low, ci_high,
               gflops, encoder_gflops, ranker_gflops, gflops_ratio, latency_ms, latency_ms_b1,
               latency_ms_b1_min, latency_ms_bN, latency_ms_bN_min, ms_per_image_bN, batch_N,
               speedup_b1, speedup_bN, precomputed, model, hits}, ...]}

``hits``: which images the row got right (``pack_hits``); ``accuracy``/``ci_low``/``ci_high`` are
fractions in [0, 1]; ``latency_ms_b1``/``latency_ms_bN``
are median milliseconds per call at batch 1 / batch ``batch_N`` (``latency_ms`` = ``latency_ms_b1``);
fields that were not measured are null. A CSV with the same rows is written beside the JSON.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from . import distributed, forward, rankers
from .progress import bar as progress_bar
from .files import atomic_path, write_json
from .jsonl import AppendLog, read_records
from .errors import ModelMismatch, PatchRankError, WeightsUnavailable

FORMAT = "patchrank-sweep/1"
CELLS_FORMAT = "patchrank-sweep-cells/1"
DEFAULT_METHODS = ("golden", "predictor", "predictor+tokens", "attention", "norm", "norm-low", "random",
                   "tome")
DEFAULT_RATIOS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)
#: Two-sided 95 % normal quantile, Phi^-1(0.975).
Z95 = 1.959963984540054
ROW_FIELDS = ("method", "ratio", "kept", "extra_tokens", "n", "correct", "accuracy", "ci_low",
              "ci_high", "gflops", "encoder_gflops", "ranker_gflops", "gflops_ratio", "latency_ms",
              "latency_ms_b1", "latency_ms_b1_min", "latency_ms_bN", "latency_ms_bN_min",
              "ms_per_image_bN", "batch_N", "speedup_b1", "speedup_bN", "precomputed", "model")
TOKENS_SUFFIX = "+tokens"


# -- statistics -----------------------------------------------------------------------------------
def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927, JASA 22:209-212):
    (p + z^2/2n -+ z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), with p = correct / n. Unlike the
    normal interval it stays inside [0, 1] and is sensible at p = 0 or 1 and small n."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo, hi = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if correct == 0 else lo, 1.0 if correct == n else hi)   # exact at the extremes


# -- methods --------------------------------------------------------------------------------------
@dataclass
class Method:
    """One column of a sweep: how patches are chosen (a ranker/merger, or stored golden orders),
    with or without learnable tokens."""
    name: str
    ranker: Any = None                      # scores()/reduce() object; None with ``orders``
    orders: dict | None = None              # image id -> golden order [P] (from a ranking folder)
    tokens: Any = None                      # learnable tokens (visual_tokens(), num_visual)
    fingerprint: str = ""
    precomputed: bool = False               # golden: orders given, latency without the search
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


def _digest(*parts: Any) -> str:
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
    return _digest(type(obj).__name__, *[sd[k] for k in sorted(sd)], sorted(sd))


def _ranker_fingerprint(r: Any) -> str:
    keys = {k: v for k, v in vars(r).items() if isinstance(v, (int, float, str, bool, dict, list, tuple))}
    return _digest(type(r).__name__, getattr(r, "name", ""), keys)


def _load_rankings(m, rankings, ids: Sequence[str]) -> tuple[dict, str, str, float | None]:
    """(orders for ``ids``, fingerprint, note, search GFLOPs per image) from a ranking folder or
    a (meta, orders) pair."""
    if isinstance(rankings, (str, os.PathLike)):
        from .store import load_rankings
        meta, orders = load_rankings(rankings)
        where = str(rankings)
    else:
        meta, orders = rankings
        where = "the given rankings"
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
    s = meta.get("settings") or {}
    note = (f"golden orders read from {where} (score={s.get('score')}, step={s.get('step')}, "
            f"block={s.get('block')}, mode={s.get('mode')}, stop_at={s.get('stop_at')})")
    fingerprint = _digest("store", meta.get("settings_hash"), meta.get("settings"))
    from .golden import search_gflops
    cost = search_gflops(m, s) if s.get("mode") else None
    return {i: orders[i] for i in ids}, fingerprint, note, cost


def build_methods(m, names: Iterable[str], ids: Sequence[str], *, rankings=None, predictor=None,
                  tokens=None, extra: dict | None = None) -> tuple[list[Method], dict[str, str]]:
    """Method objects for ``names`` and {name: reason} for those skipped (weights missing or made
    for another model). ``predictor``/``tokens``: objects, file paths, or None for the bundled
    ones; ``extra``: {name: ranker object} for custom rankers. Only missing or mismatched
    bundled defaults are skipped; weights or rankings the caller named raise instead."""
    methods, skipped = [], {}
    cache: dict[str, Any] = {}

    def get_predictor():
        if "predictor" not in cache:
            from .predictor import load_predictor
            p = predictor
            if p is None or isinstance(p, (str, os.PathLike)):
                p = load_predictor(p, model=m)
            else:
                p.check_model(m)
            cache["predictor"] = p.eval()
        return cache["predictor"]

    def get_tokens():
        if "tokens" not in cache:
            t = tokens
            if t is None or isinstance(t, (str, os.PathLike)):
                try:
                    from .tokens import load_tokens
                except ImportError as e:
                    raise WeightsUnavailable(f"learnable tokens are not available ({e})") from None
                t = load_tokens(t, model=m)
            else:
                t.check_model(m)
            cache["tokens"] = t.eval() if hasattr(t, "eval") else t
        return cache["tokens"]

    seen = set()
    for raw in names:
        name = raw.strip()
        if not name or name in seen:
            continue
        seen.add(name)
        base = name[:-len(TOKENS_SUFFIX)] if name.endswith(TOKENS_SUFFIX) else name
        source = None                 # which input a WeightsUnavailable / ModelMismatch came from
        try:
            meth = Method(name)
            if base == "golden" and rankings is not None:
                source = "rankings"
                meth.orders, meth.fingerprint, meth.note, meth.search_gflops = _load_rankings(
                    m, rankings, ids)
                meth.precomputed = True
            elif base == "predictor":
                source = "predictor"
                meth.ranker = get_predictor()
                meth.fingerprint = _module_fingerprint(meth.ranker)
            elif extra and base in extra:
                meth.ranker = rankers.resolve(extra[base])
                meth.fingerprint = _ranker_fingerprint(meth.ranker)
            else:
                meth.ranker = rankers.resolve(base)
                meth.fingerprint = _ranker_fingerprint(meth.ranker)
                if base.startswith("golden"):
                    meth.precomputed = True
                    meth.note = ("golden orders computed per image by the registered golden ranker "
                                 "(give a ranking folder to reuse cached ones)")
            if base != name:
                source = "tokens"
                meth.tokens = get_tokens()
                meth.fingerprint = _digest(meth.fingerprint, _module_fingerprint(meth.tokens))
        except (WeightsUnavailable, ModelMismatch) as e:
            named = {"rankings": rankings, "predictor": predictor, "tokens": tokens}.get(source)
            if named is not None:   # the caller named these weights: a mistake to report, not to skip
                raise
            skipped[name] = str(e)
            continue
        methods.append(meth)
    return methods, skipped


# -- cost -----------------------------------------------------------------------------------------
def ranker_gflops(m, method: Method) -> float | None:
    """GFLOPs per image of choosing the patches: golden orders read from a folder cost their
    search (``golden.search_gflops`` of the folder's settings), every ranker its own
    ``gflops(m)`` (``rankers.ranker_gflops``); None when unknown (coarse-to-fine golden)."""
    if method.search_gflops is not None or method.orders is not None or method.ranker is None:
        return method.search_gflops
    return rankers.ranker_gflops(m, method.ranker)


# -- embeddings -----------------------------------------------------------------------------------
def method_embeddings(m, method: Method, x: torch.Tensor, h: torch.Tensor, ids: Sequence[str],
                      ratios: Sequence[float], full: torch.Tensor | None = None) -> dict[float, torch.Tensor]:
    """Embeddings [B,E] per ratio for one method, from the prefix ``h`` computed once.

    The same stages as ``PatchModel.encode_image``: a ranker's scores -> the top-K patches sorted
    by id -> ``forward.gather_patches``, or a merger's ``reduce``, then ``forward.run_suffix`` with
    the method's learnable tokens. The order is computed once and serves every ratio. Ratio 1.0
    without tokens is the unpruned embedding ``full`` when given."""
    k = m.prune_layer
    extra = method.extra()
    order = None
    out = {}
    for r in ratios:
        n_keep = m.keep_count(r)
        if n_keep == m.num_patches:
            if extra is None and full is not None:
                out[r] = full
            else:
                out[r] = forward.run_suffix(m.visual, h, k, extra)
            continue
        if order is None and not method.merges:
            order = (torch.stack([method.orders[i] for i in ids]) if method.orders is not None
                     else rankers.order(method.ranker, m, x, h))
        reduced = rankers.reduce(method.ranker, m, x, h, n_keep, order)
        out[r] = forward.run_suffix(m.visual, reduced, k, extra)
    return out


# -- resumable cell store -------------------------------------------------------------------------
class CellStore:
    """Append-only JSONL of finished (batch, method) predictions; first line = settings header.

    Each record is written whole, flushed and fsynced; a partial last line (a killed writer) is
    dropped on reopen. Opening with other settings raises, naming what differs. Under torchrun
    each rank appends to its own shard (``<cells>.rank<R>.jsonl``) and reads every shard, so a
    run resumes whatever the number of processes before and after."""

    def __init__(self, path: str | os.PathLike, settings: dict, fresh: bool = False,
                 shard: int | None = None):
        self.path = Path(path)
        self.settings = settings
        self.hash = _digest(settings)
        self.fingerprints: dict[str, str] = {}
        self.done: dict[tuple[int, str], dict] = {}
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        if fresh:
            distributed.on_rank0(lambda: [f.unlink() for f in self.files()])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.reload()
        own = self.path if shard is None else self.path.with_name(
            self.path.name.replace(".jsonl", f".rank{shard}.jsonl"))
        new = not own.exists() or own.stat().st_size == 0
        self._log = AppendLog(own)
        if new:
            self._write({"type": "header", "format": CELLS_FORMAT, "settings_hash": self.hash,
                         "settings": settings})

    def files(self) -> list[Path]:
        """The main cell file and every rank's shard that exist."""
        shards = sorted(self.path.parent.glob(self.path.name.replace(".jsonl", ".rank*.jsonl")))
        return [f for f in [self.path, *shards] if f.exists()]

    def reload(self) -> None:
        """Read every cell file (after the other ranks finished: their cells too)."""
        self.fingerprints, self.done, self.seconds, self.cpu = {}, {}, {}, {}
        for f in self.files():
            if f.stat().st_size:
                self._read(f)

    def _read(self, path: Path) -> None:
        for no, rec in read_records(path, "delete the file (or rerun with --fresh) to start over"):
            kind = rec.get("type")
            if no == 1 and kind != "header":
                raise PatchRankError(f"{path} is not a sweep cell file; use another --out")
            if kind == "header":
                if rec.get("settings_hash") != self.hash:
                    old = rec.get("settings", {})
                    diff = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(self.settings.get(k))}"
                                     for k in sorted(set(old) | set(self.settings))
                                     if old.get(k) != self.settings.get(k))
                    raise PatchRankError(f"{path} holds a sweep with other settings ({diff}); "
                                         "use another --out, or --fresh to discard it")
            elif kind == "method":
                self.fingerprints[rec["method"]] = rec["fingerprint"]
            elif kind == "cell":
                self.done[(rec["start"], rec["method"])] = rec["preds"]
                self.seconds[rec["method"]] = self.seconds.get(rec["method"], 0.0) + rec.get("seconds", 0.0)
                self.cpu[rec["method"]] = self.cpu.get(rec["method"], 0.0) + rec.get("cpu", 0.0)

    def _write(self, rec: dict) -> None:
        self._log.write(rec)

    def check_method(self, name: str, fingerprint: str) -> None:
        old = self.fingerprints.get(name)
        if old is None:
            self.fingerprints[name] = fingerprint
            self._write({"type": "method", "method": name, "fingerprint": fingerprint})
        elif old != fingerprint:
            raise PatchRankError(f"{self.path}: method {name!r} was computed with other weights or "
                                 f"settings (fingerprint {old} -> {fingerprint}); use another --out, "
                                 "or --fresh to discard the old cells")

    def put(self, start: int, method: str, preds: dict, seconds: float, cpu: float = 0.0) -> None:
        self.done[(start, method)] = preds
        self.seconds[method] = self.seconds.get(method, 0.0) + seconds
        self.cpu[method] = self.cpu.get(method, 0.0) + cpu
        self._write({"type": "cell", "start": start, "method": method, "preds": preds,
                     "seconds": round(seconds, 4), "cpu": round(cpu, 4)})

    def close(self) -> None:
        self._log.close()


class _MemoryStore(CellStore):
    """Same interface, nothing on disk (``out=None``)."""

    def __init__(self, settings: dict):     # noqa: D107 - no file
        self.settings, self.hash = settings, _digest(settings)
        self.fingerprints, self.done, self.seconds, self.cpu = {}, {}, {}, {}

    def _write(self, rec: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def cells_path(out: str | os.PathLike) -> Path:
    """Where a sweep writing ``out`` keeps its finished cells: ``<out minus .json>.cells.jsonl``."""
    out = Path(out)
    return out.with_name((out.name[:-5] if out.name.endswith(".json") else out.name) + ".cells.jsonl")


# -- latency --------------------------------------------------------------------------------------
def _sync(m) -> Callable[[], None]:
    if m.device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def latency_calls(m, methods: Sequence[Method], ratios: Sequence[float],
                  x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables to time on batch ``x``: key "full", and "<method>@<ratio>" for
    every method and ratio that differ from the full model (the public ``m.encode_image`` call a
    user makes; precomputed golden orders run the pruned forward with given patch ids, the search
    being offline). Ratio 1.0 without tokens is the "full" call."""
    sync = _sync(m)

    def timed(fn):
        def call():
            fn()
            sync()
        return call

    calls = {"full": timed(lambda: m.encode_image(x))}
    for meth in methods:
        t = meth.tokens
        for r in meth.ratios(ratios):
            n_keep = m.keep_count(r)
            if n_keep == m.num_patches:
                if t is not None:
                    calls[f"{meth.name}@{r:g}"] = timed(lambda t=t: m.encode_image(x, tokens=t))
                continue
            if meth.precomputed:
                keep = torch.arange(n_keep, device=m.device).expand(x.shape[0], -1)
                fn = (lambda keep=keep, t=t: m.encode_image(x, keep=keep, tokens=t))
            else:
                fn = (lambda r=r, rk=meth.ranker, t=t: m.encode_image(x, keep_ratio=r, ranker=rk, tokens=t))
            calls[f"{meth.name}@{r:g}"] = timed(fn)
    return calls


def measure_latency(m, methods: Sequence[Method], ratios: Sequence[float], images: torch.Tensor,
                    batches: Sequence[int] = (1, 32), repeats: int = 5, warmup: int = 1,
                    progress: bool = False) -> dict[int, dict[str, dict]]:
    """{batch: {call key: {"median_ms", "min_ms", "times_ms"}}} for every call of
    ``latency_calls`` at each batch size, all interleaved in one ``timing.interleaved`` run per
    batch size. ``images``: preprocessed [N,3,H,W]; repeated to fill the largest batch."""
    from .timing import interleaved
    out: dict[int, dict[str, dict]] = {}
    if not batches:
        return out
    images = images.to(device=m.device, dtype=m.dtype)
    bar = progress_bar(sum(len(latency_calls(m, methods, ratios, images[:1])) for _ in batches)
                       * (repeats + warmup), "latency", enabled=bool(progress), leave=False)
    with torch.inference_mode():
        for b in batches:
            reps = math.ceil(b / images.shape[0])
            xb = images.repeat(reps, 1, 1, 1)[:b] if reps > 1 else images[:b]
            calls = latency_calls(m, methods, ratios, xb)
            counted = {k: _counted(fn, bar) for k, fn in calls.items()}
            out[int(b)] = interleaved(counted, repeats=repeats, warmup=warmup)
    bar.close()
    return out


def _counted(fn, bar):
    def call():
        fn()
        bar.update(1)
    return call


# -- the sweep ------------------------------------------------------------------------------------
def _image(ds, i: int):
    return ds.image(i) if hasattr(ds, "image") else ds.images[i]


def _check_ratios(m, ratios: Iterable[float]) -> list[float]:
    out = []
    for r in ratios:
        m.keep_count(r)            # validates (0, 1]
        if float(r) not in out:
            out.append(float(r))
    if not out:
        raise PatchRankError("give at least one keep ratio")
    return sorted(out, reverse=True)


def _as_dataset(dataset, limit: int | None):
    if isinstance(dataset, (str, os.PathLike)):
        from .data import coop  # noqa: F401  (registers the CoOp split-file layout)
        from .data.datasets import open_dataset
        return open_dataset(str(dataset), limit=limit)
    if limit is not None and len(dataset.ids) > limit:
        dataset.ids = list(dataset.ids)[:limit]
    return dataset


def _labels(ds) -> np.ndarray:
    labels = ds.labels
    if labels is None:
        raise PatchRankError(f"{getattr(ds, 'spec', 'the dataset')} has no labels (a flat folder of "
                             "images?); sweeps need class subfolders or a CoOp split file")
    labels = np.asarray(labels, np.int64)[:len(ds.ids)]
    if not ds.classnames:
        raise PatchRankError("the dataset has no class names")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(ds.classnames)):
        raise PatchRankError(f"labels must lie in [0, {len(ds.classnames) - 1}] (one per class name)")
    return labels


def run_sweep(m, dataset, methods: Sequence[str] = DEFAULT_METHODS,
              ratios: Sequence[float] = DEFAULT_RATIOS, out: str | os.PathLike | None = None, *,
              batch: int = 64, latency_batches: Sequence[int] = (1, 32), repeats: int = 5,
              warmup: int = 1, rankings=None, predictor=None, tokens=None,
              templates: Sequence[str] | str | None = None, limit: int | None = None,
              fresh: bool = False, progress: bool = True, extra_rankers: dict | None = None,
              command: str | None = None) -> dict:
    """Accuracy / GFLOPs / latency per method per keep ratio on a labelled dataset (module
    docstring). ``dataset``: a Dataset (``data.datasets``), the bundled ``EvalSplit``, or a spec
    string; ``rankings``: a golden ranking folder (or (meta, orders)) for ``golden``;
    ``templates``: prompt template(s), default the dataset's own (CoOp) else the model's;
    ``latency_batches=()`` skips timing; ``out``: results JSON path (+ CSV, + resumable cells
    file), or None to keep everything in memory. Returns the results dict. Under torchrun the
    batches are split round-robin across ranks; rank 0 then times, assembles and returns the
    results, the others return None."""
    t_start = time.perf_counter()
    if isinstance(batch, bool) or int(batch) < 1:
        raise PatchRankError(f"batch must be a positive integer, got {batch!r}")
    ds = _as_dataset(dataset, limit)
    ids = list(ds.ids)
    if not ids:
        raise PatchRankError("the dataset holds no images")
    labels = _labels(ds)
    ratios = _check_ratios(m, ratios)
    if templates is None:
        templates = getattr(ds, "templates", None)
    clf = m.zero_shot(list(ds.classnames), templates)
    meths, skipped = build_methods(m, list(methods), ids, rankings=rankings, predictor=predictor,
                                   tokens=tokens, extra=extra_rankers)
    for name, why in skipped.items():
        print(f"note: skipping {name}: {why}", file=sys.stderr)
    settings = {"format": FORMAT, "model_id": m.model_id, "prune_layer": m.prune_layer,
                "dtype": str(m.dtype).replace("torch.", ""),
                "data": str(getattr(ds, "spec", type(ds).__name__)), "n": len(ids), "ids": _digest(ids),
                "labels": _digest(labels.tolist()), "classnames": list(clf.classnames),
                "templates": list(clf.templates), "batch": int(batch),
                "ratios": ratios, "keep": [m.keep_count(r) for r in ratios]}
    rank, world = distributed.rank_world()
    if world > 1 and out is None:
        raise PatchRankError("under torchrun a sweep needs an output file (--out): the processes "
                             "share their results through its cell files")
    store = (CellStore(cells_path(out), settings, fresh=fresh, shard=rank if world > 1 else None)
             if out is not None else _MemoryStore(settings))
    try:
        for meth in meths:
            store.check_method(meth.name, meth.fingerprint)
        clfs = {meth.name: (meth.tokens.zero_shot(m, list(ds.classnames))
                            if meth.tokens is not None and getattr(meth.tokens, "n_ctx", 0) else clf)
                for meth in meths}
        starts = list(range(0, len(ids), int(batch)))[rank::world]
        todo = [(s, meth) for s in starts for meth in [None, *meths]
                if (s, "full" if meth is None else meth.name) not in store.done]
        bar = progress_bar(len(todo), "sweep" + (f" x{world} procs" if world > 1 else ""),
                           enabled=bool(progress) and rank == 0, leave=False)
        with torch.inference_mode():
            for s in starts:
                need = [meth for meth in meths if (s, meth.name) not in store.done]
                if not need and (s, "full") in store.done:
                    continue
                t0, c0 = time.perf_counter(), time.process_time()
                bid = ids[s:s + batch]
                x = torch.stack([m.preprocess(_image(ds, i)) for i in range(s, s + len(bid))])
                h = m.prefix(x)
                full = forward.run_suffix(m.visual, h, m.prune_layer)
                if (s, "full") not in store.done:
                    store.put(s, "full", {"1": clf.predict(full).tolist()}, time.perf_counter() - t0,
                              time.process_time() - c0)
                    bar.update(1)
                for meth in need:
                    t1, c1 = time.perf_counter(), time.process_time()
                    bar.set_postfix_str(meth.name)
                    embs = method_embeddings(m, meth, x, h, bid, meth.ratios(ratios), full)
                    preds = {f"{r:g}": clfs[meth.name].predict(e).tolist() for r, e in embs.items()}
                    store.put(s, meth.name, preds, time.perf_counter() - t1, time.process_time() - c1)
                    bar.update(1)
        bar.close()
        if world > 1:
            distributed.barrier()          # every rank's cells are on disk
            if rank != 0:
                return None                # rank 0 times, assembles and writes the results
            store.reload()
        t_acc = time.perf_counter() - t_start

        timings: dict[int, dict[str, dict]] = {}
        c_lat = time.process_time()
        if latency_batches:
            n_lat = min(len(ids), max(latency_batches))
            xs = torch.stack([m.preprocess(_image(ds, i)) for i in range(n_lat)])
            timings = measure_latency(m, meths, ratios, xs, latency_batches, repeats, warmup, progress)
        t_lat = time.perf_counter() - t_start - t_acc
        cpu_lat = time.process_time() - c_lat
        results = _assemble(m, ds, ids, labels, meths, skipped, ratios, store, timings, clf,
                            latency_batches, repeats, int(batch))
        results["meta"]["runtime"] = _runtime(store, meths, len(ids), t_acc, t_lat, cpu_lat,
                                              time.perf_counter() - t_start)
        results["meta"]["command"] = command
    finally:
        store.close()
    if out is not None:
        write_results(results, out)
    return results


def pack_hits(correct: np.ndarray) -> str:
    """Per-image correctness as hex (image i = bit i, most significant first; ``np.packbits``):
    the row's ``hits``. A few hundred characters let anyone recompute any subset's accuracy or
    a paired test from the results file, and the tests check shipped rows image by image."""
    return np.packbits(np.asarray(correct, bool)).tobytes().hex()


def unpack_hits(hits: str, n: int) -> np.ndarray:
    """The inverse of ``pack_hits``: a bool array [n]."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(hits), np.uint8))[:n].astype(bool)


def _gather(store: CellStore, method: str, key: str, starts: list[int]) -> np.ndarray:
    return np.concatenate([np.asarray(store.done[(s, method)][key], np.int64) for s in starts])


def _assemble(m, ds, ids, labels, meths, skipped, ratios, store, timings, clf, latency_batches,
              repeats, batch) -> dict:
    starts = list(range(0, len(ids), batch))
    n = len(ids)
    full_pred = _gather(store, "full", "1", starts)
    full_correct = int((full_pred == labels).sum())
    full_gf = float(m.flops())
    b1 = 1 if 1 in latency_batches else None
    bn = max(latency_batches) if latency_batches and max(latency_batches) > 1 else None

    def lat(b, key):
        t = timings.get(b, {}).get(key) if b is not None else None
        return (t["median_ms"], t["min_ms"]) if t else (None, None)

    rows = []
    for meth in meths:
        for r in meth.ratios(ratios):
            k = m.keep_count(r)
            pruned = k < m.num_patches
            own = pruned or meth.tokens is not None         # else the shared unpruned cell
            pred = _gather(store, meth.name, f"{r:g}", starts) if own else full_pred
            correct = int((pred == labels).sum())
            hits = pack_hits(pred == labels)
            lo, hi = wilson_interval(correct, n)
            enc = float(m.flops(keep=k, extra_tokens=meth.extra_tokens))
            over = ranker_gflops(m, meth) if pruned else 0.0
            key = f"{meth.name}@{r:g}" if own else "full"
            m1, m1min = lat(b1, key)
            mn, mnmin = lat(bn, key)
            f1, fn = lat(b1, "full")[0], lat(bn, "full")[0]
            rows.append({
                "method": meth.name, "ratio": r, "kept": k, "extra_tokens": meth.extra_tokens,
                "n": n, "correct": correct, "accuracy": correct / n, "ci_low": lo, "ci_high": hi,
                "gflops": enc + (over or 0.0), "encoder_gflops": enc, "ranker_gflops": over,
                "gflops_ratio": (enc + (over or 0.0)) / full_gf, "latency_ms": m1,
                "latency_ms_b1": m1, "latency_ms_b1_min": m1min,
                "latency_ms_bN": mn, "latency_ms_bN_min": mnmin,
                "ms_per_image_bN": None if mn is None else mn / bn, "batch_N": bn,
                "speedup_b1": None if m1 is None else f1 / m1,
                "speedup_bN": None if mn is None else fn / mn, "precomputed": meth.precomputed,
                "model": m.name, "hits": hits})
    lo, hi = wilson_interval(full_correct, n)
    meta = {
        "model": m.name, "pretrained": m.pretrained, "model_id": m.model_id,
        "data": str(getattr(ds, "spec", type(ds).__name__)), "n_images": n, "num_patches": m.num_patches,
        "grid": list(m.grid), "prune_layer": m.prune_layer, "num_layers": m.num_layers,
        "classnames": list(clf.classnames), "templates": list(clf.templates),
        "methods": [x.name for x in meths], "ratios": list(ratios), "batch": batch,
        "latency_batches": list(latency_batches), "repeats": repeats,
        "device": str(m.device), "dtype": str(m.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "settings_hash": store.hash,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "full": {"accuracy": full_correct / n, "correct": full_correct, "ci_low": lo, "ci_high": hi,
                 "hits": pack_hits(full_pred == labels),
                 "gflops": full_gf, "latency_ms_b1": lat(b1, "full")[0],
                 "latency_ms_bN": lat(bn, "full")[0], "batch_N": bn},
        "skipped": skipped,
        "notes": {
            "flops": "analytic image-encoder GFLOPs per image, 1 MAC = 2 FLOPs (patchrank.flops); "
                     "gflops = encoder_gflops + ranker_gflops (sweep.ranker_gflops); ratio 1.0 "
                     "prunes nothing and runs no ranker",
            "latency": "median/min ms per encode_image call (ranking included) at batch 1 and "
                       "batch_N, interleaved repeats (patchrank.timing); speedup vs the full model "
                       "at the same batch",
            "accuracy": "zero-shot top-1 as a fraction; ci_low/ci_high: Wilson 95% interval",
            **{f"method:{x.name}": x.note for x in meths if x.note},
            **({"precomputed": "golden orders are searched beforehand: their gflops include "
                               "the search (golden.search_gflops), their latency is the pruned "
                               "forward with given patch ids"}
               if any(x.precomputed for x in meths) else {}),
        },
    }
    return {"format": FORMAT, "meta": meta, "rows": rows}


def _runtime(store, meths, n, t_acc, t_lat, cpu_lat, total) -> dict:
    names = ["full"] + [x.name for x in meths]
    label = {"full": "shared"}
    wall = {label.get(k, k): store.seconds.get(k, 0.0) for k in names}
    cpu = {label.get(k, k): store.cpu.get(k, 0.0) for k in names}
    return {"accuracy_s_this_run": round(t_acc, 2), "latency_s": round(t_lat, 2),
            "latency_cpu_s": round(cpu_lat, 2), "total_s_this_run": round(total, 2),
            "seconds": {k: round(v, 3) for k, v in wall.items()},
            "ms_per_image": {k: round(1e3 * v / max(n, 1), 3) for k, v in wall.items()},
            "cpu_ms_per_image": {k: round(1e3 * v / max(n, 1), 3) for k, v in cpu.items()},
            "note": "wall and process-CPU time summed over all runs of this sweep (resumed runs "
                    "included); 'shared' = decode + preprocess + prefix + unpruned suffix, once per "
                    "image; each method = its ranking + pruned suffixes at every ratio. With one "
                    "torch thread, CPU time approximates wall time on an idle core"}


# -- files ----------------------------------------------------------------------------------------
def write_results(results: dict, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write the results JSON at ``out`` and the rows as CSV beside it (same stem, ``.csv``)."""
    out = write_json(out, results)
    csv_path = out.with_suffix(".csv")
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROW_FIELDS), extrasaction="ignore")
        w.writeheader()
        for row in results["rows"]:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in ROW_FIELDS})
    return out, csv_path


# -- reproduce: the paper's README table ----------------------------------------------------------
#: Row labels of the paper-shaped table.
METHOD_TITLES = {"attention+fuse": "EViT (CLS attention + fuse)", "tome": "ToMe",
                 "attention": "CLS attention", "norm": "token norm (high first)",
                 "norm-low": "token norm (low first)", "random": "random",
                 "golden": "golden (one-shot leave-one-out)", "predictor": "Ours (predictor)",
                 "predictor+tokens": "Ours (predictor + tokens)"}
REPRODUCE_METHODS = ("attention+fuse", "tome", "attention", "random", "predictor", "predictor+tokens")


def reproduce(m, root: str | os.PathLike, datasets: Sequence[str], *,
              methods: Sequence[str] = REPRODUCE_METHODS, ratios: Sequence[float] = (0.6,),
              split: str = "test", out_dir: str | os.PathLike | None = None,
              rankings_root: str | os.PathLike | None = None, batch: int = 64,
              limit: int | None = None, latency_batches: Sequence[int] = (), repeats: int = 5,
              predictor=None, tokens=None, progress: bool = True) -> dict:
    """Sweep each CoOp dataset under ``root`` at the keep ``ratios`` (plus 1.0 for the unpruned
    baseline) and return {"tables": {ratio: markdown}, "results": {dataset key: results}} (the
    paper's table is the one at 0.6). Per dataset its CoOp prompt is used; ``out_dir`` keeps
    each sweep resumable as ``<out_dir>/<key>.json``; ``rankings_root/<key>`` (or the CoOp
    folder name), if present, supplies golden orders. Under torchrun (``out_dir`` needed) each
    dataset's batches are split across ranks; rank 0 returns the tables, the others None."""
    from .data.coop import open_coop
    results = {}
    for name in datasets:
        ds = open_coop(root, name, split)
        rk = None
        if rankings_root is not None:
            for cand in (Path(rankings_root) / ds.info.key, Path(rankings_root) / ds.info.folder):
                if (cand / "meta.json").is_file():
                    rk = cand
                    break
        out = None if out_dir is None else Path(out_dir) / f"{ds.info.key}.json"
        if progress:
            print(f"{ds.info.title}: {len(ds.ids) if limit is None else min(limit, len(ds.ids))} "
                  f"{split} images, prompt {ds.templates[0]!r}", file=sys.stderr)
        results[ds.info.key] = run_sweep(
            m, ds, methods, sorted({1.0, *map(float, ratios)}, reverse=True), out, batch=batch,
            latency_batches=latency_batches, repeats=repeats, rankings=rk, predictor=predictor,
            tokens=tokens, limit=limit, progress=progress)
    if distributed.rank_world()[0] != 0:
        return None                        # rank 0 holds every dataset's results
    return {"tables": {f"{r:g}": reproduce_table(results, float(r)) for r in ratios}, "results": results}


def reproduce_table(results: dict[str, dict], ratio: float) -> str:
    """Markdown table shaped like the paper's README: one row per method at keep ``ratio`` plus
    the unpruned model, one column per dataset (top-1 %), the mean, and the mean GFLOPs."""
    from .data.coop import DATASETS
    keys = list(results)
    titles = [DATASETS[k].title if k in DATASETS else k for k in keys]
    lines = ["| Method | " + " | ".join(titles) + " | Avg. | Avg. GFLOPs |",
             "|---|" + "---|" * (len(keys) + 2)]

    def fmt_row(label, accs, gfs):
        cells = ["—" if a is None else f"{100 * a:.1f}" for a in accs]
        got = [a for a in accs if a is not None]
        avg = f"{100 * sum(got) / len(got):.1f}" if got and len(got) == len(accs) else "—"
        gf = f"{sum(gfs) / len(gfs):.2f}" if gfs else "—"
        return f"| {label} | " + " | ".join(cells) + f" | {avg} | {gf} |"

    fulls = [results[k]["meta"]["full"] for k in keys]
    lines.append(fmt_row("CLIP (unpruned)", [f["accuracy"] for f in fulls], [f["gflops"] for f in fulls]))
    methods: list[str] = []
    for k in keys:
        methods += [x for x in results[k]["meta"]["methods"] + list(results[k]["meta"]["skipped"])
                    if x not in methods]
    notes = []
    for meth in methods:
        accs, gfs = [], []
        for k in keys:
            row = next((r for r in results[k]["rows"]
                        if r["method"] == meth and abs(r["ratio"] - ratio) < 1e-9), None)
            accs.append(None if row is None else row["accuracy"])
            if row is not None:
                gfs.append(row["gflops"])
        lines.append(fmt_row(METHOD_TITLES.get(meth, meth), accs, gfs))
        why = next((results[k]["meta"]["skipped"][meth] for k in keys
                    if meth in results[k]["meta"]["skipped"]), None)
        if why:
            notes.append(f"- {METHOD_TITLES.get(meth, meth)}: skipped ({why})")
    any_meta = results[keys[0]]["meta"] if keys else {}
    model = any_meta.get("model", "?") + (f"/{any_meta['pretrained']}" if any_meta.get("pretrained") else "")
    head = (f"Zero-shot top-1 (%) at keep ratio {ratio:g} ({model}, pruning at "
            f"block {any_meta.get('prune_layer', '?')}; GFLOPs: image encoder, 1 MAC = 2 FLOPs, "
            "ranker included).")
    return "\n".join([head, "", *lines, *([""] + notes if notes else [])])


# -- bench: latency only -------------------------------------------------------------------------
class _FixedIds:
    """Bench pseudo-method: the pruned forward with given patch ids (no ranking cost)."""
    name = "fixed-ids"


def bench(m, methods: Sequence[str] = ("fixed-ids", "predictor"),
          ratios: Sequence[float] = DEFAULT_RATIOS, batches: Sequence[int] = (1, 32), *,
          repeats: int = 7, warmup: int = 1, images: torch.Tensor | None = None, predictor=None,
          tokens=None, progress: bool = True, data: str | None = None) -> dict:
    """Image-encoder latency per method per keep ratio (the sweep's timing without accuracy):
    {"format": "patchrank-bench/1", "meta", "rows": [{method, ratio, kept, batch, median_ms,
    min_ms, ms_per_image, gflops, gflops_ratio, speedup}]}. ``fixed-ids`` times the pruned
    forward alone (ranking excluded, like precomputed golden orders). ``images``: a preprocessed
    batch, else the first images of the dataset spec ``data``, else random pixels."""
    ratios = _check_ratios(m, ratios)
    names = list(methods)
    meths, skipped = build_methods(m, [n for n in names if n != "fixed-ids"], [],
                                   predictor=predictor, tokens=tokens)
    if "fixed-ids" in names:
        meths.insert(names.index("fixed-ids"), Method("fixed-ids", ranker=_FixedIds(), precomputed=True, search_gflops=0.0))
    for name, why in skipped.items():
        print(f"note: skipping {name}: {why}", file=sys.stderr)
    if images is None and data:
        ds = _as_dataset(data, max(batches))
        images = torch.stack([m.preprocess(_image(ds, i)) for i in range(len(ds.ids))])
    if images is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randn(max(batches), 3, *m.image_size, generator=g)
    t = measure_latency(m, meths, ratios, images, batches, repeats, warmup, progress)
    full_gf = float(m.flops())
    rows = []
    for b in batches:
        full = t[b]["full"]
        rows.append({"method": "full", "ratio": 1.0, "kept": m.num_patches, "batch": b,
                     "median_ms": full["median_ms"], "min_ms": full["min_ms"],
                     "ms_per_image": full["median_ms"] / b, "gflops": full_gf, "gflops_ratio": 1.0,
                     "speedup": 1.0})
        for meth in meths:
            for r in ratios:
                k = m.keep_count(r)
                key = f"{meth.name}@{r:g}"
                if key not in t[b]:
                    continue
                gf = float(m.flops(keep=k, extra_tokens=meth.extra_tokens)) + (ranker_gflops(m, meth) or 0.0)
                rows.append({"method": meth.name, "ratio": r, "kept": k, "batch": b,
                             "median_ms": t[b][key]["median_ms"], "min_ms": t[b][key]["min_ms"],
                             "ms_per_image": t[b][key]["median_ms"] / b, "gflops": gf,
                             "gflops_ratio": gf / full_gf,
                             "speedup": full["median_ms"] / t[b][key]["median_ms"]})
    meta = {"model": m.name, "pretrained": m.pretrained, "model_id": m.model_id,
            "device": str(m.device), "dtype": str(m.dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "prune_layer": m.prune_layer, "num_patches": m.num_patches, "repeats": repeats,
            "warmup": warmup, "batches": list(batches), "skipped": skipped,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "note": "median/min ms per m.encode_image call, interleaved repeats (patchrank.timing)"}
    return {"format": "patchrank-bench/1", "meta": meta, "rows": rows}
