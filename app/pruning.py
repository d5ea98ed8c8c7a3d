"""The pruned forward on release of the slider: top-5 of the full and both pruned models, and
what pruning saved (kept tokens, GFLOPs with each ranker's own cost, measured latency).

This is the one slow part of a keep-ratio change (a real CLIP's forward on a CPU), so the
slider's listener draws the masks first and this after; learnable tokens, when the model has
some trained for this keep ratio, are appended on the pruned side only.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

import patchrank as pr

import app.engine as engine
import app.plots as plots
from .analysis import (FAST_GOLDEN_GFLOPS, Analysis, checked, class_labels, class_probs,
                       current)
from .panels import with_rankers


def _label_dict(labels: list[str], p: np.ndarray, top: int = 5) -> dict[str, float]:
    idx = np.argsort(-p)[:top]
    return {labels[i]: float(p[i]) for i in idx}


def _pruned_emb(a: Analysis, name: str, ratio: float, tokens=None) -> torch.Tensor | None:
    k = a.model.keep_count(ratio)
    if name in a.orders:
        return engine.embed_kept(a.model, a.x, [a.orders[name][:k]], tokens)[0]
    if name in a.mergers:
        return engine.embed_merged(a.model, a.x, ratio, name, tokens)
    return None


def prune(ratio: float, left: str, right: str, labels: Any, use_tokens: bool = False, *,
          session: str | None = None) -> tuple:
    """Run the pruned forward at ``ratio`` for both rankers (with the model's learnable tokens
    appended when ``use_tokens`` and it has some): (top-5 full, top-5 left, top-5 right, cost
    markdown). Top-5 are {label: probability} dicts."""
    ratio, left, right = checked(ratio, left, right)
    names = class_labels(labels)
    a = current(session)
    m = a.model
    k = m.keep_count(ratio)
    tokens, tok_note = None, ""
    if use_tokens:
        tokens, why = engine.bundled_tokens(m)
        if tokens is not None and not tokens.covers(ratio):
            lo, hi = tokens.keep_range
            tokens, why = None, (f"they were trained for keep {lo:g}-{hi:g} (above that little is "
                                 f"pruned and they would only add noise); not applied at {ratio:g}")
            tok_note = f"  \n**Learnable tokens not used**: {why}."
        else:
            tok_note = (f"  \n**Learnable tokens** {tokens.num_visual} visual"
                        + (f" + {tokens.n_ctx} text context" if getattr(tokens, 'n_ctx', 0) else "")
                        + " appended after pruning (pruned side only)." if tokens is not None
                        else f"  \n**No learnable tokens for this model**: {why}.")
    full = class_probs(m, names, a.full_emb)[0]
    out = [_label_dict(names, full)]
    for name in (left, right):
        emb = _pruned_emb(a, name, ratio, tokens)
        out.append({} if emb is None else _label_dict(names, class_probs(m, names, emb, tokens)[0]))
    timed = next((n for n in (left, right, "golden", "random") if n in a.orders), None)
    lat_p, lat_f = engine.time_forward(m, a.x, None if timed is None else a.orders[timed][:k], tokens=tokens)
    extra = tokens.num_visual if tokens is not None else 0
    g_p, g_f = float(pr.flops(m, keep=k, extra_tokens=extra)), float(pr.flops(m))
    costs = with_rankers(a, g_p, left, right)
    top = names[int(np.argmax(full))]
    flips = []
    for name, d in zip((left, right), out[1:]):
        if d:
            p_top = next(iter(d))
            flips.append(f"{plots.display_name(name)}: top-1 **{p_top}**"
                         + (" (same as full)" if p_top == top else " (**changed**)"))
    md = (f"**Kept tokens** {k} of {a.num_patches} patches (+ CLS"
          + (f" + {extra} learnable" if extra else "") + f") from block {m.prune_layer} on.  \n"
          f"**GFLOPs** {g_p:.3f} pruned encoder vs {g_f:.3f} full ({100 * (1 - g_p / g_f):.0f}% "
          f"fewer; analytic, 1 MAC = 2 FLOPs); with the ranker's own cost: " + costs
          + ".  \n"
          f"**Latency** {lat_p:.1f} ms pruned vs {lat_f:.1f} ms full (x{lat_f / max(lat_p, 1e-6):.2f}); "
          f"this image, batch 1, median of 3 on this server's CPU." + latency_note(g_f, lat_p, lat_f)
          + "  \n"
          f"**Full model** top-1 **{top}**. " + "; ".join(flips) + tok_note)
    return (*out, md)


def latency_note(gflops_full: float, ms_pruned: float, ms_full: float) -> str:
    """Why pruning may not pay at batch 1 on a small model, said beside the numbers."""
    if gflops_full >= FAST_GOLDEN_GFLOPS and ms_pruned < ms_full:
        return ""
    return (f" *At batch 1 a {gflops_full:.2f}-GFLOP model's time is mostly fixed per-call overhead "
            "(Python, one kernel launch per layer, gathering the kept tokens), so the pruned forward "
            "can be as slow as the full one; the saved GFLOPs pay off on larger models and batches.*")
