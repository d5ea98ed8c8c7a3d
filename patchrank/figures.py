"""Trade-off figures from sweep results: interactive plotly for the app, static PNG for the README.

Input is a results file of ``patchrank.sweep`` (schema and reader: ``patchrank.results``); names,
colours and markers come from ``patchrank.styles``, so the figures, the README tables and the app
agree. Figures: one line per method through its keep ratios, accuracy (%) with the Wilson 95%
interval as error bars, against GFLOPs or measured latency; hovering a point shows every number
of its row. The PNG is drawn with matplotlib's object API on an Agg canvas (no pyplot, so no
global backend switch and no figure left open).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import PatchRankError
from .files import atomic_path, write_text
from .results import SweepResults, as_results
from .styles import colour, display_name, marker

AXES = {"gflops": "GFLOPs per image, encoder + ranker (1 MAC = 2 FLOPs)",
        "latency_ms_b1": "latency at batch 1 (ms, median)",
        "latency_ms_bN": "latency at batch N (ms per batch, median)",
        "ms_per_image_bN": "ms per image at batch N (median)"}


def grid_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are written with ``str`` (format them before)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def _pct(v):
    return None if v is None else 100.0 * v


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


def _hover(r: dict) -> str:
    ci = ""
    if r.get("ci_low") is not None:
        ci = f" [{_fmt(_pct(r.get('ci_low')), '.1f')}, {_fmt(_pct(r.get('ci_high')), '.1f')}]"
    lines = [f"<b>{display_name(r['method'])}</b>", f"keep ratio {r['ratio']:.2f}"
             + (f" ({int(r['kept'])} patches)" if r.get("kept") is not None else ""),
             f"accuracy {100 * r['accuracy']:.1f}%{ci}",
             f"GFLOPs {r['gflops']:.3g}"
             + (f" (ranker {r['ranker_gflops']:.2g})" if r.get("ranker_gflops") else "")]
    if r.get("latency_ms_b1") is not None:
        lines.append(f"latency b=1 {r['latency_ms_b1']:.2f} ms "
                     f"(min {_fmt(r.get('latency_ms_b1_min'), '.2f')})"
                     + (f", speedup {r['speedup_b1']:.2f}x" if r.get("speedup_b1") else ""))
    if r.get("latency_ms_bN") is not None:
        lines.append(f"latency b={int(r.get('batch_N') or 0)} {r['latency_ms_bN']:.1f} ms"
                     + (f", speedup {r['speedup_bN']:.2f}x" if r.get("speedup_bN") else ""))
    if r.get("precomputed"):
        lines.append("order searched beforehand: GFLOPs include the search, latency does not")
    return "<br>".join(lines)


def _off_axis(pts: list[dict], x: str) -> float | None:
    """A golden search costs far more than the encoder (``golden.search_gflops``): on the GFLOPs
    axis such a series is drawn at its encoder cost, its legend naming the search cost."""
    if x != "gflops" or not any(r.get("precomputed") for r in pts):
        return None
    return max((r.get("ranker_gflops") or 0.0) for r in pts) or None     # ratio 1.0 searches nothing


def series_xy(meth: str, pts: list[dict], x: str) -> tuple[list[float], str]:
    """(x values, legend name) of one method's points on axis ``x`` (``_off_axis``)."""
    search = _off_axis(pts, x)
    if search is None:
        return [r[x] for r in pts], display_name(meth)
    xs = [r.get("encoder_gflops", r[x]) for r in pts]
    return xs, f"{display_name(meth)}, drawn at encoder cost (+{search:.3g} GFLOPs search)"


