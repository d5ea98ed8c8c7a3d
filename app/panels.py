"""What the Explore tab draws from an analysis: both sides' rankings and keep masks, the
agreement of the two sides, a patch's ranks and the status line.

No model runs here except ToMe's merge groups (one merge per kept count, cached on the
analysis), so everything the keep-ratio slider redraws is fast; the pruned forward for the
top-5 is ``app.pruning``.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

import patchrank as pr
from patchrank.errors import PatchRankError

import app.engine as engine
import app.plots as plots
import app.render as render
import app.scene_note as scene_note
from .analysis import (RANKER_VALUES, Analysis, analyze, checked, current, ensure_golden,
                       golden_pending)
from .inputs import InputError, check_ratio
from .messages import TRAIN_HINT
from .progress import Progress


def golden_title(a: Analysis) -> str:
    """What the golden search scored, for panel titles: "" when label-free."""
    kw = a.golden_kwargs
    if not kw:
        return ""
    if kw.get("score") == "max":
        return "for the predicted class"
    return f"for '{kw['classnames'][kw['labels'][0]]}'"


def heat_panel(a: Analysis, name: str, ratio: float, opacity: float = render.HEAT_ALPHA):
    """One side's ranking as a heatmap (or merge groups, or a placeholder saying why not)."""
    title = plots.display_name(name)
    title += "" if title.endswith("ranking") else " ranking"
    if name in a.orders:
        if name == "golden":
            title = f"golden {golden_title(a) or 'ranking'} ({a.golden_mode}, block {a.model.prune_layer})"
        return render.heatmap(a.view, a.orders[name], a.grid, title, alpha=opacity)
    if name in a.merger_orders:
        return render.heatmap(a.view, a.merger_orders[name], a.grid,
                              f"{title}: CLS attention at block {a.model.prune_layer}", alpha=opacity)
    if name in a.mergers:
        return _groups_panel(a, name, ratio)
    if name == "golden" and golden_pending(a):
        return render.placeholder(a.view, "Computing the golden ranking "
                                  f"({engine.GOLDEN_MODES[a.golden_mode]})...")
    return render.placeholder(a.view, _why_missing(a, name))


def _groups_panel(a: Analysis, name: str, ratio: float):
    if name != "tome" or a.prefix is None:
        return render.placeholder(a.view, f"{plots.display_name(name)} merges tokens: it has no "
                                  "per-patch order or groups to draw. Its accuracy is in the curve.")
    k = a.model.keep_count(ratio)
    groups = a.groups.get(k)
    if groups is None:
        try:
            groups = engine.tome_groups(a.model, a.prefix, k)
        except (PatchRankError, engine.EngineMissing) as e:
            return render.placeholder(a.view, f"{plots.display_name(name)}: {e}")
        if len(a.groups) > 64:
            a.groups.clear()
        a.groups[k] = groups
    return render.groups_overlay(a.view, groups, a.grid,
                                 f"{plots.display_name(name)} groups at keep {ratio:.2f}")


def _why_missing(a: Analysis, name: str) -> str:
    why = a.missing.get(name, "not available for this model")
    if name == "predictor":
        return f"No predictor for this model: {why}." + ("" if "train-predictor" in why else f" {TRAIN_HINT}")
    return f"{plots.display_name(name)}: {why}"


def mask_panel(a: Analysis, name: str, ratio: float):
    """One side's kept / pruned patches at ``ratio`` (or merge groups, or why not)."""
    k = a.model.keep_count(ratio)
    if name in a.orders:
        return render.mask_overlay(a.view, render.keep_mask(a.orders[name], k), a.grid,
                                   f"{plots.display_name(name)} at keep ratio {ratio:.2f}", a.mask_bases)
    if name in a.merger_orders:               # EViT: k-1 patches kept, the rest fused into one token
        keep = render.keep_mask(a.merger_orders[name], max(1, k - 1))
        return render.mask_overlay(a.view, keep, a.grid, f"{plots.display_name(name)} keep {ratio:.2f}: "
                                   "dimmed = fused into 1 token", a.mask_bases)
    if name in a.mergers:
        return _groups_panel(a, name, ratio)
    if name == "golden" and golden_pending(a):
        return render.placeholder(a.view, "Computing the golden ranking...")
    return render.placeholder(a.view, _why_missing(a, name))


def with_rankers(a: Analysis, encoder_gflops: float, left: str, right: str) -> str:
    """"golden 41.1 (its search), predictor 0.284": the pruned encoder's GFLOPs plus what each
    side's ranker spends choosing (equal cost means all cost; ``engine.ranker_gflops``)."""
    costs = []
    for name in dict.fromkeys((left, right)):
        g = a.ranker_gflops.get(name)
        costs.append(f"{plots.display_name(name)} "
                     f"{'unknown' if g is None else format(encoder_gflops + g, '.3g')}"
                     + (" (its search)" if name == "golden" else ""))
    return ", ".join(costs)


