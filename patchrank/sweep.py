"""Trade-off sweeps: top-1 accuracy, analytic GFLOPs and measured latency per method per keep ratio.

The paper's evidence is accuracy at matched cost (docs/paper.md); ``run_sweep`` measures it for
any model and labelled dataset, in three passes over its parts:

- accuracy (``sweep_cells``): one pass over the data in batches, every (batch, method) cell kept
  in a resumable store, so a killed sweep resumes where it stopped;
- latency (``sweep_latency``): the public ``m.encode_image`` call per method and ratio, ranking
  included, at batch 1 and batch N;
- results (``results``): one row per method and ratio, written as JSON and CSV, read back by
  ``figures`` and the app.

The methods are built by ``sweep_methods``. Cost accounting (also in the results' ``meta.notes``):
- ``encoder_gflops``: ``patchrank.flops(m, keep=K, extra_tokens=T)`` (1 MAC = 2 FLOPs).
- ``ranker_gflops``: what choosing the patches costs on top, every ranker's own ``gflops(m)``:
  the predictor's network, the attention ranker's recomputed prefix, ToMe's matching. Golden
  orders are searched beforehand: their ``ranker_gflops`` is the search's analytic cost
  (``golden.search_gflops``; null when it depends on the image, for coarse-to-fine) and their
  latency is the pruned forward with given patch ids. At ratio 1.0 nothing is pruned and no
  ranker runs: all methods share the full model's cell (with tokens, the full model plus tokens).
- ``gflops`` = encoder + ranker (encoder alone when the ranker's cost is unknown).
"""
from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Sequence

import numpy as np
import torch

from . import distributed
from .errors import PatchRankError
from .results import FORMAT, pack_hits, write_results
from .stats import wilson_interval
from .sweep_cells import CellStore, cells_path, evaluate, open_data, preprocessed
from .sweep_latency import measure_latency
from .sweep_methods import (DEFAULT_METHODS, DEFAULT_RATIOS, Method, build_methods, check_ratios, digest,
                            ranker_gflops)


@dataclass(frozen=True)
class SweepSettings:
    """How a sweep runs; the one place its defaults are written (the CLI reads them here).

    ``templates``: prompt template(s), default the dataset's own (CoOp) else the model's;
    ``latency_batches=()`` skips timing; ``limit``: the first N images only; ``fresh``: discard
    finished cells of an earlier run; ``command``: the command line, recorded in the results."""
    methods: Sequence[str] = DEFAULT_METHODS
    ratios: Sequence[float] = DEFAULT_RATIOS
    batch: int = 64
    latency_batches: Sequence[int] = (1, 32)
    repeats: int = 5
    warmup: int = 1
    templates: Sequence[str] | str | None = None
    limit: int | None = None
    fresh: bool = False
    progress: bool = True
    command: str | None = None

    def __post_init__(self):
        for name in ("methods", "ratios", "latency_batches"):     # frozen all the way down
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.templates is not None and not isinstance(self.templates, str):
            object.__setattr__(self, "templates", tuple(self.templates))
        if isinstance(self.batch, bool) or int(self.batch) < 1:
            raise PatchRankError(f"batch must be a positive integer, got {self.batch!r}")


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


def _cell_key(m, ds, labels, clf, batch: int, ratios: list[float]) -> dict:
    """What the cells depend on: a resumed sweep must match it exactly."""
    return {"format": FORMAT, "model_id": m.model_id, "prune_layer": m.prune_layer,
            "dtype": str(m.dtype).replace("torch.", ""),
            "data": str(getattr(ds, "spec", type(ds).__name__)), "n": len(ds.ids),
            "ids": digest(list(ds.ids)), "labels": digest(labels.tolist()),
            "classnames": list(clf.classnames), "templates": list(clf.templates), "batch": int(batch),
            "ratios": ratios, "keep": [m.keep_count(r) for r in ratios]}


