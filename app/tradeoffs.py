"""The trade-off tab: accuracy against cost per method, read at a glance.

Results are read and drawn by the engine (``patchrank.results`` reads the sweep's schema,
``patchrank.figures`` draws, ``patchrank.styles`` names and colours the methods), so the app, the
README figure and the CLI agree. What this module adds is
what a glance needs:
- a method far below the others (token norm, high first, on the bundled model) would squash six methods into
  a 10-point band, so by default the accuracy axis is zoomed on the others and the outlier is
  named on the figure (untick the box to see everything);
- batch-1 latency of one keep ratio is the same work whichever method chose the patches, and the
  per-method medians wobble by a millisecond (lines through them zig-zag), so latency is drawn
  against the keep ratio as the median over methods with its spread (fastest run to slowest
  median) instead;
- the dataset and its size are in every title.
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from patchrank import figures
from patchrank.errors import PatchRankError
from patchrank.results import SweepResults, load_results_dir, parse_results
from patchrank.styles import display_name

import app.engine as engine
import app.plots as plots
from .analysis import fail, model_for, predictor_for
from .progress import Progress, reporter
from .sessions import session as get_session

RESULTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "results"
MAX_SWEEP_IMAGES = 2000
LATENCY_KEYS = ("latency_ms_b1", "latency_ms")        # the sweep's batch-1 median; older rows


def describe(res: SweepResults) -> str:
    """"bundled on bundled-eval, 1200 images": model, dataset and its size, as titles name them."""
    meta = res.meta
    n = meta.get("n_images") or max((int(r.get("n") or 0) for r in res.rows), default=0) or "?"
    model = meta.get("model") or next((r.get("model") for r in res.rows if r.get("model")), "model ?")
    return f"{model} on {meta.get('data') or 'dataset ?'}, {n} images"


def accuracy_figure(res: SweepResults, focus: bool = True) -> go.Figure:
    """Accuracy vs GFLOPs (the engine's figure); with ``focus`` the y axis covers the methods
    that are not off scale and the ones that are get a note on the figure."""
    fig = figures.tradeoff_figure(res, "gflops", title=f"Accuracy vs GFLOPs — {describe(res)}")
    # a half-width panel: the legend goes below the axis title, in small type, with room for it
    fig.update_layout(height=600, margin=dict(l=55, r=15, t=55, b=10),
                      legend=dict(orientation="h", yanchor="top", y=-0.16, font=dict(size=10)))
    rng, out = figures.focus_range(res), figures.off_scale(res)
    if focus and rng is not None:
        fig.update_yaxes(range=[100 * rng[0], 100 * rng[1]])
        names = ", ".join(f"{display_name(m)} (down to {100 * v:.1f}%)" for m, v in out.items())
        fig.add_annotation(text=f"below this range: {names}; untick 'zoom' to see it", x=0.01, y=0.02,
                           xref="paper", yref="paper", showarrow=False, xanchor="left",
                           font=dict(size=11, color="#444"), bgcolor="rgba(255,255,255,0.8)")
    return fig


def _latency(r: dict) -> float | None:
    return next((r[k] for k in LATENCY_KEYS if r.get(k) is not None), None)


def latency_figure(res: SweepResults) -> go.Figure:
    """Batch-1 latency per keep ratio: the median over methods, a bar from the fastest run to
    the slowest method's median, each method's median in the hover; the full model dashed."""
    by_ratio: dict[float, list[dict]] = {}
    for r in res.rows:
        if _latency(r) is not None:
            by_ratio.setdefault(r["ratio"], []).append(r)
    if not by_ratio:
        return plots.empty_figure("no latency measured")
    ratios = sorted(by_ratio)
    med = [statistics.median(_latency(r) for r in by_ratio[q]) for q in ratios]
    lo = [min(r.get("latency_ms_b1_min") or _latency(r) for r in by_ratio[q]) for q in ratios]
    hi = [max(_latency(r) for r in by_ratio[q]) for q in ratios]
    hover = ["<br>".join(f"{display_name(r['method'])} {_latency(r):.2f} ms" for r in by_ratio[q])
             for q in ratios]
    fig = go.Figure(go.Scatter(
        x=ratios, y=med, mode="lines+markers", name="median over methods", line=dict(color="#1f77b4"),
        error_y=dict(type="data", symmetric=False, array=[h - m for h, m in zip(hi, med)],
                     arrayminus=[m - v for m, v in zip(med, lo)], thickness=1, width=4),
        text=hover, hovertemplate="keep %{x:.2f}: median %{y:.2f} ms<br>%{text}<extra></extra>"))
    full = (res.meta.get("full") or {}).get("latency_ms_b1")
    if full is not None:
        fig.add_hline(y=full, line_dash="dash", line_color="#888", annotation_text=f"full model {full:.2f} ms",
                      annotation_position="top left")
    fig.update_layout(title=f"Latency vs keep ratio, batch 1 — {describe(res)}", template="plotly_white",
                      xaxis_title="keep ratio (fraction of patches kept)",
                      yaxis_title="ms per image (bar: fastest run to slowest median)",
                      height=600, margin=dict(l=55, r=20, t=55, b=45), showlegend=False)
    return fig


def _figures(res: SweepResults, focus: bool) -> tuple[go.Figure, go.Figure]:
    return accuracy_figure(res, focus), latency_figure(res)


def _latency_note(res: SweepResults) -> str:
    full = res.meta.get("full") or {}
    if (full.get("gflops") or 1e9) >= 2.0:
        return ""
    return ("  \n*On a model this small ({:.2f} GFLOPs) batch-1 latency is mostly fixed per-call "
            "overhead (Python, one kernel launch per layer, gathering the kept tokens), so pruning "
            "saves little time per image; the saved GFLOPs show at larger models and batches.*"
            ).format(full.get("gflops") or 0.0)


def tradeoff(folder: str | Path | None = None, focus: bool = True) -> tuple:
    """(accuracy-vs-GFLOPs figure, latency figure, markdown) from precomputed results."""
    folder = Path(folder or RESULTS_DIR)
    found, problems = load_results_dir(folder) if folder.is_dir() else ([], [])
    found = [f for f in found if f.rows]
    if not found:
        msg = ("Trade-off results are not computed yet: no rows in `assets/results/*.json`. They "
               "come from `python -m patchrank sweep` (see the README).")
        if problems:
            msg += "  \n" + "  \n".join(problems)
        return plots.empty_figure("not computed yet"), plots.empty_figure("not computed yet"), msg
    res = found[0]
    md = f"From `{Path(res.path).name}`: {describe(res)}, {len(res.rows)} points." + _latency_note(res)
    if len(found) > 1:
        md += "  \nAlso there (not drawn): " + ", ".join(f"`{Path(f.path).name}` ({describe(f)})"
                                                       for f in found[1:])
    if problems:
        md += "  \n" + "  \n".join(problems)
    return (*_figures(res, bool(focus)), md)


def _sweep_limit(spec: str, limit: Any) -> int:
    if not spec:
        raise gr.Error("Give a dataset: a folder with one subfolder per class, or bundled-eval:200.",
                       print_exception=False)
    if engine.ON_SPACES and not spec.startswith("bundled-eval") and not os.environ.get("PATCHRANK_ALLOW_LOCAL"):
        raise gr.Error("On Spaces only the bundled evaluation split can be swept (bundled-eval:N).",
                       print_exception=False)
    try:
        n = int(limit)
    except (TypeError, ValueError):
        raise gr.Error(f"The image limit must be a whole number, got {limit!r}.", print_exception=False) from None
    if not 1 <= n <= MAX_SWEEP_IMAGES:
        raise gr.Error(f"The image limit must be between 1 and {MAX_SWEEP_IMAGES}, got {n}.",
                       print_exception=False)
    return n


def sweep_dataset(spec: str, limit: Any = 200, include_golden: bool = False, focus: bool = True, *,
                  session: str | None = None, progress: Progress = None) -> tuple:
    """Run the engine's trade-off sweep on a labelled dataset (a folder with one subfolder per
    class, or ``bundled-eval:N``) with the session's model; same outputs as ``tradeoff``."""
    spec = (spec or "").strip()
    n = _sweep_limit(spec, limit)
    sess = get_session(session)
    _, m = model_for(sess)
    pred, _ = predictor_for(sess, m)
    reporter(progress)(None, f"sweeping {spec} ({n} images at most)")
    try:
        out = engine.run_sweep(m, spec, limit=n, include_golden=bool(include_golden),
                               predictor=pred.predictor if pred else None)
        res = parse_results(out, f"sweep of {spec}")
    except engine.EngineMissing as e:
        raise fail(e) from None
    except (PatchRankError, OSError) as e:
        raise gr.Error(f"The sweep could not run: {e}", print_exception=False) from None
    skipped = res.meta.get("skipped") or {}
    md = f"Swept `{spec}`: {describe(res)}, {len(res.rows)} points (computed now, not saved)."
    if skipped:
        md += "  \nSkipped: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())
    return (*_figures(res, bool(focus)), md + _latency_note(res))
