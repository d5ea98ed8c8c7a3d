"""Exports: what the screen shows, as files named after the image and the keep ratio.

A person who exports three images at two ratios ends up with files in one Downloads folder, so
every name starts with ``<image>_keep<ratio>`` and everything also comes as one zip (the first
file listed: one click downloads all). Each session has one export folder at a time, and the
app keeps at most ``MAX_EXPORT_DIRS`` of them.
"""
from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import app.engine as engine
from .curve import curve_data
from .analysis import RANKER_VALUES, Analysis, checked, class_labels, current
from .panels import heat_panel, mask_panel
from .paths import app_tmp
from .progress import Progress
from .sessions import session as get_session

MAX_EXPORT_DIRS = 64


def _export_dir(session: str | None) -> Path:
    root = app_tmp() / "exports"
    root.mkdir(parents=True, exist_ok=True)
    sess = get_session(session)
    for old in sess.exports:                       # one export folder per session at a time
        shutil.rmtree(old, ignore_errors=True)
    dirs = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in dirs[:max(0, len(dirs) - MAX_EXPORT_DIRS + 1)]:
        shutil.rmtree(old, ignore_errors=True)
    d = Path(tempfile.mkdtemp(prefix="export-", dir=root))
    sess.exports = [str(d)]
    return d


def stem(image_name: str, ratio: float) -> str:
    """``<image>_keep<ratio>``: the image's own name (safe characters only) and the ratio."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", image_name).strip("-.") or "image"
    return f"{safe[:60]}_keep{ratio:.2f}"


def _meta(a: Analysis, ratio: float) -> dict:
    return {"model": a.model.model_id, "grid": list(a.grid), "prune_layer": a.model.prune_layer,
            "image": a.image_name, "golden_mode": a.golden_mode, "golden_target": a.golden_target,
            "keep_ratio": ratio, "keep_count": a.model.keep_count(ratio),
            "convention": "order: patch ids most important first; id = row * cols + col"}


def _write_rankings(d: Path, base: str, a: Analysis, ratio: float) -> list[Path]:
    rows, cols = a.grid
    order_names = [n for n in RANKER_VALUES if n in a.orders]
    ranks = {n: engine.patch_ranks(a.orders[n]) for n in order_names}
    js, cs = d / f"{base}_rankings.json", d / f"{base}_rankings.csv"
    js.write_text(json.dumps({**_meta(a, ratio), "orders": {n: a.orders[n].tolist() for n in order_names},
                              "unavailable": a.missing}, indent=1))
    k = a.model.keep_count(ratio)
    with open(cs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["patch", "row", "col"] + [f"rank_{n}" for n in order_names]
                   + [f"kept_{n}" for n in order_names])
        for p in range(rows * cols):
            w.writerow([p, p // cols, p % cols] + [int(ranks[n][p]) + 1 for n in order_names]
                       + [int(ranks[n][p] < k) for n in order_names])
    return [js, cs]


def _write_curve(d: Path, base: str, a: Analysis, ratio: float, names: list[str],
                 progress: Progress) -> list[Path]:
    c = curve_data(a, names, progress)
    js, cs = d / f"{base}_curve.json", d / f"{base}_curve.csv"
    js.write_text(json.dumps({**_meta(a, ratio), **c}, indent=1))
    with open(cs, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["ranker", "keep_ratio", "keep_count", f"p_{c['top_class']}", "top1", "flip_ratio",
                    "min_keep_ratio"])
        for name, row in c["rankers"].items():
            for r, p, t1 in zip(c["ratios"], row["prob"], row["top1"]):
                w.writerow([name, r, a.model.keep_count(r), f"{p:.6f}", t1,
                            "" if row["flip"] is None else row["flip"], row["min_keep"]])
    return [js, cs]


def export(ratio: float, left: str, right: str, labels: Any, *, session: str | None = None,
           progress: Progress = None) -> list[str]:
    """Write the zip of everything, then the overlay PNGs, rankings (JSON, CSV) and the
    per-image curve (JSON, CSV) into the app's temporary folder; returns the file paths, the
    zip first."""
    ratio, left, right = checked(ratio, left, right)
    names = class_labels(labels)
    a = current(session)
    d = _export_dir(session)
    base = stem(a.image_name, ratio)
    files: list[Path] = []
    for name in dict.fromkeys((left, right)):
        for kind, img in (("ranking", heat_panel(a, name, ratio)), ("mask", mask_panel(a, name, ratio))):
            path = d / f"{base}_{kind}_{name.replace('+', '-')}.png"
            img.save(path)
            files.append(path)
    files += _write_rankings(d, base, a, ratio)
    files += _write_curve(d, base, a, ratio, names, progress)
    bundle = d / f"{base}.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, arcname=f"{base}/{f.name}")
    return [str(p) for p in [bundle] + files]
