"""Do bf16 forwards give float32's answers? PatchRank's pruned forward vs open_clip's own bf16.

    python benchmarks/bf16_agreement.py [--scenes 1200] [--vit-images 16] [--json out.json]

Per configuration, the bf16 copy of a model (``PatchModel.with_dtype``) against the float32
model on the same images and the same kept patches (``patchrank.dtype_agreement``): cosine of
the embeddings (min, median) and top-1 agreement of the zero-shot class.
- bundled model, its evaluation split (``--scenes``), kept patches from the shipped predictor;
- random-init ViT-B-16 (``--vit-images`` random images, norm ranker): cosine only (random
  weights have no meaningful classes). On a CPU without AMX/AVX512-BF16, bf16 runs ~100x slower
  than fp32: use few images there.
The bar: cosine >= 0.999 and top-1 agreement >= 99 % wherever open_clip's own bf16 meets them.
Writes ``benchmarks/results/bf16_agreement.json`` by default.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import patchrank as pr  # noqa: E402
from patchrank.dtype_agreement import agreement  # noqa: E402
from patchrank.figures import grid_table  # noqa: E402
from patchrank.files import write_json  # noqa: E402
from patchrank.hardware import bf16_unit, cpu_name  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "bf16_agreement.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenes", type=int, default=1200)
    ap.add_argument("--vit-images", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=OUT)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = {"cpu": cpu_name(), "bf16_unit": bf16_unit(), "models": {}}
    m = pr.load_model()
    ds = pr.bundled_eval(a.scenes)
    x = torch.stack([m.preprocess(im) for im in ds.images])
    out["models"]["bundled"] = agreement(m, m.with_dtype(torch.bfloat16), x, ds.classnames,
                                         ranker=pr.load_predictor(model=m))
    if a.vit_images:
        v = pr.load_model("ViT-B-16", pretrained=None)
        x = torch.randn(a.vit_images, 3, *v.image_size, generator=torch.Generator().manual_seed(0))
        out["models"]["ViT-B-16 (random init)"] = agreement(v, v.with_dtype(torch.bfloat16), x, None, batch=8)
    table = [[name, r["config"], r["n"], f"{r['cos_min']:.5f}", f"{r['cos_median']:.5f}",
              f"{r['top1_agree_pct']:.2f}" if "top1_agree_pct" in r else "n/a"]
             for name, rows in out["models"].items() for r in rows]
    print(grid_table(["model", "forward", "images", "cosine min", "cosine median", "top-1 agree %"], table))
    if a.json:
        write_json(a.json, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