def run_sweep(m, dataset, settings: SweepSettings | None = None, out: str | os.PathLike | None = None, *,
              rankings=None, predictor=None, tokens=None, extra_rankers: dict | None = None,
              **changes) -> dict | None:
    """Accuracy / GFLOPs / latency per method per keep ratio on a labelled dataset (module
    docstring). ``dataset``: a Dataset (``data.datasets``), the bundled ``EvalSplit``, or a spec
    string; ``settings`` (or its fields as keywords, ``changes``): how to run; ``out``: results
    JSON path (+ CSV, + resumable cells file), or None to keep everything in memory;
    ``rankings``: a golden ranking folder (or (meta, orders)) for ``golden``;
    ``predictor``/``tokens``: objects, files, or None for the bundled ones; ``extra_rankers``:
    {name: ranker} for custom methods. Returns the results dict. Under torchrun the batches are
    split round-robin across ranks; rank 0 then times, assembles and returns the results, the
    others return None."""
    s = replace(settings or SweepSettings(), **changes)
    t_start = time.perf_counter()
    ds = open_data(dataset, s.limit)
    if not ds.ids:
        raise PatchRankError("the dataset holds no images")
    labels = _labels(ds)
    ratios = check_ratios(m, s.ratios)
    clf = m.zero_shot(list(ds.classnames), s.templates if s.templates is not None
                      else getattr(ds, "templates", None))
    meths, skipped = build_methods(m, list(s.methods), list(ds.ids), rankings=rankings,
                                   predictor=predictor, tokens=tokens, extra=extra_rankers)
    for name, why in skipped.items():
        print(f"note: skipping {name}: {why}", file=sys.stderr)
    rank, world = distributed.rank_world()
    if world > 1 and out is None:
        raise PatchRankError("under torchrun a sweep needs an output file (--out): the processes "
                             "share their results through its cell files")
    store = CellStore(None if out is None else cells_path(out), _cell_key(m, ds, labels, clf, s.batch, ratios),
                      fresh=s.fresh, shard=rank if world > 1 else None)
    try:
        for meth in meths:
            store.check_method(meth.name, meth.fingerprint)
        evaluate(m, ds, meths, ratios, clf, store, int(s.batch), s.progress)
        if world > 1:
            distributed.barrier()          # every rank's cells are on disk
            if rank != 0:
                return None                # rank 0 times, assembles and writes the results
            store.reload()
        t_acc = time.perf_counter() - t_start
        c_lat = time.process_time()
        timings = _time(m, ds, meths, ratios, s)
        t_lat, cpu_lat = time.perf_counter() - t_start - t_acc, time.process_time() - c_lat
        results = _results(m, ds, labels, meths, skipped, ratios, store, timings, clf, s)
        results["meta"]["runtime"] = _runtime(store, meths, len(ds.ids), t_acc, t_lat, cpu_lat,
                                              time.perf_counter() - t_start)
        results["meta"]["command"] = s.command
    finally:
        store.close()
    if out is not None:
        write_results(results, out)
    return results


def _time(m, ds, meths, ratios, s: SweepSettings) -> dict[int, dict[str, dict]]:
    """Latency of every call, on the first images of the dataset (``sweep_latency``)."""
    if not s.latency_batches:
        return {}
    xs = preprocessed(m, ds, range(min(len(ds.ids), max(s.latency_batches))))
    return measure_latency(m, meths, ratios, xs, s.latency_batches, s.repeats, s.warmup, s.progress)


# -- rows and meta --------------------------------------------------------------------------------
def _gather(store: CellStore, method: str, key: str, starts: list[int]) -> np.ndarray:
    return np.concatenate([np.asarray(store.done[(s, method)][key], np.int64) for s in starts])


def _latency(timings: dict, b: int | None, key: str) -> tuple[float | None, float | None]:
    t = timings.get(b, {}).get(key) if b is not None else None
    return (t["median_ms"], t["min_ms"]) if t else (None, None)


def _batch_sizes(latency_batches: Sequence[int]) -> tuple[int | None, int | None]:
    """(1 if timed at batch 1, the largest batch if over 1): the two columns of latency."""
    b1 = 1 if 1 in latency_batches else None
    bn = max(latency_batches) if latency_batches and max(latency_batches) > 1 else None
    return b1, bn


def _accuracy_fields(pred: np.ndarray, labels: np.ndarray) -> dict:
    correct = int((pred == labels).sum())
    lo, hi = wilson_interval(correct, len(labels))
    return {"n": len(labels), "correct": correct, "accuracy": correct / len(labels), "ci_low": lo,
            "ci_high": hi}


def _cost_fields(m, meth: Method, n_keep: int, full_gf: float) -> dict:
    enc = float(m.flops(keep=n_keep, extra_tokens=meth.extra_tokens))
    over = ranker_gflops(m, meth) if n_keep < m.num_patches else 0.0
    return {"gflops": enc + (over or 0.0), "encoder_gflops": enc, "ranker_gflops": over,
            "gflops_ratio": (enc + (over or 0.0)) / full_gf}