def off_scale(res: SweepResults, floor: float = 0.10, factor: float = 3.0) -> dict[str, float]:
    """Methods whose accuracy falls so far below the others' that one shared axis squashes the
    comparison (a ranker that keeps the wrong patches, against several close to the unpruned
    model): method -> its lowest accuracy. A method is off scale when its worst drop from the unpruned accuracy
    exceeds both ``floor`` and ``factor`` times the median worst drop of all methods."""
    top = (res.meta.get("full") or {}).get("accuracy")
    top = max((r["accuracy"] for r in res.rows), default=0.0) if top is None else top
    worst = {m: min(r["accuracy"] for r in res.series(m)) for m in res.methods()}
    if len(worst) < 3:
        return {}
    drops = sorted(top - w for w in worst.values())
    median = drops[(len(drops) - 1) // 2]
    return {m: w for m, w in worst.items() if top - w > max(floor, factor * median)}


def focus_range(res: SweepResults, margin: float = 0.01) -> tuple[float, float] | None:
    """Accuracy range (fractions) of the methods that are not ``off_scale``, intervals included,
    with a margin: the y axis that lets their differences be read. None when nothing is off scale."""
    out = off_scale(res)
    rows = [r for r in res.rows if r["method"] not in out]
    if not out or not rows:
        return None
    lo = min(r["accuracy"] if r.get("ci_low") is None else r["ci_low"] for r in rows)
    hi = max(r["accuracy"] if r.get("ci_high") is None else r["ci_high"] for r in rows)
    return max(0.0, lo - margin), min(1.0, hi + margin)


def _axis_title(res: SweepResults, x: str) -> str:
    t = AXES.get(x, x)
    return t.replace("batch N", f"batch {res.batch_n}") if res.batch_n else t


def tradeoff_figure(results: SweepResults | dict | str | os.PathLike, x: str = "gflops",
                    title: str | None = None, show_ci: bool = True):
    """Plotly figure: accuracy (%) vs ``x`` ("gflops", "latency_ms_b1", "latency_ms_bN",
    "ms_per_image_bN"), one line per method, Wilson 95% error bars, full hover details."""
    import plotly.graph_objects as go
    res = as_results(results)
    fig = go.Figure()
    for meth in res.methods():
        pts = [r for r in res.series(meth) if r.get(x) is not None]
        if not pts:
            continue
        err = None
        if show_ci and all(r.get("ci_low") is not None and r.get("ci_high") is not None for r in pts):
            err = dict(type="data", symmetric=False, thickness=1, width=3,
                       array=[100 * (r["ci_high"] - r["accuracy"]) for r in pts],
                       arrayminus=[100 * (r["accuracy"] - r["ci_low"]) for r in pts])
        xs, name = series_xy(meth, pts, x)
        fig.add_trace(go.Scatter(
            x=xs, y=[100 * r["accuracy"] for r in pts], error_y=err,
            mode="lines+markers", name=name,
            line=dict(color=colour(meth), dash="dot" if pts[0].get("precomputed") else None),
            marker=dict(size=6), text=[_hover(r) for r in pts], hovertemplate="%{text}<extra></extra>"))
    full = (res.meta.get("full") or {}).get("accuracy")
    if full is not None:
        fig.add_hline(y=100 * full, line_dash="dash", line_color="#888",
                      annotation_text=f"unpruned {100 * full:.1f}%", annotation_position="bottom left")
    what = "GFLOPs" if x == "gflops" else "latency"
    model = res.meta.get("model")
    fig.update_layout(
        title=title or f"Accuracy vs {what}" + (f" — {model}, {res.meta.get('data', '')}" if model else ""),
        xaxis_title=_axis_title(res, x), yaxis_title="zero-shot top-1 accuracy (%)",
        template="plotly_white", height=420, margin=dict(l=55, r=20, t=55, b=45),
        legend=dict(orientation="h", y=-0.2), hovermode="closest")
    return fig


def tradeoff_figures(results) -> tuple:
    """(accuracy-vs-GFLOPs, accuracy-vs-latency) plotly figures; latency at batch 1."""
    res = as_results(results)
    return tradeoff_figure(res, "gflops"), tradeoff_figure(res, "latency_ms_b1")


def save_png(results, path: str | os.PathLike, xs: Sequence[str] = ("gflops", "latency_ms_b1"),
             dpi: int = 130, title: str | None = None) -> Path:
    """The trade-off curves as one static PNG (a panel per x axis), e.g. ``docs/tradeoff.png``.
    Panels whose x has no values (latency not measured) are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    res = as_results(results)
    xs = [x for x in xs if any(r.get(x) is not None for r in res.rows)]
    if not xs:
        raise PatchRankError("nothing to plot: the results have no rows with these x values")
    fig = Figure(figsize=(5.2 * len(xs), 4.2), dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(xs), squeeze=False)[0]
    full = (res.meta.get("full") or {}).get("accuracy")
    for ax, x in zip(axes, xs):
        for meth in res.methods():
            pts = [r for r in res.series(meth) if r.get(x) is not None]
            if not pts:
                continue
            (xv, name), yv = series_xy(meth, pts, x), [100 * r["accuracy"] for r in pts]
            yerr = None
            if all(r.get("ci_low") is not None and r.get("ci_high") is not None for r in pts):
                yerr = [[100 * (r["accuracy"] - r["ci_low"]) for r in pts],
                        [100 * (r["ci_high"] - r["accuracy"]) for r in pts]]
            ax.errorbar(xv, yv, yerr=yerr, label=name, color=colour(meth),
                        marker=marker(meth), markersize=4, linewidth=1.4, capsize=2,
                        elinewidth=0.7, linestyle=":" if pts[0].get("precomputed") else "-")
        if full is not None:
            ax.axhline(100 * full, color="#888", linestyle="--", linewidth=0.8)
        ax.set_xlabel(_axis_title(res, x))
        ax.set_ylabel("zero-shot top-1 accuracy (%)")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    meta = res.meta
    fig.suptitle(title or ("Accuracy vs cost per keep ratio"
                           + (f" — {meta.get('model')}, {meta.get('data')}, n={meta.get('n_images')}"
                              if meta.get("model") else "")), fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def markdown_table(results, ratios: Sequence[float] | None = None,
                   methods: Sequence[str] | None = None) -> str:
    """README tables: accuracy % [95% CI] per method (rows) and keep ratio (columns), with the
    batch-1 speedup of the predictor if measured; then the GFLOPs per image of each cell, encoder
    + ranker (equal cost means all cost), and the encoder alone in its last row."""
    res = as_results(results)
    ratios = sorted({r["ratio"] for r in res.rows}, reverse=True) if ratios is None else list(ratios)
    methods = res.methods() if methods is None else list(methods)

    def accuracy(r):
        ci = (f" [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
              if r.get("ci_low") is not None and r.get("ci_high") is not None else "")
        return f"{100 * r['accuracy']:.1f}{ci}"

    def table(fmt):
        return [f"| {display_name(meth)} | " + " | ".join(
            "—" if (r := res.row(meth, q)) is None else fmt(r) for q in ratios) + " |" for meth in methods]

    head = ["| method | " + " | ".join(f"keep {r:g}" for r in ratios) + " |", "|---|" + "---|" * len(ratios)]
    lines = head + table(accuracy)
    sp = [next((r.get("speedup_b1") for r in res.rows if r["method"] == "predictor"
                and abs(r["ratio"] - q) < 1e-9), None) for q in ratios]
    if any(s is not None for s in sp):
        lines.append("| predictor speedup, batch 1 | " + " | ".join(_fmt(s, ".2f") + ("x" if s else "")
                                                                   for s in sp) + " |")
    enc = [next((r.get("encoder_gflops") for r in res.rows if abs(r["ratio"] - q) < 1e-9
                 and r.get("encoder_gflops") is not None and not r.get("extra_tokens")), None)
           for q in ratios]
    lines += ["", "GFLOPs per image, encoder + ranker (1 MAC = 2 FLOPs):", ""] + head
    lines += table(lambda r: _fmt(r["gflops"], ".3g"))
    lines.append("| encoder alone | " + " | ".join(_fmt(g, ".3g") for g in enc) + " |")
    return "\n".join(lines)


def save_html(results: dict, path: str | os.PathLike) -> Path:
    """Both trade-off figures (accuracy vs GFLOPs, vs latency) as one HTML page; plotly.js is
    loaded from its CDN, so the page stays small."""
    g, lat = tradeoff_figures(results)
    return write_text(path, g.to_html(full_html=True, include_plotlyjs="cdn")
                      + lat.to_html(full_html=False, include_plotlyjs=False))
