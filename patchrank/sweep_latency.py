"""Latency of the methods a sweep compares, and ``bench``: the same timing without accuracy.

What is timed is the image-encoder call a user makes, ``m.encode_image(x, keep_ratio=r,
ranker=..., tokens=...)``, ranking included: equal cost means all cost. Golden orders are
searched beforehand, so their call is the pruned forward with given patch ids (their search's
cost is counted in GFLOPs instead). All calls of a batch size are timed in one
``timing.interleaved`` run, round after round, so load drift on a shared machine hits every
configuration alike; median and min are reported, and speedups are against the full model's
median at the same batch.
"""
from __future__ import annotations

import math
import sys
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import torch

from .progress import bar as progress_bar
from .sweep_cells import open_data, preprocessed
from .sweep_methods import DEFAULT_RATIOS, Method, build_methods, check_ratios, ranker_gflops
from .timing import interleaved

BENCH_FORMAT = "patchrank-bench/1"
#: Bench's pseudo-method: the pruned forward with given patch ids, no ranking.
FIXED_IDS = "fixed-ids"


def _sync(m) -> Callable[[], None]:
    if m.device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def latency_calls(m, methods: Sequence[Method], ratios: Sequence[float],
                  x: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """Zero-argument callables to time on batch ``x``: key "full", and "<method>@<ratio>" for
    every method and ratio that differ from the full model. Ratio 1.0 without tokens is the
    "full" call."""
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


# -- bench: latency only --------------------------------------------------------------------------
def _bench_images(m, images: torch.Tensor | None, data: str | None, n: int) -> torch.Tensor:
    if images is None and data:
        ds = open_data(data, n)
        images = preprocessed(m, ds, range(len(ds.ids)))
    if images is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randn(n, 3, *m.image_size, generator=g)
    return images


def _bench_rows(m, meths: Sequence[Method], ratios, batches, timings) -> list[dict]:
    full_gf = float(m.flops())
    rows = []
    for b in batches:
        full = timings[b]["full"]
        rows.append({"method": "full", "ratio": 1.0, "kept": m.num_patches, "batch": b,
                     "median_ms": full["median_ms"], "min_ms": full["min_ms"],
                     "ms_per_image": full["median_ms"] / b, "gflops": full_gf, "gflops_ratio": 1.0,
                     "speedup": 1.0})
        for meth in meths:
            for r in ratios:
                n_keep = m.keep_count(r)
                t = timings[b].get(f"{meth.name}@{r:g}")
                if t is None:
                    continue
                gf = (float(m.flops(keep=n_keep, extra_tokens=meth.extra_tokens))
                      + (ranker_gflops(m, meth) or 0.0))
                rows.append({"method": meth.name, "ratio": r, "kept": n_keep, "batch": b,
                             "median_ms": t["median_ms"], "min_ms": t["min_ms"],
                             "ms_per_image": t["median_ms"] / b, "gflops": gf,
                             "gflops_ratio": gf / full_gf, "speedup": full["median_ms"] / t["median_ms"]})
    return rows


def bench(m, methods: Sequence[str] = (FIXED_IDS, "predictor"),
          ratios: Sequence[float] = DEFAULT_RATIOS,
          batches: Sequence[int] = (1, 32), *, repeats: int = 7, warmup: int = 1,
          images: torch.Tensor | None = None, predictor=None, tokens=None, progress: bool = True,
          data: str | None = None) -> dict:
    """Image-encoder latency per method per keep ratio (the sweep's timing without accuracy):
    {"format": "patchrank-bench/1", "meta", "rows": [{method, ratio, kept, batch, median_ms,
    min_ms, ms_per_image, gflops, gflops_ratio, speedup}]}. ``fixed-ids`` times the pruned
    forward alone (ranking excluded, like precomputed golden orders). ``images``: a preprocessed
    batch, else the first images of the dataset spec ``data``, else random pixels."""
    ratios = check_ratios(m, ratios)
    names = list(methods)
    meths, skipped = build_methods(m, [n for n in names if n != FIXED_IDS], [],
                                   predictor=predictor, tokens=tokens)
    if FIXED_IDS in names:
        meths.insert(names.index(FIXED_IDS), Method(FIXED_IDS, precomputed=True, search_gflops=0.0))
    for name, why in skipped.items():
        print(f"note: skipping {name}: {why}", file=sys.stderr)
    images = _bench_images(m, images, data, max(batches))
    timings = measure_latency(m, meths, ratios, images, batches, repeats, warmup, progress)
    meta = {"model": m.name, "pretrained": m.pretrained, "model_id": m.model_id,
            "device": str(m.device), "dtype": str(m.dtype).replace("torch.", ""),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "prune_layer": m.prune_layer, "num_patches": m.num_patches, "repeats": repeats,
            "warmup": warmup, "batches": list(batches), "skipped": skipped,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "note": "median/min ms per m.encode_image call, interleaved repeats (patchrank.timing)"}
    return {"format": BENCH_FORMAT, "meta": meta, "rows": _bench_rows(m, meths, ratios, batches, timings)}