def _latency_fields(timings: dict, key: str, b1: int | None, bn: int | None) -> dict:
    (m1, m1min), (mn, mnmin) = _latency(timings, b1, key), _latency(timings, bn, key)
    f1, fn = _latency(timings, b1, "full")[0], _latency(timings, bn, "full")[0]
    return {"latency_ms": m1, "latency_ms_b1": m1, "latency_ms_b1_min": m1min,
            "latency_ms_bN": mn, "latency_ms_bN_min": mnmin,
            "ms_per_image_bN": None if mn is None else mn / bn, "batch_N": bn,
            "speedup_b1": None if m1 is None else f1 / m1, "speedup_bN": None if mn is None else fn / mn}


def _rows(m, meths, ratios, labels, store, timings, s: SweepSettings) -> list[dict]:
    starts = list(range(0, len(labels), int(s.batch)))
    full_pred = _gather(store, "full", "1", starts)
    full_gf = float(m.flops())
    b1, bn = _batch_sizes(s.latency_batches)
    rows = []
    for meth in meths:
        for r in meth.ratios(ratios):
            n_keep = m.keep_count(r)
            own = n_keep < m.num_patches or meth.tokens is not None   # else the shared unpruned cell
            pred = _gather(store, meth.name, f"{r:g}", starts) if own else full_pred
            rows.append({"method": meth.name, "ratio": r, "kept": n_keep, "extra_tokens": meth.extra_tokens,
                         **_accuracy_fields(pred, labels), **_cost_fields(m, meth, n_keep, full_gf),
                         **_latency_fields(timings, f"{meth.name}@{r:g}" if own else "full", b1, bn),
                         "precomputed": meth.precomputed, "model": m.name,
                         "hits": pack_hits(pred == labels)})
    return rows


NOTES = {
    "flops": "analytic image-encoder GFLOPs per image, 1 MAC = 2 FLOPs (patchrank.flops); "
             "gflops = encoder_gflops + ranker_gflops (sweep_methods.ranker_gflops); ratio 1.0 "
             "prunes nothing and runs no ranker",
    "latency": "median/min ms per encode_image call (ranking included) at batch 1 and "
               "batch_N, interleaved repeats (patchrank.timing); speedup vs the full model "
               "at the same batch",
    "accuracy": "zero-shot top-1 as a fraction; ci_low/ci_high: Wilson 95% interval",
}
PRECOMPUTED_NOTE = ("golden orders are searched beforehand: their gflops include the search "
                    "(golden.search_gflops), their latency is the pruned forward with given patch ids")


def _full(m, labels, store, timings, s: SweepSettings) -> dict:
    """The unpruned model's numbers, the reference every row is compared with."""
    pred = _gather(store, "full", "1", list(range(0, len(labels), int(s.batch))))
    acc = _accuracy_fields(pred, labels)
    b1, bn = _batch_sizes(s.latency_batches)
    return {"accuracy": acc["accuracy"], "correct": acc["correct"], "ci_low": acc["ci_low"],
            "ci_high": acc["ci_high"], "hits": pack_hits(pred == labels), "gflops": float(m.flops()),
            "latency_ms_b1": _latency(timings, b1, "full")[0],
            "latency_ms_bN": _latency(timings, bn, "full")[0], "batch_N": bn}


def _results(m, ds, labels, meths, skipped, ratios, store, timings, clf, s: SweepSettings) -> dict:
    meta = {
        "model": m.name, "pretrained": m.pretrained, "model_id": m.model_id,
        "data": str(getattr(ds, "spec", type(ds).__name__)), "n_images": len(labels),
        "num_patches": m.num_patches, "grid": list(m.grid), "prune_layer": m.prune_layer,
        "num_layers": m.num_layers, "classnames": list(clf.classnames), "templates": list(clf.templates),
        "methods": [x.name for x in meths], "ratios": list(ratios), "batch": int(s.batch),
        "latency_batches": list(s.latency_batches), "repeats": s.repeats,
        "device": str(m.device), "dtype": str(m.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "settings_hash": store.hash, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "full": _full(m, labels, store, timings, s), "skipped": skipped,
        "notes": {**NOTES, **{f"method:{x.name}": x.note for x in meths if x.note},
                  **({"precomputed": PRECOMPUTED_NOTE} if any(x.precomputed for x in meths) else {})},
    }
    return {"format": FORMAT, "meta": meta, "rows": _rows(m, meths, ratios, labels, store, timings, s)}


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
