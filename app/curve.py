"""The per-image curve: the full model's top-class probability at every keep ratio, per ranker.

Two readings come from it: where each ranker's prediction first *changes* as patches go (the
flip), and the smallest keep ratio that still *keeps* the full model's top-1 at that ratio and
every ratio above it on the curve's grid (``min_keep``, also written on the slider). Pruned
embeddings are the engine's (``app.engine``); they are computed once per image and ranker.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

import patchrank as pr

import app.engine as engine
import app.plots as plots
from .analysis import RANKER_VALUES, Analysis, class_labels, class_probs, current
from .progress import Progress, reporter

#: A pruned prediction counts as changed only if another class beats the full top class by this.
FLIP_MARGIN = 1e-4


def curve_ratios(m) -> list[float]:
    """The keep ratios of the curve: every 0.05 on small models, 0.1 on large ones (CPU time)."""
    step = 0.05 if float(pr.flops(m)) < 2.0 else 0.1
    n = int(round(1 / step))
    return [round(step * i, 2) for i in range(1, n + 1)]


def _curve_embeddings(a: Analysis, progress: Progress = None) -> dict:
    """Pruned embeddings of this image at every curve ratio, per ranker (computed once each)."""
    with a.lock:
        have = a.curve_embs.setdefault("emb", {})
        ratios = a.curve_embs.setdefault("ratios", curve_ratios(a.model))
        ordered = [n for n in RANKER_VALUES if n in a.orders and n not in have]
        mergers = [n for n in a.mergers if n not in have]
        if not ordered and not mergers:
            return a.curve_embs
        report = reporter(progress)
        embs = {n: [] for n in ordered + mergers}
        for i, r in enumerate(ratios):
            report(i / len(ratios), f"keep ratio {r:.2f}")
            k = a.model.keep_count(r)
            if ordered:
                e = engine.embed_kept(a.model, a.x, [a.orders[n][:k] for n in ordered])
                for n, row in zip(ordered, e):
                    embs[n].append(row)
            for n in mergers:
                embs[n].append(engine.embed_merged(a.model, a.x, r, n))
        report(1.0, "done")
        have.update({n: torch.stack(v) for n, v in embs.items()})
        return a.curve_embs


def _flip_and_min_keep(ratios: list[float], p: np.ndarray, top: int) -> tuple[float | None, float]:
    """(highest ratio below 1 whose top class clearly differs from the full one, or None;
    smallest ratio from which on every ratio of the grid keeps the full top-1)."""
    flip, min_keep = None, 1.0
    for r, row in sorted(zip(ratios, p), key=lambda t: -t[0]):
        if r < 1.0 and row.max() - row[top] > FLIP_MARGIN:
            flip = r
            break
        min_keep = r
    return flip, min_keep


def curve_data(a: Analysis, labels: list[str], progress: Progress = None) -> dict:
    """Top-class probability vs keep ratio per ranker, where each prediction flips and the
    smallest keep ratio that keeps the top-1."""
    c = _curve_embeddings(a, progress)
    full = class_probs(a.model, labels, a.full_emb)[0]
    top = int(np.argmax(full))
    out = {"top_class": labels[top], "full_prob": float(full[top]), "ratios": c["ratios"],
           "model": a.model.model_id, "prune_layer": a.model.prune_layer, "image": a.image_name,
           "rankers": {}}
    for name in [n for n in RANKER_VALUES if n in c["emb"]]:
        p = class_probs(a.model, labels, c["emb"][name])
        flip, min_keep = _flip_and_min_keep(c["ratios"], p, top)
        out["rankers"][name] = {"prob": [float(v) for v in p[:, top]],
                                "top1": [labels[i] for i in p.argmax(1)], "flip": flip,
                                "min_keep": min_keep}
    return out


def curve(labels: Any, *, session: str | None = None, progress: Progress = None) -> tuple:
    """(plotly figure, markdown) of the full model's top-class probability vs keep ratio."""
    fig, md, _ = curve_full(labels, session=session, progress=progress)
    return fig, md


def curve_full(labels: Any, *, session: str | None = None, progress: Progress = None) -> tuple:
    """As ``curve``, plus the curve's data (for the slider's note on the smallest keep ratio)."""
    names = class_labels(labels)
    a = current(session)
    d = curve_data(a, names, progress)
    parts = [f"{plots.display_name(n)}: " + (f"changes at {row['flip']:.2f}, " if row["flip"] is not None
                                             else "never changes, ")
             + f"kept down to {row['min_keep']:.2f}" for n, row in d["rankers"].items()]
    step = d["ratios"][1] - d["ratios"][0] if len(d["ratios"]) > 1 else 0
    md = (f"Full model: **{d['top_class']}** (p={d['full_prob']:.3f}). Pruned prediction, per ranker "
          f"(keep ratios every {step:.2f}; ▲ on the curve = smallest keep ratio that keeps the "
          "top-1): " + "; ".join(parts) + ".")
    return plots.curve_figure(d), md, d


def min_keep_note(d: dict | None, left: str, right: str) -> str:
    """The slider's line: the smallest keep ratio that keeps the top-1 for the two sides."""
    if not d:
        return "drag, use the arrow keys or type a ratio"
    got = [f"{'golden' if n == 'golden' else plots.display_name(n)} {d['rankers'][n]['min_keep']:.2f}"
           for n in dict.fromkeys((left, right)) if n in d["rankers"]]
    if not got:
        return "drag, use the arrow keys or type a ratio"
    return (f"▲ smallest keep ratio that keeps the top-1 (**{d['top_class']}**): " + ", ".join(got)
            + " (left, right; ▲ on the curve below for every ranker)")
