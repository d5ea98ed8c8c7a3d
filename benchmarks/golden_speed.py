"""Golden-search speed: images/min and effective GFLOP/s next to the machine's matmul GFLOP/s.

    python benchmarks/golden_speed.py [--models ViT-B-16,bundled] [--images 2] [--json out.json]

For each model (random-init ViT-B-16 via ``load_model("ViT-B-16", pretrained=None)``, and the
bundled model) and dtype: runs ``golden_ranking`` on a few bundled evaluation scenes (resized by
the model's own preprocessing) and reports images/min and the effective GFLOP/s = analytic FLOPs
of every forward the search evaluated (``Ranking.gflops``, from ``patchrank.flops``, 1 MAC =
2 FLOPs) / wall time. The ceiling is a dense matmul of the search's own dominant shape, the
MLP's [variants_per_chunk * tokens, D] @ [D, 4D], timed in the same run before and after the
search (interleaved repeats, best of them). bf16 runs under autocast; on CPUs without
AMX/avx512_bf16 a bf16 matmul is orders of magnitude slower than fp32, so the bf16 search is
skipped there (``--force-bf16`` runs it anyway) and only its matmul rate is reported. When both
dtypes ran, the bf16 orders' agreement with fp32 (Kendall tau, kept-set IoU at 0.6) is reported.

The search timed is the paper's greedy one (``mode="greedy"``; the one-shot default is one greedy
round). Defaults per model: the bundled model searches to keep 0.6 (40 % pruned) with step 10;
ViT-B-16 runs one greedy round (stop at 0.95) because a full search
takes minutes per image on 2 CPU cores. Override with --step / --stop-at.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

import patchrank as pr  # noqa: E402
from patchrank.figures import grid_table  # noqa: E402
from patchrank.files import write_json  # noqa: E402
from patchrank import metrics  # noqa: E402
from patchrank.golden import DEFAULT_BUDGET_MB, golden_ranking  # noqa: E402
from patchrank.golden_scorer import variant_bytes as _variant_bytes  # noqa: E402
from patchrank.hardware import bf16_unit, cpu_name  # noqa: E402
from patchrank.timing import matmul_rate  # noqa: E402

DEFAULT_STOP = {"bundled": 0.6, "ViT-B-16": 0.95}


def matmul_at_shape(m, dtype: torch.dtype, budget_mb: float, repeats: int = 5,
                    max_rows: int = 32768) -> dict:
    """GFLOP/s of the search's MLP matmul shape: rows = variants per chunk x tokens (capped)."""
    d = m.width
    tokens = 1 + m.num_patches
    elt = torch.finfo(dtype).bits // 8
    chunk = max(1, int(budget_mb * 2 ** 20 // _variant_bytes(m.visual, tokens, elt)))
    rows = min(chunk * tokens, max_rows)
    return matmul_rate(rows, d, 4 * d, dtype, repeats)


def search(m, xs, dtype, step, stop_at, budget) -> dict:
    t0 = time.perf_counter()
    orders, gflops, variants = [], 0.0, 0
    for x in xs:
        r = golden_ranking(m, x.unsqueeze(0), mode="greedy", step=step, stop_at=stop_at,
                           batch_budget_mb=budget, dtype=None if dtype == torch.float32 else dtype)
        orders.append(r.order)
        gflops += float(r.gflops.sum())
        variants += int(r.variants.sum())
    wall = time.perf_counter() - t0
    return {"orders": torch.cat(orders), "seconds": wall, "gflops": gflops, "variants": variants}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="ViT-B-16,bundled")
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--step", type=int, default=10)
    ap.add_argument("--stop-at", type=float, default=None, help="default: per model (docstring)")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--budget-mb", type=float, default=DEFAULT_BUDGET_MB)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prune-layer", type=int, default=None, help="default: the model's (3 for ViT-B)")
    ap.add_argument("--force-bf16", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ds = pr.bundled_eval(a.images)
    rows, skipped = [], []
    for name in a.models.split(","):
        m = (pr.load_model(name, pretrained=None, prune_layer=a.prune_layer) if name != "bundled"
             else pr.load_model(prune_layer=a.prune_layer))
        stop = a.stop_at if a.stop_at is not None else DEFAULT_STOP.get(name, 0.6)
        xs = torch.stack([m.preprocess(im) for im in ds.images])
        fp32_orders = None
        for dname in a.dtypes.split(","):
            dtype = getattr(torch, dname)
            slow = dtype != torch.float32 and not (bf16_unit() or torch.cuda.is_available() or a.force_bf16)
            before = matmul_at_shape(m, dtype, a.budget_mb, repeats=2 if slow else 5,
                                     max_rows=256 if slow else 32768)
            if slow:
                skipped.append({"model": name, "dtype": dname, "matmul_gflops": round(before["gflops_best"], 2),
                                "why": "no AMX/avx512_bf16 on this CPU (bf16 matmul rate shown); "
                                       "--force-bf16 runs the search anyway"})
                continue
            with torch.inference_mode():
                s = search(m, xs, dtype, a.step, stop, a.budget_mb)
            after = matmul_at_shape(m, dtype, a.budget_mb)
            ceiling = max(before["gflops_best"], after["gflops_best"])
            eff = s["gflops"] / s["seconds"]
            row = {"model": name, "dtype": dname, "images": len(xs), "step": a.step, "stop_at": stop,
                   "prune_layer": m.prune_layer, "seconds_per_image": round(s["seconds"] / len(xs), 3),
                   "images_per_min": round(60 * len(xs) / s["seconds"], 2),
                   "variants_per_image": s["variants"] // len(xs),
                   "gflops_per_image": round(s["gflops"] / len(xs), 1),
                   "effective_gflops_per_s": round(eff, 1), "matmul_gflops_per_s": round(ceiling, 1),
                   "matmul_shape": before["shape"], "share_of_matmul": round(eff / ceiling, 3)}
            if dtype == torch.float32:
                fp32_orders = s["orders"]
            elif fp32_orders is not None:
                row["agreement_with_fp32"] = metrics.agreement(s["orders"], fp32_orders, keep_ratios=(0.6,))
            rows.append(row)
    print(grid_table(
        ["model", "dtype", "stop at", "s/image", "images/min", "GFLOP/image", "effective GFLOP/s",
         "matmul GFLOP/s (shape)", "share"],
        [[r["model"], r["dtype"], r["stop_at"], r["seconds_per_image"], r["images_per_min"],
          r["gflops_per_image"], r["effective_gflops_per_s"],
          f"{r['matmul_gflops_per_s']} ({'x'.join(map(str, r['matmul_shape']))})",
          f"{r['share_of_matmul']:.0%}"] for r in rows]))
    for s in skipped:
        print(f"\nskipped {s['model']} {s['dtype']}: {s['why']}: {s['matmul_gflops']} GFLOP/s")
    out = {"threads": a.threads, "budget_mb": a.budget_mb, "rows": rows, "skipped": skipped,
           "cpu": cpu_name(), "bf16_unit": bf16_unit(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    if a.json:
        write_json(a.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
