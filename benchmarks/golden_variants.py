"""Which golden-ranking variant deserves the name? Accuracy, object coverage, agreement, cost.

    python benchmarks/golden_variants.py [--limit 100] [--variants all] [--time-budget 3600]

On the bundled evaluation split, every variant below searches each image down to keep 0.4 (its
order then also gives the keep-0.6 set: greedy is sequential). Reported per variant:
- zero-shot accuracy when pruning to keep 0.6 and 0.4 with its order (the paper's definition of
  golden: the ranking that best preserves performance), and the cosine of the pruned to the full
  image embedding;
- share of the object's patches kept (scene masks: coverage > 0);
- agreement with greedy ``similarity`` step 10 (the paper's released setting): Kendall tau of
  the full orders and kept-set IoU at 0.6 (``patchrank.metrics``);
- seconds, variants and GFLOPs per image (fp32, this machine; interleaved image by image).
The lazy step-1 search is also compared with plain step 1 (share of images with an identical
order, tau, IoU) since lazy re-scoring is exact only if scores never rise as patches go.
Reference rows: no pruning, and random keep sets (seed 0).

Resumable and runnable in pieces: each variant's rankings go to ``OUT/<variant>/`` through
``patchrank.store`` (append-only, settings-checked), timings to ``timing.jsonl`` beside them;
a rerun skips finished images, ``--time-budget`` stops cleanly, ``--report-only`` just reports.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import patchrank as pr  # noqa: E402
from patchrank import metrics, store  # noqa: E402
from patchrank.golden import golden_ranking, golden_settings  # noqa: E402

STOP = 0.4
RATIOS = (0.6, 0.4)
REFERENCE = "greedy-s10"
PAIRED = "oneshot"      # rows run on fewer images also report this variant on the same images
VARIANTS = {
    "greedy-s10": {"step": 10},
    "greedy-s5": {"step": 5},
    "greedy-s2": {"step": 2},
    "greedy-s1": {"step": 1},
    "lazy-s1": {"step": 1, "lazy": True},
    "oneshot": {"mode": "oneshot"},
    "oneshot-b2": {"mode": "oneshot", "block": 2},
    "greedy-s10-label": {"step": 10, "score": "label"},
    "greedy-s10-max": {"step": 10, "score": "max"},
    "c2f-s10": {"mode": "c2f", "step": 10},
}
# cheapest first, so a short --time-budget still covers many variants per image
RUN_ORDER = ["oneshot-b2", "oneshot", "greedy-s10", "greedy-s10-label", "greedy-s10-max",
             "c2f-s10", "greedy-s5", "lazy-s1", "greedy-s2", "greedy-s1"]


def _append_json(path: Path, rec: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _timings(path: Path) -> dict:
    out = {}
    if path.exists():
        for line in path.read_text().split("\n"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue                      # empty or a partial last line
            out[rec["id"]] = rec
    return out


def compute(m, ds, out: Path, names: list[str], n: int, budget_s: float | None) -> bool:
    """Rank images 0..n-1 with each variant, image by image; False if the budget ran out."""
    t_start = time.perf_counter()
    writers, done = {}, {}
    for name in names:
        kw = dict(VARIANTS[name], stop_at=STOP)
        settings = golden_settings(m, **kw)
        d = out / name
        store.prepare(d, m.model_id, settings, grid=m.grid, data="bundled-eval")
        done[name] = store.done_ids(d)
        writers[name] = store.ShardWriter(d)
    try:
        for i in range(n):
            iid = ds.ids[i]
            todo = [nm for nm in names if iid not in done[nm]]
            if not todo:
                continue
            x = m.preprocess(ds.images[i]).unsqueeze(0)
            for name in todo:
                if budget_s is not None and time.perf_counter() - t_start > budget_s:
                    return False
                kw = dict(VARIANTS[name], stop_at=STOP)
                t = time.perf_counter()
                with torch.inference_mode():
                    r = golden_ranking(m, x, labels=[int(ds.labels[i])], **kw)
                sec = time.perf_counter() - t
                writers[name].append(iid, r.order[0], r.removed_at[0])
                _append_json(out / name / "timing.jsonl",
                             {"id": iid, "seconds": sec, "variants": int(r.variants[0]),
                              "gflops": float(r.gflops[0])})
            print(f"image {i + 1}/{n} done ({time.perf_counter() - t_start:.0f} s)", file=sys.stderr)
    finally:
        for w in writers.values():
            w.close()
    return True


@torch.inference_mode()
def _evaluate_keep(m, x, labels, masks, keep_sets, clf, full_emb) -> dict:
    """Accuracy, cosine to full, and object share for keep sets {ratio: [B,K]}."""
    out = {}
    obj = masks > 0
    for ratio, keep in keep_sets.items():
        emb = torch.cat([m.encode_image(x[j:j + 64], keep=keep[j:j + 64]) for j in range(0, len(x), 64)])
        pred = clf.predict(emb)
        kept = torch.zeros_like(obj).scatter_(1, keep, True)
        share = (kept & obj).sum(1).float() / obj.sum(1).clamp(min=1).float()
        out[f"acc@{ratio}"] = float((pred == labels).float().mean())
        out[f"cos@{ratio}"] = float(F.cosine_similarity(emb, full_emb).mean())
        out[f"object_kept@{ratio}"] = float(share[obj.any(1)].mean())
    return out


def report(m, ds, out: Path, names: list[str], n: int) -> dict:
    clf = m.zero_shot(ds.classnames)
    ids = ds.ids[:n]
    x = torch.stack([m.preprocess(im) for im in ds.images[:n]])
    labels = torch.as_tensor(ds.labels[:n])
    masks = torch.as_tensor(ds.masks[:n])
    with torch.inference_mode():
        full_emb = torch.cat([m.encode_image(x[j:j + 64]) for j in range(0, n, 64)])
    rows = {"no pruning": {"n": n, "acc@1.0": float((clf.predict(full_emb) == labels).float().mean())}}
    g = torch.Generator().manual_seed(0)
    rand = torch.stack([torch.randperm(m.num_patches, generator=g) for _ in range(n)])
    rows["random"] = {"n": n, **_evaluate_keep(
        m, x, labels, masks, {r: rand[:, :m.keep_count(r)] for r in RATIOS}, clf, full_emb)}
    orders = {}
    for name in names:
        d = out / name
        if not (d / "meta.json").exists() or store.read_meta(d)["model_id"] != m.model_id:
            continue
        _, got = store.load_rankings(d)
        orders[name] = got
    ref = orders.get(REFERENCE, {})
    for name, got in orders.items():
        d = out / name
        sel = [i for i, iid in enumerate(ids) if iid in got]
        if not sel:
            continue
        o = torch.stack([got[ids[i]] for i in sel])
        idx = torch.tensor(sel)
        row = {"n": len(sel), **_evaluate_keep(
            m, x[idx], labels[idx], masks[idx], {r: o[:, :m.keep_count(r)] for r in RATIOS}, clf,
            full_emb[idx])}
        both = [i for i in sel if ids[i] in ref]
        if both and name != REFERENCE:
            a = torch.stack([got[ids[i]] for i in both])
            b = torch.stack([ref[ids[i]] for i in both])
            row["tau_vs_ref"] = float(metrics.kendall_tau(a, b).mean())
            row["iou@0.6_vs_ref"] = float(metrics.kept_iou(a, b, 0.6).mean())
        base = orders.get(PAIRED, {})
        pair = [i for i in sel if ids[i] in base]
        if pair and name != PAIRED and len(pair) < n:
            # rows on fewer images: the paired default on exactly those images, for a fair read
            pidx = torch.tensor(pair)
            po = torch.stack([base[ids[i]] for i in pair])
            pe = _evaluate_keep(m, x[pidx], labels[pidx], masks[pidx],
                                {r: po[:, :m.keep_count(r)] for r in RATIOS}, clf, full_emb[pidx])
            row[f"{PAIRED}_same_images"] = {k: pe[k] for k in ("acc@0.6", "acc@0.4", "cos@0.4",
                                                               "object_kept@0.4")}
        t = _timings(d / "timing.jsonl")
        ts = [t[ids[i]] for i in sel if ids[i] in t]
        if ts:
            row["s_per_image"] = float(np.mean([v["seconds"] for v in ts]))
            row["variants_per_image"] = float(np.mean([v["variants"] for v in ts]))
            row["gflops_per_image"] = float(np.mean([v["gflops"] for v in ts]))
        rows[name] = row
    lazy, plain = orders.get("lazy-s1", {}), orders.get("greedy-s1", {})
    common = [iid for iid in ids if iid in lazy and iid in plain]
    lazy_vs_plain = None
    if common:
        a = torch.stack([lazy[i] for i in common])
        b = torch.stack([plain[i] for i in common])
        lazy_vs_plain = {"n": len(common), "identical_order": float((a == b).all(1).float().mean()),
                         "tau": float(metrics.kendall_tau(a, b).mean()),
                         "iou@0.6": float(metrics.kept_iou(a, b, 0.6).mean()),
                         "iou@0.4": float(metrics.kept_iou(a, b, 0.4).mean())}
    return {"model_id": m.model_id, "stop_at": STOP, "reference": REFERENCE, "rows": rows,
            "lazy_vs_plain_step1": lazy_vs_plain}


def markdown(res: dict) -> str:
    cols = ["n", "acc@0.6", "acc@0.4", "cos@0.6", "cos@0.4", "object_kept@0.6", "object_kept@0.4",
            "tau_vs_ref", "iou@0.6_vs_ref", "s_per_image", "variants_per_image"]
    lines = ["| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in res["rows"].items():
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("" if v is None else (str(v) if isinstance(v, int) else f"{v:.3f}"))
        if "acc@1.0" in row:
            cells[1] = f"(full {row['acc@1.0']:.3f})"
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        same = row.get(f"{PAIRED}_same_images")
        if same:
            lines.append(f"| ↳ {PAIRED}, same {row['n']} images | | " + " | ".join(
                f"{same[c]:.3f}" if c in same else "" for c in cols[1:]) + " |")
    if res.get("lazy_vs_plain_step1"):
        lines.append("\nlazy step 1 vs plain step 1: " + json.dumps(res["lazy_vs_plain_step1"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=100, help="first N evaluation scenes")
    ap.add_argument("--variants", default="all", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/golden_variants/<model id>")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds; stop cleanly after")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="default: OUT/report.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    names = RUN_ORDER if a.variants == "all" else a.variants.split(",")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    m = pr.load_model()
    ds = pr.bundled_eval(a.limit)
    n = len(ds)
    out = Path(a.out or Path("benchmarks/results/golden_variants") / m.model_id.replace("/", "-"))
    finished = True
    if not a.report_only:
        finished = compute(m, ds, out, names, n, a.time_budget)
    res = report(m, ds, out, list(VARIANTS), n)
    res["finished"] = finished
    print(markdown(res))
    path = Path(a.json) if a.json else out / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
