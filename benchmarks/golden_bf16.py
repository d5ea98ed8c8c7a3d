"""Does a bfloat16 golden search give the float32 ranking? (decides whether bf16 golden is offered)

    python benchmarks/golden_bf16.py [--scenes 20] [--vit-images 2] [--vit-candidates 16]

The search's suffixes run under bf16 autocast (``golden_ranking(dtype=torch.bfloat16)``, weights
stay float32; harms are still reduced in float64) and the order is compared with the float32 one:
Kendall tau over the full order and kept-set IoU at keep 0.6, per image.
- bundled model: one-shot leave-one-out over all 196 patches of ``--scenes`` *validation* scenes
  (``bundled-val``: the decision is a choice made by looking at results, so not the evaluation split);
- random-init ViT-B-16: single-removal harms of ``--vit-candidates`` patches spread over the grid
  (a subset: on a CPU without AMX a bf16 matmul runs ~100x slower than fp32).
A bf16 golden mode is worth offering only if tau >= 0.95 on both (the project's bar: tau 0.95 leaves 2.5 % of patch
pairs swapped); the script prints the verdict. Writes ``benchmarks/results/golden_bf16.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import patchrank as pr  # noqa: E402
from patchrank import forward, metrics  # noqa: E402
from patchrank.data.datasets import open_dataset  # noqa: E402
from patchrank.golden import golden_ranking  # noqa: E402
from patchrank.golden_scorer import Scorer as _Scorer  # noqa: E402

BAR = 0.95


def agreement(a: torch.Tensor, b: torch.Tensor, n_keep: int) -> dict:
    tau = metrics.kendall_tau(a, b)
    ka, kb = a[:, :n_keep], b[:, :n_keep]
    iou = [len(set(x.tolist()) & set(y.tolist())) / len(set(x.tolist()) | set(y.tolist()))
           for x, y in zip(ka, kb)]
    return {"tau_mean": float(tau.mean()), "tau_min": float(tau.min()),
            "iou06_mean": sum(iou) / len(iou), "per_image_tau": [round(t, 4) for t in tau.tolist()]}


def bundled_rows(n: int) -> dict:
    m = pr.load_model()
    ds = open_dataset(f"bundled-val:{n}")
    x = torch.stack([m.preprocess(ds.image(i)) for i in range(len(ds.ids))])
    t0 = time.perf_counter()
    o32 = golden_ranking(m, x, mode="oneshot").order
    t32 = time.perf_counter() - t0
    o16 = golden_ranking(m, x, mode="oneshot", dtype=torch.bfloat16).order
    t16 = time.perf_counter() - t0 - t32
    return {"model": m.model_id, "data": ds.spec, "images": n, "candidates": m.num_patches,
            "s_per_image_fp32": t32 / n, "s_per_image_bf16": t16 / n,
            **agreement(o32, o16, m.keep_count(0.6))}


def subset_harms(m, x, candidates, dtype):
    out = []
    with torch.no_grad():
        h = forward.run_prefix(m.visual, m._input(x), m.prune_layer)
        for i in range(len(x)):
            sc = _Scorer(m, h[i:i + 1], "similarity", None, None, 512, dtype)
            sc.start()
            present = torch.ones(m.num_patches, dtype=torch.bool)
            out.append(sc.score_sets([torch.tensor([c]) for c in candidates], present))
    return torch.stack(out)


def vit_rows(n: int, n_cand: int) -> dict:
    torch.manual_seed(0)
    m = pr.load_model("ViT-B-16")
    ds = open_dataset(f"bundled-val:{n}")
    x = torch.stack([m.preprocess(ds.image(i)) for i in range(n)])
    cands = torch.linspace(0, m.num_patches - 1, n_cand).round().long().tolist()
    t0 = time.perf_counter()
    h32 = subset_harms(m, x, cands, None)
    t32 = time.perf_counter() - t0
    h16 = subset_harms(m, x, cands, torch.bfloat16)
    t16 = time.perf_counter() - t0 - t32
    order = lambda h: torch.sort(h, dim=1, descending=True, stable=True).indices  # noqa: E731
    return {"model": "ViT-B-16 (random init)", "images": n, "candidates": n_cand,
            "s_per_image_fp32": t32 / n, "s_per_image_bf16": t16 / n,
            **agreement(order(h32), order(h16), max(1, round(0.6 * n_cand)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=20)
    ap.add_argument("--vit-images", type=int, default=2)
    ap.add_argument("--vit-candidates", type=int, default=16)
    ap.add_argument("--json", default="benchmarks/results/golden_bf16.json")
    a = ap.parse_args()
    flags = open("/proc/cpuinfo").read()
    rows = [bundled_rows(a.scenes)]
    if a.vit_images:
        rows.append(vit_rows(a.vit_images, a.vit_candidates))
    offer = all(r["tau_min"] >= BAR for r in rows)
    res = {"threads": torch.get_num_threads(), "amx": "amx_bf16" in flags,
           "command": " ".join(["python", *sys.argv]), "rows": rows, "bar_tau_min": BAR,
           "offer_bf16_golden": offer}
    for r in rows:
        print(f"{r['model']}: {r['images']} images x {r['candidates']} candidates: tau mean "
              f"{r['tau_mean']:.3f} (min {r['tau_min']:.3f}), IoU@0.6 {r['iou06_mean']:.3f}; "
              f"{r['s_per_image_fp32']:.1f} s fp32 vs {r['s_per_image_bf16']:.1f} s bf16 per image")
    print("verdict:", "offer bf16 golden" if offer else f"keep golden in fp32 (tau below {BAR})")
    Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
