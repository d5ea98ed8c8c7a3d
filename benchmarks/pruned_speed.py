"""Measured vs FLOP-ideal speed of the pruned image encoder (random-init ViT-B-16, k=3).

    python benchmarks/pruned_speed.py [--model ViT-B-16] [--batches 1,8] [--repeats 7] [--json out.json]

``--plain`` adds rows "keep R plain": the same forward with its linears on plain ``F.linear``
(``prepacked.off()``), the path before prepacked weights, timed in the same interleaved run, so
one command on any CPU shows what prepacking buys there.

(``--repeats`` rounds at batch 8; a batch of b runs 8/b times as many, so every row is timed
over about the same number of images: single-image times are short and noisier.)

Per batch size and keep ratio: median/min latency (interleaved repeats), measured speedup vs the
stock open_clip ``encode_image``, FLOP-ideal speedup (open_clip's standard FLOPs / the FLOPs
PatchRank's forward executes, ``FlopCount.executed``: its last block runs for CLS only) and their
ratio ("ratio"); the same for the pruning alone, against PatchRank's own unpruned forward
("vs own keep 1.0": does cutting tokens save the time its FLOPs promise?), and achieved GFLOP/s
next to the dense matmul GFLOP/s of the same dtype (the faster of torch's matmul and the
prepacked linear, ``timing.matmul_rate``), measured in the same run. bfloat16 is timed only
where the CPU accelerates it (AMX / avx512_bf16): elsewhere a bf16 matmul is orders of
magnitude slower than fp32 and the row is reported as skipped.
Rows "predictor R" prune with a random-init predictor (``encode_image(keep_ratio=R,
ranker=predictor)``: prefix, predictor, top-k, gather, suffix); their FLOP-ideal is the pruned
encoder's alone, so the predictor's own cost counts against them (the project's bar: >= 0.93 at batch 8).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402

import patchrank as pr  # noqa: E402
from patchrank.figures import grid_table  # noqa: E402
from patchrank.files import write_json  # noqa: E402
from patchrank.hardware import bf16_unit, cpu_name  # noqa: E402
from patchrank import prepacked  # noqa: E402
from patchrank.predictor import Predictor  # noqa: E402
from patchrank.timing import interleaved, matmul_gflops  # noqa: E402

RATIOS = (1.0, 0.8, 0.6, 0.4)
PREDICTOR_RATIOS = (0.6,)


def plain(fn):
    """``fn`` with the linears on plain ``F.linear`` (the path before prepacked weights)."""
    def run():
        with prepacked.off():
            return fn()
    return run


def bench_dtype(m, dtype, batches, repeats, with_plain=False):
    ceiling = matmul_gflops(dtype)
    rows = []
    full_flops = float(pr.flops(m))   # stock open_clip runs the standard count; ours .executed
    own_flops = pr.flops(m).executed
    pred = Predictor.for_model(m)   # random init: only its cost matters here
    for b in batches:
        torch.manual_seed(0)
        x = torch.randn(b, 3, *m.image_size).to(dtype)
        fns = {"open_clip": lambda x=x: m.clip.encode_image(x)}
        keeps = {}
        for r in RATIOS:
            k = m.keep_count(r)
            keeps[r] = torch.stack([torch.randperm(m.num_patches)[:k] for _ in range(b)])
            fns[f"keep {r}"] = lambda x=x, keep=keeps[r]: m.encode_image(x, keep=keep)
            if with_plain:
                fns[f"keep {r} plain"] = plain(fns[f"keep {r}"])
        for r in PREDICTOR_RATIOS:
            fns[f"predictor {r}"] = lambda x=x, r=r: m.encode_image(x, keep_ratio=r, ranker=pred)
        with torch.inference_mode():
            t = interleaved(fns, repeats=repeats * max(1, 8 // b))   # small batches: more rounds
        base = t["open_clip"]["median_ms"]
        for name, res in t.items():
            own = t["keep 1.0 plain" if name.endswith(" plain") else "keep 1.0"]["median_ms"]
            k = m.num_patches if name == "open_clip" else m.keep_count(float(name.split()[1]))
            gf = full_flops if name == "open_clip" else pr.flops(m, keep=k).executed
            ideal = full_flops / gf
            speed = base / res["median_ms"]
            rows.append({"dtype": ceiling["dtype"], "batch": b, "config": name, "kept": k,
                         "gflops_per_image": round(gf, 3), "median_ms": round(res["median_ms"], 1),
                         "min_ms": round(res["min_ms"], 1), "speedup": round(speed, 3),
                         "ideal_speedup": round(ideal, 3), "speedup_vs_ideal": round(speed / ideal, 3),
                         "pruning_vs_ideal": round(own / res["median_ms"] / (own_flops / gf), 3),
                         "achieved_gflops": round(gf * b / res["min_ms"] * 1e3, 1),
                         "matmul_gflops": round(ceiling["gflops_best"], 1)})
    return rows, ceiling


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plain", action="store_true",
                    help="also time every keep ratio on plain F.linear (rows 'keep R plain'), in the same run")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    batches = [int(b) for b in a.batches.split(",")]
    m = pr.load_model(a.model, pretrained=None)
    out = {"model": a.model, "prune_layer": m.prune_layer, "threads": a.threads, "cpu": cpu_name(),
           "bf16_unit": bf16_unit(), "rows": [], "skipped": []}
    fp32_ceiling = None
    for dtype in (torch.float32, torch.bfloat16):
        if dtype != torch.float32:
            probe = matmul_gflops(dtype, n=512, repeats=2)
            if probe["gflops_best"] < 0.25 * fp32_ceiling["gflops_best"]:
                out["skipped"].append({"dtype": probe["dtype"], "matmul_gflops_512": round(probe["gflops_best"], 2),
                                       "why": "this CPU does not accelerate bf16 matmuls (no AMX/avx512_bf16)"})
                continue
            m.clip.to(dtype)
        rows, ceiling = bench_dtype(m, dtype, batches, a.repeats, with_plain=a.plain)
        fp32_ceiling = fp32_ceiling or ceiling
        out["rows"] += rows
        out.setdefault("matmul", []).append(ceiling)
    keys = ["dtype", "batch", "config", "kept", "gflops_per_image", "median_ms", "min_ms", "speedup",
            "ideal_speedup", "speedup_vs_ideal", "pruning_vs_ideal", "achieved_gflops", "matmul_gflops"]
    print(f"CPU: {out['cpu']} (bf16 unit: {out['bf16_unit'] or 'none'}), {a.threads} threads")
    print(grid_table(["dtype", "batch", "config", "kept", "GFLOPs/img", "median ms", "min ms",
                          "speedup", "FLOP-ideal", "ratio", "vs own keep 1.0", "GFLOP/s", "matmul GFLOP/s"],
                         [[r[k] for k in keys] for r in out["rows"]]))
    for s in out["skipped"]:
        print(f"\nskipped {s['dtype']}: {s['why']} (512^2 matmul: {s['matmul_gflops_512']} GFLOP/s)")
    if a.json:
        write_json(a.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
