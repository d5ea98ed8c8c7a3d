"""The paper's table, reproduced: zero-shot top-1 per method on CoOp datasets at one keep ratio.

``reproduce`` runs one sweep per dataset (each with its CoOp prompt, resumable per dataset under
``out_dir``) and lays the results out as the paper's README table (docs/paper.md): a row per
method labelled as the paper names it (``styles.paper_name``), a column per dataset, the mean
and the mean GFLOPs, the unpruned model first. Skipped methods keep their row, with dashes and
a note saying why, so a missing weight file is visible rather than silently absent.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from . import distributed
from .data.coop import DATASETS, open_coop
from .styles import paper_name
from .sweep import SweepSettings, run_sweep

#: The paper's table: its compared methods at its keep ratio, accuracy only (no timing).
REPRODUCE = SweepSettings(methods=("attention+fuse", "tome", "attention", "random", "predictor",
                                   "predictor+tokens"), ratios=(0.6,), latency_batches=())


def _rankings_for(rankings_root, info) -> Path | None:
    """``<rankings_root>/<key>`` or ``<rankings_root>/<CoOp folder>``, if it holds a ranking."""
    if rankings_root is None:
        return None
    for cand in (Path(rankings_root) / info.key, Path(rankings_root) / info.folder):
        if (cand / "meta.json").is_file():
            return cand
    return None


def reproduce(m, root: str | os.PathLike, datasets: Sequence[str], settings: SweepSettings = REPRODUCE, *,
              split: str = "test", out_dir: str | os.PathLike | None = None,
              rankings_root: str | os.PathLike | None = None, predictor=None, tokens=None) -> dict | None:
    """Sweep each CoOp dataset under ``root`` at the keep ratios of ``settings`` (plus 1.0 for
    the unpruned baseline) and return {"tables": {ratio: markdown}, "results": {dataset key:
    results}}. ``out_dir`` keeps each sweep resumable as ``<out_dir>/<key>.json``;
    ``rankings_root`` supplies golden orders (``_rankings_for``). Under torchrun (``out_dir``
    needed) each dataset's batches are split across ranks; rank 0 returns the tables, the others
    None."""
    each = replace(settings, ratios=sorted({1.0, *map(float, settings.ratios)}, reverse=True))
    results = {}
    for name in datasets:
        ds = open_coop(root, name, split)
        if settings.progress:
            n = len(ds.ids) if settings.limit is None else min(settings.limit, len(ds.ids))
            print(f"{ds.info.title}: {n} {split} images, prompt {ds.templates[0]!r}", file=sys.stderr)
        results[ds.info.key] = run_sweep(
            m, ds, each, None if out_dir is None else Path(out_dir) / f"{ds.info.key}.json",
            rankings=_rankings_for(rankings_root, ds.info), predictor=predictor, tokens=tokens)
    if distributed.rank_world()[0] != 0:
        return None                        # rank 0 holds every dataset's results
    return {"tables": {f"{r:g}": reproduce_table(results, float(r)) for r in settings.ratios},
            "results": results}


def _fmt_row(label: str, accs: list, gfs: list) -> str:
    cells = ["—" if a is None else f"{100 * a:.1f}" for a in accs]
    got = [a for a in accs if a is not None]
    avg = f"{100 * sum(got) / len(got):.1f}" if got and len(got) == len(accs) else "—"
    gf = f"{sum(gfs) / len(gfs):.2f}" if gfs else "—"
    return f"| {label} | " + " | ".join(cells) + f" | {avg} | {gf} |"


def _method_row(results: dict[str, dict], meth: str, ratio: float) -> str:
    accs, gfs = [], []
    for res in results.values():
        row = next((r for r in res["rows"] if r["method"] == meth and abs(r["ratio"] - ratio) < 1e-9), None)
        accs.append(None if row is None else row["accuracy"])
        if row is not None:
            gfs.append(row["gflops"])
    return _fmt_row(paper_name(meth), accs, gfs)


def reproduce_table(results: dict[str, dict], ratio: float) -> str:
    """Markdown table shaped like the paper's README: one row per method at keep ``ratio`` plus
    the unpruned model, one column per dataset (top-1 %), the mean, and the mean GFLOPs."""
    keys = list(results)
    titles = [DATASETS[k].title if k in DATASETS else k for k in keys]
    lines = ["| Method | " + " | ".join(titles) + " | Avg. | Avg. GFLOPs |",
             "|---|" + "---|" * (len(keys) + 2)]
    fulls = [res["meta"]["full"] for res in results.values()]
    lines.append(_fmt_row(paper_name("full"), [f["accuracy"] for f in fulls], [f["gflops"] for f in fulls]))
    methods: list[str] = []
    for res in results.values():
        methods += [x for x in res["meta"]["methods"] + list(res["meta"]["skipped"]) if x not in methods]
    notes = []
    for meth in methods:
        lines.append(_method_row(results, meth, ratio))
        why = next((res["meta"]["skipped"][meth] for res in results.values()
                    if meth in res["meta"]["skipped"]), None)
        if why:
            notes.append(f"- {paper_name(meth)}: skipped ({why})")
    any_meta = results[keys[0]]["meta"] if keys else {}
    model = any_meta.get("model", "?") + (f"/{any_meta['pretrained']}" if any_meta.get("pretrained") else "")
    head = (f"Zero-shot top-1 (%) at keep ratio {ratio:g} ({model}, pruning at "
            f"block {any_meta.get('prune_layer', '?')}; GFLOPs: image encoder, 1 MAC = 2 FLOPs, "
            "ranker included).")
    return "\n".join([head, "", *lines, *([""] + notes if notes else [])])
