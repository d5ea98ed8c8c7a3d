"""Which golden-ranking variant deserves the name? Accuracy, object coverage, agreement, cost.

    python benchmarks/golden_variants.py --data bundled-val:200 \
        --variants oneshot,oneshot-b2,greedy-s10,c2f-s10,greedy-s5

On a labelled bundled split with object masks (``bundled-val:N``, scenes nothing trains on: the
split the default is chosen on; or ``bundled-eval``), every variant searches each image down to
keep 0.4 (its order then also gives the keep-0.6 set: greedy is sequential). Reported per variant,
each with a 95 % interval (Wilson for accuracy, normal for means):
- zero-shot accuracy when pruning to keep 0.6 and 0.4 with its order (the paper's definition of
  golden: the ranking that best preserves performance), and the cosine of the pruned to the full
  image embedding;
- share of the object's patches kept (scene masks: coverage > 0);
- the paired difference to the default one-shot search on the same images (accuracy, cosine,
  object share at keep 0.4), which is what a choice between them rests on;
- agreement with greedy ``similarity`` step 10 (the paper's released setting): Kendall tau of
  the full orders and kept-set IoU at 0.6 (``patchrank.metrics``);
- seconds, variants and GFLOPs per image (fp32, this machine; interleaved image by image).
The lazy step-1 search is also compared with plain step 1 (share of images with an identical
order, tau, IoU) since lazy re-scoring is exact only if scores never rise as patches go.
Reference rows: no pruning, and random keep sets (seed 0).

Resumable and runnable in pieces: each variant's rankings go to ``OUT/<variant>/`` through
``patchrank.rankings`` (append-only, settings-checked), timings to ``timing.jsonl`` beside them;
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
from patchrank import metrics, rankings  # noqa: E402
from patchrank.data.datasets import open_dataset  # noqa: E402
from patchrank.golden import golden_ranking, golden_settings  # noqa: E402
from patchrank.stats import wilson_interval  # noqa: E402

STOP = 0.4
RATIOS = (0.6, 0.4)
REFERENCE = "greedy-s10"
PAIRED = "oneshot"      # rows run on fewer images also report this variant on the same images
VARIANTS = {
    "greedy-s10": {"mode": "greedy", "step": 10},
    "greedy-s5": {"mode": "greedy", "step": 5},
    "greedy-s2": {"mode": "greedy", "step": 2},
    "greedy-s1": {"mode": "greedy", "step": 1},
    "lazy-s1": {"mode": "greedy", "step": 1, "lazy": True},
    "oneshot": {"mode": "oneshot"},
    "oneshot-b2": {"mode": "oneshot", "block": 2},
    "greedy-s10-label": {"mode": "greedy", "step": 10, "score": "label"},
    "greedy-s10-max": {"mode": "greedy", "step": 10, "score": "max"},
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


def compute(m, ds, out: Path, names: list[str], n: int, budget_s: float | None,
            shard: tuple[int, int] = (0, 1)) -> bool:
    """Rank images 0..n-1 with each variant, image by image; False if the budget ran out.
    ``shard`` (i, N): only images with index % N == i, written to shard file i, so N processes of
    one thread each can share a machine (faster than one process on N threads)."""
    t_start = time.perf_counter()
    writers, done = {}, {}
    for name in names:
        kw = dict(VARIANTS[name], stop_at=STOP)
        settings = golden_settings(m, **kw)
        d = out / name
        rankings.prepare(d, m.model_id, settings, grid=m.grid, data=ds.spec)
        done[name] = rankings.done_ids(d)
        writers[name] = rankings.ShardWriter(d, rank=shard[0])
    try:
        for i in range(shard[0], n, shard[1]):
            iid = ds.ids[i]
            todo = [nm for nm in names if iid not in done[nm]]
            if not todo:
                continue
            x = m.preprocess(ds.image(i)).unsqueeze(0)
            for name in todo:
                if budget_s is not None and time.perf_counter() - t_start > budget_s:
                    return False
                kw = dict(VARIANTS[name], stop_at=STOP)
                t = time.perf_counter()
                with torch.inference_mode():
                    r = golden_ranking(m, x, labels=[int(ds.label(i))], **kw)
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
def _per_image(m, x, labels, masks, keep_sets, clf, full_emb) -> dict[str, np.ndarray]:
    """Per image, for keep sets {ratio: [B,K]}: correct (0/1), cosine to full, object share."""
    out = {}
    obj = masks > 0
    for ratio, keep in keep_sets.items():
        emb = torch.cat([m.encode_image(x[j:j + 64], keep=keep[j:j + 64]) for j in range(0, len(x), 64)])
        kept = torch.zeros_like(obj).scatter_(1, keep, True)
        share = (kept & obj).sum(1).float() / obj.sum(1).clamp(min=1).float()
        out[f"acc@{ratio}"] = (clf.predict(emb) == labels).double().numpy()
        out[f"cos@{ratio}"] = F.cosine_similarity(emb, full_emb).double().numpy()
        out[f"object_kept@{ratio}"] = np.where(obj.any(1).numpy(), share.double().numpy(), np.nan)
    return out


def _interval(values: np.ndarray, binary: bool = False) -> list[float]:
    """[mean, low, high]: Wilson 95 % for 0/1 values, else mean +- 1.96 standard errors."""
    v = values[~np.isnan(values)]
    if binary:
        lo, hi = wilson_interval(int(v.sum()), len(v))
        return [float(v.mean()), lo, hi]
    half = 1.959963984540054 * float(v.std(ddof=1)) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
    return [float(v.mean()), float(v.mean()) - half, float(v.mean()) + half]


def _summary(per: dict[str, np.ndarray]) -> dict:
    return {k: _interval(v, binary=k.startswith("acc@")) for k, v in per.items()}


def _load_orders(m, out: Path, names: list[str]) -> dict[str, dict]:
    orders = {}
    for name in names:
        d = out / name
        if (d / "meta.json").exists() and rankings.read_meta(d)["model_id"] == m.model_id:
            orders[name] = rankings.load_rankings(d)[1]
    return orders


def _cost(d: Path, ids: list[str]) -> dict:
    t = _timings(d / "timing.jsonl")
    ts = [t[i] for i in ids if i in t]
    if not ts:
        return {}
    return {"s_per_image": float(np.mean([v["seconds"] for v in ts])),
            "variants_per_image": float(np.mean([v["variants"] for v in ts])),
            "gflops_per_image": float(np.mean([v["gflops"] for v in ts]))}


def report(m, ds, out: Path, names: list[str], n: int) -> dict:
    clf = m.zero_shot(ds.classnames)
    ids = ds.ids[:n]
    x = torch.stack([m.preprocess(ds.image(i)) for i in range(n)])
    labels = torch.as_tensor(ds.labels[:n])
    masks = torch.as_tensor(ds.masks[:n])
    with torch.inference_mode():
        full_emb = torch.cat([m.encode_image(x[j:j + 64]) for j in range(0, n, 64)])
    full_ok = (clf.predict(full_emb) == labels).double().numpy()
    rows = {"no pruning": {"n": n, "acc@1.0": _interval(full_ok, binary=True)}}
    g = torch.Generator().manual_seed(0)
    rand = torch.stack([torch.randperm(m.num_patches, generator=g) for _ in range(n)])
    rows["random"] = {"n": n, **_summary(_per_image(
        m, x, labels, masks, {r: rand[:, :m.keep_count(r)] for r in RATIOS}, clf, full_emb))}
    orders = _load_orders(m, out, names)
    ref, base = orders.get(REFERENCE, {}), orders.get(PAIRED, {})
    per_variant = {}
    for name, got in orders.items():
        sel = [i for i, iid in enumerate(ids) if iid in got]
        if not sel:
            continue
        o = torch.stack([got[ids[i]] for i in sel])
        idx = torch.tensor(sel)
        per = per_variant[name] = _per_image(m, x[idx], labels[idx], masks[idx],
                                             {r: o[:, :m.keep_count(r)] for r in RATIOS}, clf, full_emb[idx])
        row = {"n": len(sel), **_summary(per), **_cost(out / name, [ids[i] for i in sel])}
        both = [i for i in sel if ids[i] in ref]
        if both and name != REFERENCE:
            a = torch.stack([got[ids[i]] for i in both])
            b = torch.stack([ref[ids[i]] for i in both])
            row["tau_vs_ref"] = float(metrics.kendall_tau(a, b).mean())
            row["iou@0.6_vs_ref"] = float(metrics.kept_iou(a, b, 0.6).mean())
        rows[name] = row
    if PAIRED in per_variant:
        paired_ids = {ids[i] for i in range(n) if ids[i] in base}
        for name, per in per_variant.items():
            mine = [ids[i] for i in range(n) if ids[i] in orders[name]]
            if name == PAIRED or not set(mine) <= paired_ids:
                continue
            pos = {iid: j for j, iid in enumerate(i for i in ids if i in base)}
            take = np.array([pos[i] for i in mine])
            rows[name][f"minus_{PAIRED}"] = {
                k: _interval(per[k] - per_variant[PAIRED][k][take])
                for k in ("acc@0.6", "acc@0.4", "cos@0.4", "object_kept@0.4")}
    return {"model_id": m.model_id, "data": ds.spec, "stop_at": STOP, "reference": REFERENCE,
            "paired_with": PAIRED, "rows": rows, "lazy_vs_plain_step1": _lazy_vs_plain(orders, ids)}


def _lazy_vs_plain(orders: dict, ids: list[str]) -> dict | None:
    lazy, plain = orders.get("lazy-s1", {}), orders.get("greedy-s1", {})
    common = [iid for iid in ids if iid in lazy and iid in plain]
    if not common:
        return None
    a = torch.stack([lazy[i] for i in common])
    b = torch.stack([plain[i] for i in common])
    return {"n": len(common), "identical_order": float((a == b).all(1).float().mean()),
            "tau": float(metrics.kendall_tau(a, b).mean()),
            "iou@0.6": float(metrics.kept_iou(a, b, 0.6).mean()),
            "iou@0.4": float(metrics.kept_iou(a, b, 0.4).mean())}


def _ci(v, pct: bool = True) -> str:
    if v is None:
        return ""
    f = 100 if pct else 1
    d = 1 if pct else 3
    return f"{f * v[0]:.{d}f} [{f * v[1]:.{d}f}, {f * v[2]:.{d}f}]"


def markdown(res: dict) -> str:
    """The README's table: % with 95 % intervals, then paired differences to the default."""
    head = ["variant", "n", "top-1 @0.6", "top-1 @0.4", "cosine to full @0.4",
            "object patches kept @0.4", "tau vs greedy s10", "s / image", "GFLOPs / image"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for name, row in res["rows"].items():
        if "acc@1.0" in row:
            lines.append(f"| {name} | {row['n']} | {_ci(row['acc@1.0'])} (unpruned) | | | | | | |")
            continue
        cells = [name, str(row["n"]), _ci(row.get("acc@0.6")), _ci(row.get("acc@0.4")),
                 _ci(row.get("cos@0.4"), pct=False), _ci(row.get("object_kept@0.4")),
                 "" if row.get("tau_vs_ref") is None else f"{row['tau_vs_ref']:.3f}",
                 "" if row.get("s_per_image") is None else f"{row['s_per_image']:.2f}",
                 "" if row.get("gflops_per_image") is None else f"{row['gflops_per_image']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    diffs = [(n, r[f"minus_{res['paired_with']}"]) for n, r in res["rows"].items()
             if f"minus_{res['paired_with']}" in r]
    if diffs:
        lines += ["", f"Paired difference to {res['paired_with']} on the same images (points, 95 %):", "",
                  "| variant | top-1 @0.6 | top-1 @0.4 | cosine @0.4 (x100) | object kept @0.4 |",
                  "|---|---|---|---|---|"]
        for name, d in diffs:
            lines.append(f"| {name} | " + " | ".join(_ci(d[k]) for k in
                         ("acc@0.6", "acc@0.4", "cos@0.4", "object_kept@0.4")) + " |")
    if res.get("lazy_vs_plain_step1"):
        lines.append("\nlazy step 1 vs plain step 1: " + json.dumps(res["lazy_vs_plain_step1"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="bundled-val:200",
                    help="a labelled bundled split with masks: bundled-val:N (default) or bundled-eval")
    ap.add_argument("--limit", type=int, default=None, help="first N scenes of --data")
    ap.add_argument("--variants", default="all", help=f"comma list of {', '.join(VARIANTS)}")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/golden_variants/<model id>")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds; stop cleanly after")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--shard", default="0/1", help="I/N: this process ranks images i %% N == I "
                    "(run N processes, then --report-only)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="default: OUT/report.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    names = RUN_ORDER if a.variants == "all" else a.variants.split(",")
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    m = pr.load_model()
    ds = open_dataset(a.data, a.limit)
    if ds.masks is None or ds.labels is None:
        ap.error(f"--data {a.data}: needs labels and object masks (a bundled split)")
    n = len(ds) if a.limit is None else min(a.limit, len(ds))
    split = a.data.split(":")[0]
    out = Path(a.out or Path("benchmarks/results/golden_variants") / split / m.model_id.replace("/", "-"))
    finished = True
    shard = tuple(int(v) for v in a.shard.split("/"))
    if not a.report_only:
        finished = compute(m, ds, out, names, n, a.time_budget, shard)
        if shard[1] > 1:
            return 0 if finished else 3
    res = report(m, ds, out, list(VARIANTS), n)
    res["finished"] = finished
    print(markdown(res))
    path = Path(a.json) if a.json else out / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
