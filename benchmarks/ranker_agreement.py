"""How well does each ranker agree with the golden ranking? (the predictor vs CLS attention)

    python benchmarks/ranker_agreement.py --rankings assets/results/golden-eval [--limit N]
    python benchmarks/ranker_agreement.py --rankings runs/golden-val --rankers none \
        --predictor listwise=runs/pred-listwise.safetensors --predictor kl=runs/pred-kl.safetensors

On the images of a golden ranking folder (default: the bundled evaluation split's shipped one),
every ranker orders the patches and is compared with the golden order through
``patchrank.metrics.agreement``: Kendall tau and Spearman over the full order, the paper's
bottom-set overlap, and kept-set IoU at keep 0.6 and 0.4. Prints a markdown table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

import patchrank as pr  # noqa: E402
from patchrank import metrics, rankings  # noqa: E402
from patchrank.data.datasets import open_dataset  # noqa: E402
from patchrank.figures import grid_table  # noqa: E402

RANKERS = ("predictor", "attention", "norm", "norm-low", "random")


def agreement_table(m, ds, golden: dict, names=RANKERS, batch: int = 100,
                    predictors: dict | None = None) -> dict:
    """{ranker: metrics.agreement(...)} over the images of ``ds`` that ``golden`` covers."""
    idx = [i for i, iid in enumerate(ds.ids) if iid in golden]
    if not idx:
        raise SystemExit("the ranking folder covers none of the dataset's images")
    ref = torch.stack([golden[ds.ids[i]] for i in idx])
    out = {}
    rankers = {n: pr.load_predictor(model=m) if n == "predictor" else n for n in names}
    rankers.update({label: pr.load_predictor(path, model=m) for label, path in (predictors or {}).items()})
    for name, ranker in rankers.items():
        torch.manual_seed(0)                       # the random ranker draws from torch's RNG
        orders = []
        with torch.inference_mode():
            for j in range(0, len(idx), batch):
                x = torch.stack([m.preprocess(ds.image(i)) for i in idx[j:j + batch]])
                orders.append(m.rank(x, ranker))
        out[name] = {"images": len(idx), **metrics.agreement(torch.cat(orders), ref)}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rankings", default="assets/results/golden-eval")
    ap.add_argument("--model", default="bundled")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--json", default="benchmarks/results/ranker_agreement.json")
    ap.add_argument("--rankers", default=",".join(RANKERS), help="comma list, or 'none'")
    ap.add_argument("--predictor", action="append", default=[], metavar="LABEL=PATH",
                    help="also a predictor file, shown as LABEL (repeatable): e.g. to compare losses")
    a = ap.parse_args(argv)
    names = [] if a.rankers == "none" else [n for n in a.rankers.split(",") if n]
    bad = [p for p in a.predictor if "=" not in p]
    if bad:
        ap.error(f"--predictor takes LABEL=PATH, got {bad[0]!r}")
    predictors = dict(p.split("=", 1) for p in a.predictor)
    meta, golden = rankings.load_rankings(a.rankings)
    m = pr.load_model(a.model)
    if meta["model_id"] != m.model_id:
        raise SystemExit(f"{a.rankings} was made for {meta['model_id']}, not {m.model_id}")
    ds = open_dataset(meta.get("data", "bundled-eval"), a.limit)
    res = agreement_table(m, ds, golden, names, predictors=predictors)
    cols = ["kendall_tau", "spearman", "bottom_overlap", "kept_iou@0.6", "kept_iou@0.4"]
    print(grid_table(["ranker vs golden", "images", *cols],
                     [[n, r["images"], *(f"{r[c]:.3f}" for c in cols)] for n, r in res.items()]))
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps({"rankings": a.rankings, "golden_settings": meta["settings"],
                                        "model_id": m.model_id, "rows": res}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
