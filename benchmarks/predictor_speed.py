"""Predictor-driven pruned inference vs its FLOP-ideal speed (the project's bar: >= 0.93).

FLOP-ideal time = full-model time x (analytic GFLOPs at the keep ratio / full GFLOPs): what a
perfectly FLOP-proportional implementation would take. The measured path includes everything a
user pays for: the prefix, the predictor, top-k, the gather and the suffix
(``m.encode_image(x, keep_ratio=..., ranker=predictor)``). A fixed-ids pruned run (no ranking) is
timed too, to separate the cost of ranking from that of the pruned forward itself.

Timings are interleaved (every repeat runs each configuration once, in a rotating order) and
summarised by median and min, so drift on a shared machine hits all configurations alike.
``--clock cpu`` times process CPU time instead of wall time: with ``--threads 1`` on a machine
busy with other jobs it measures the work done rather than the share of the CPU we were given.

    python benchmarks/predictor_speed.py --model ViT-B-16 --batch 8 --keep 0.6 --repeats 7
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import patchrank as pr  # noqa: E402
from patchrank.predictor import Predictor  # noqa: E402
from patchrank.timing import interleaved  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--pretrained", default=None, help="default: random init")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--keep", type=float, default=0.6)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: perf_counter; cpu: process_time (use with --threads 1)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = pr.load_model(a.model, pretrained=a.pretrained, device=a.device)
    p = Predictor.for_model(m).to(m.device).eval()
    x = torch.randn(a.batch, 3, *m.image_size, device=m.device)
    k = m.keep_count(a.keep)
    fixed = torch.stack([torch.randperm(m.num_patches)[:k].sort().values for _ in range(a.batch)]).to(m.device)
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    sync = torch.cuda.synchronize if m.device.type == "cuda" else None

    runs = {"full": lambda: m.encode_image(x),
            "pruned_fixed_ids": lambda: m.encode_image(x, keep=fixed),
            "predictor": lambda: m.encode_image(x, keep_ratio=a.keep, ranker=p)}
    with torch.inference_mode():
        t = interleaved(runs, repeats=a.repeats, warmup=a.warmup, clock=clock, sync=sync)
    full_gf, kept_gf = m.flops().executed, m.flops(keep=k).executed
    ratio = kept_gf / full_gf
    med = {n: v["median_ms"] / 1e3 for n, v in t.items()}
    low = {n: v["min_ms"] / 1e3 for n, v in t.items()}
    out = {"model": a.model, "pretrained": a.pretrained, "device": str(m.device),
           "threads": torch.get_num_threads(), "clock": a.clock, "batch": a.batch, "keep_ratio": a.keep, "kept": k,
           "repeats": a.repeats, "gflops_full": full_gf, "gflops_pruned": kept_gf,
           "gflops_predictor": p.gflops(), "flop_ratio": ratio,
           "median_s": med, "min_s": low,
           # ideal / measured: 1.0 = exactly FLOP-proportional, > 1 = better than proportional
           "efficiency_median": {n: med["full"] * ratio / med[n] for n in ("pruned_fixed_ids", "predictor")},
           "efficiency_min": {n: low["full"] * ratio / low[n] for n in ("pruned_fixed_ids", "predictor")},
           "speedup_median": {n: med["full"] / med[n] for n in ("pruned_fixed_ids", "predictor")}}
    out["pass_0.93"] = out["efficiency_median"]["predictor"] >= 0.93
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
