"""Wall-clock timing that survives a noisy shared CPU: interleaved repeats, median and min.

Timing configurations back to back lets machine-load drift masquerade as a speed difference
(±30 % on 2 shared cores); running every configuration once per round, round after round,
spreads drift over all of them. Report the median (typical) and the min (least disturbed).
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch

from . import prepacked


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 7, warmup: int = 1,
                clock: Callable[[], float] = time.perf_counter,
                sync: Callable[[], None] | None = None) -> dict[str, dict]:
    """Time each zero-argument callable ``repeats`` times, round-robin in a rotating order (so
    drift and "who runs after whom" hit every configuration alike); returns name ->
    {"median_ms", "min_ms", "times_ms"}. ``clock``: e.g. ``time.process_time`` to count CPU time
    on a busy machine; ``sync``: e.g. ``torch.cuda.synchronize`` around each timed call."""
    sync = sync or (lambda: None)
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            sync()
            t = clock()
            fns[name]()
            sync()
            times[name].append((clock() - t) * 1e3)
    return {name: {"median_ms": statistics.median(ts), "min_ms": min(ts), "times_ms": ts}
            for name, ts in times.items()}


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5) -> dict:
    """Dense n x n @ n x n matmul throughput: the machine's ceiling for ``dtype`` (``matmul_rate``)."""
    return matmul_rate(n, n, n, dtype, repeats)


def matmul_rate(rows: int, inner: int, cols: int, dtype: torch.dtype = torch.float32,
                repeats: int = 5) -> dict:
    """Throughput of a [rows, inner] @ [inner, cols] product (2*rows*inner*cols FLOPs), the best
    of torch's matmul and the prepacked linear the pruned forward runs (``prepacked``), each
    timed ``repeats`` times, interleaved: the ceiling what is compared with it could reach,
    measured in the same run."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=g).to(dtype)
    w = torch.randn(cols, inner, generator=g).to(dtype)
    wt = w.t().contiguous()
    with torch.inference_mode():
        r = interleaved({"matmul": lambda: a @ wt, "prepacked": lambda: prepacked.linear(a, w)},
                        repeats=repeats)
    flop = 2 * rows * inner * cols
    best = min(r, key=lambda k: r[k]["min_ms"])
    return {"dtype": str(dtype).replace("torch.", ""), "shape": [rows, inner, cols], "kernel": best,
            "gflops_median": flop / r[best]["median_ms"] / 1e6, "gflops_best": flop / r[best]["min_ms"] / 1e6,
            "gflops_matmul": flop / r["matmul"]["min_ms"] / 1e6}