def agreement_md(a: Analysis, left: str, right: str, ratio: float) -> str:
    """Kept count and GFLOPs at ``ratio``, and how far the two sides agree (Kendall tau, IoU)."""
    k = a.model.keep_count(ratio)
    enc = float(pr.flops(a.model, keep=k))
    head = (f"**Keep ratio {ratio:.2f}**: {k} of {a.num_patches} patches kept from block "
            f"{a.model.prune_layer} on; GFLOPs {enc:.3f} of {float(pr.flops(a.model)):.3f} for the "
            f"encoder (1 MAC = 2 FLOPs), with each side's ranker: "
            f"{with_rankers(a, enc, left, right)}.")
    orders = {**a.merger_orders, **a.orders}
    if "golden" in (left, right) and golden_pending(a):
        return head + "  \nAgreement: computing the golden ranking; it follows in a moment."
    if left not in orders or right not in orders:
        return head + "  \nAgreement needs two rankers with a patch order (ToMe merges tokens instead)."
    if left == right:
        return head + "  \nBoth sides show the same ranker."
    tau = a.taus.get((left, right))
    if tau is None:
        tau = a.taus[(left, right)] = engine.kendall_tau(orders[left], orders[right])
    iou = engine.kept_iou(orders[left], orders[right], ratio)
    return (head + f"  \n**{plots.display_name(left)} vs {plots.display_name(right)}**: "
            f"Kendall tau {tau:+.3f} over the full order; kept-set IoU {iou:.3f} at this ratio.  \n"
            "*Kendall tau: +1 = the same order of all patches, 0 = unrelated, -1 = reversed. "
            "Kept-set IoU: patches both keep / patches either keeps (1 = the same kept set).*")



def views(ratio: float, left: str, right: str, *, session: str | None = None) -> tuple:
    """All four panels + agreement: (heat_left, heat_right, mask_left, mask_right, markdown)."""
    ratio, left, right = checked(ratio, left, right)
    a = current(session)
    return (heat_panel(a, left, ratio), heat_panel(a, right, ratio), mask_panel(a, left, ratio),
            mask_panel(a, right, ratio), agreement_md(a, left, right, ratio))


def threshold(ratio: float, left: str, right: str, *, session: str | None = None) -> tuple:
    """The slider's fast path: re-threshold cached orders, no model run.
    Returns (mask_left, mask_right, agreement markdown)."""
    ratio, left, right = checked(ratio, left, right)
    a = current(session)
    return mask_panel(a, left, ratio), mask_panel(a, right, ratio), agreement_md(a, left, right, ratio)


def status_md(a: Analysis) -> str:
    """The status line: model, timings, input notes, settings and what is not available."""
    m = a.model
    lines = [f"**Model** {engine.describe(m)}."]
    secs = ", ".join(f"{k} {v * 1e3:.0f} ms" if v < 1 else f"{k} {v:.1f} s"
                     for k, v in a.seconds.items())
    lines.append(f"**Analysed** `{a.image_name}` ({secs})."
                 + (" Golden ranking in progress..." if golden_pending(a) else ""))
    if a.notes:
        lines.append("**Input** " + "; ".join(a.notes) + ".")
    lines += scene_note.status_lines(a)           # a photo on the bundled model: say what it knows
    if a.golden_kwargs or m.prune_layer != engine.REGISTRY.get(a.model_key).prune_layer:
        lines.append(f"**Settings** pruned at block {m.prune_layer}; golden ranking "
                     f"{golden_title(a) or 'label-free'}.")
    if "predictor" in a.missing:
        why = a.missing["predictor"]
        lines.append(f"**No predictor for this model**: {why}."
                     + ("" if "train-predictor" in why else f" {TRAIN_HINT}")
                     + " Until then, compare the golden ranking with the training-free rankers.")
    elif a.predictor_source and a.predictor_source != "bundled":
        src = a.predictor_source
        lines.append(f"**Predictor** {src}." if src.startswith("listed ") else f"**Predictor** uploaded file `{src}`.")
    other = {k: v for k, v in a.missing.items() if k != "predictor"}
    if other:
        lines.append("**Not available**: " + "; ".join(f"{plots.display_name(k)}: {v}"
                                                       for k, v in other.items()) + ".")
    return "  \n".join(lines)


def analyze_views(image: Any, golden_mode: str, ratio: float, left: str, right: str, *,
                  session: str | None = None, progress: Progress = None, golden: bool = True) -> tuple:
    """Analyse then draw: (heat_left, heat_right, mask_left, mask_right, agreement md, status md)."""
    ratio, left, right = checked(ratio, left, right)
    a = analyze(image, golden_mode, session=session, progress=progress, golden=golden)
    return (*views(ratio, left, right, session=session), status_md(a))


def golden_views(ratio: float, left: str, right: str, *, session: str | None = None,
                 progress: Progress = None) -> tuple:
    """Add the golden ranking to the current analysis, then redraw (as ``analyze_views``)."""
    ratio, left, right = checked(ratio, left, right)
    a = current(session)
    ensure_golden(a, progress)
    return (*views(ratio, left, right, session=session), status_md(a))


def patch_ranks(row: Any, col: Any, ratio: Any, session: str | None) -> str:
    """Markdown: the rank of patch (row, col) under every ranker with an order, and whether it
    is kept at ``ratio``."""
    a = current(session)
    try:
        r, c, ratio = int(row), int(col), check_ratio(ratio)
    except (TypeError, ValueError, InputError) as e:
        raise gr.Error(f"Give a patch as row and column numbers and a keep ratio ({e}).",
                       print_exception=False) from None
    rows, cols = a.grid
    if not (0 <= r < rows and 0 <= c < cols):
        raise gr.Error(f"Patch ({r}, {c}) is outside the {rows}x{cols} grid.", print_exception=False)
    p, k = r * cols + c, a.model.keep_count(ratio)
    orders = {**a.merger_orders, **a.orders}
    lines = [f"**Patch row {r + 1}, column {c + 1}** (id {p}) of {rows}x{cols}; rank 1 = kept "
             f"first; kept at keep {ratio:.2f} = in the first {k}.", "", "| ranker | rank | kept |",
             "|---|---|---|"]
    for name in [n for n in RANKER_VALUES if n in orders]:
        rank = int(engine.patch_ranks(orders[name])[p]) + 1
        lines.append(f"| {plots.display_name(name)} | {rank} of {a.num_patches} | "
                     f"{'yes' if rank <= k else 'no'} |")
    return "\n".join(lines)
