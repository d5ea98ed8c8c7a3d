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
    """Dense n x n @ n x n matmul throughput (2*n^3 FLOPs per product): the machine's ceiling
    for ``dtype``, measured in the same run as what it is compared with."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    r = interleaved({"mm": lambda: a @ b}, repeats=repeats)["mm"]
    flop = 2 * n ** 3
    return {"dtype": str(dtype).replace("torch.", ""), "n": n,
            "gflops_median": flop / r["median_ms"] / 1e6, "gflops_best": flop / r["min_ms"] / 1e6}
