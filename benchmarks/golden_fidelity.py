"""Do golden scores measure the model or float32 rounding? Ties and agreement with float64.

    python benchmarks/golden_fidelity.py [--limit 20]

For the first N evaluation scenes of the bundled model, every patch is removed alone at the prune
layer (one-shot leave-one-out) and the variants are embedded once in float32. Two scores of the
same embeddings are compared, each ordered most important first (ties: lower patch id first):
- ``cosine32``: the earlier score, cos(f(X minus i), f(X)) in float32 (higher = removable);
- ``harm64``: ``golden.py``'s 1/2 ||u - v||^2 of the unit embeddings, from their difference, in
  float64 (higher = important).
Reported: distinct values among the P patches, the share of patches that share their value with
another, and Kendall tau / kept-set IoU at 0.6 against the harm computed on a float64 copy of the
model (the reference: no rounding worth the name). Writes ``benchmarks/results/golden_fidelity.json``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import patchrank as pr  # noqa: E402
from patchrank import forward, metrics  # noqa: E402


@torch.inference_mode()
def loo_embeddings(m, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(full embedding [E], the P leave-one-out embeddings [P,E]) of one image, model dtype."""
    k, p = m.prune_layer, m.num_patches
    h = forward.run_prefix(m.visual, x.unsqueeze(0), k)
    keep = torch.stack([torch.cat([torch.arange(i), torch.arange(i + 1, p)]) for i in range(p)])
    out = [forward.run_suffix(m.visual, forward.gather_patches(h.expand(len(c), -1, -1), c), k)
           for c in keep.split(64)]
    return forward.run_suffix(m.visual, h, k)[0], torch.cat(out)


def cosine32(full: torch.Tensor, loo: torch.Tensor) -> torch.Tensor:
    return F.normalize(loo.float(), dim=-1) @ F.normalize(full.float(), dim=-1)


def harm64(full: torch.Tensor, loo: torch.Tensor) -> torch.Tensor:
    d = F.normalize(loo.double(), dim=-1) - F.normalize(full.double(), dim=-1)
    return 0.5 * (d * d).sum(-1)


def order(values: torch.Tensor, important_high: bool) -> torch.Tensor:
    """Most important first; ties broken by lower patch id first (stable sort)."""
    return torch.sort(values if important_high else -values, descending=True, stable=True).indices


def tie_stats(values: torch.Tensor) -> tuple[int, int]:
    """(distinct values, patches sharing their value with another)."""
    uniq, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
    return len(uniq), int((counts[inverse] > 1).sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/results/golden_fidelity.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    m = pr.load_model()
    m64 = copy.deepcopy(m)
    m64.clip.double()
    ev = pr.bundled_eval(a.limit)
    rows = {"cosine32": [], "harm64": []}
    for im in ev.images:
        x = m.preprocess(im)
        full, loo = loo_embeddings(m, x)
        ref = order(harm64(*loo_embeddings(m64, x.double())), important_high=True)
        for name, (vals, high) in {"cosine32": (cosine32(full, loo), False),
                                   "harm64": (harm64(full, loo), True)}.items():
            o = order(vals, high)
            distinct, shared = tie_stats(vals)
            rows[name].append({"distinct": distinct, "shared": shared,
                               "tau_vs_float64": float(metrics.kendall_tau(o, ref)[0]),
                               "iou@0.6_vs_float64": float(metrics.kept_iou(o, ref, 0.6)[0])})
    p = m.num_patches
    summary = {}
    for name, rs in rows.items():
        taus = [r["tau_vs_float64"] for r in rs]
        summary[name] = {
            "distinct_min_max": [min(r["distinct"] for r in rs), max(r["distinct"] for r in rs)],
            "shared_share": sum(r["shared"] for r in rs) / (p * len(rs)),
            "tau_mean": sum(taus) / len(taus), "tau_min": min(taus),
            "iou@0.6_mean": sum(r["iou@0.6_vs_float64"] for r in rs) / len(rs)}
        print(f"{name}: {json.dumps(summary[name])}")
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"model_id": m.model_id, "images": len(ev.images),
                                        "num_patches": p, "summary": summary, "per_image": rows},
                                       indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
