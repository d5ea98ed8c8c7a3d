"""Trade-off figures from sweep results: interactive plotly for the app, static PNG for the README.

Input is the results JSON written by ``patchrank.sweep`` (format ``patchrank-sweep/1``, described
in that module's docstring): ``{"format", "meta": {...}, "rows": [{method, ratio, kept, accuracy,
ci_low, ci_high, gflops, latency_ms_b1, latency_ms_bN, ...}]}``. ``load_results`` reads and
checks one file (a bare list of rows is accepted too), ``load_results_dir`` every ``*.json`` of a
folder such as ``assets/results``.

Figures: one line per method through its keep ratios, accuracy (%) with the Wilson 95% interval
as error bars, against GFLOPs or measured latency; hovering a point shows every number of its
row. The PNG is drawn with matplotlib's object API on an Agg canvas (no pyplot, so no global
backend switch and no figure left open).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import PatchRankError
from .files import atomic_path

FORMAT = "patchrank-sweep/1"   # == sweep.FORMAT (kept here so reading results needs no torch)
REQUIRED = ("method", "ratio", "accuracy", "gflops")
NUMERIC = ("ratio", "kept", "accuracy", "ci_low", "ci_high", "gflops", "encoder_gflops",
           "ranker_gflops", "gflops_ratio", "latency_ms", "latency_ms_b1", "latency_ms_b1_min",
           "latency_ms_bN", "latency_ms_bN_min", "ms_per_image_bN", "speedup_b1", "speedup_bN")

#: One colour per method (the app uses the same ones).
COLOURS = {"golden": "#d62728", "predictor": "#1f77b4", "predictor+tokens": "#17becf",
           "attention": "#2ca02c", "norm": "#9467bd", "random": "#7f7f7f", "tome": "#ff7f0e",
           "attention+fuse": "#bcbd22", "norm-low": "#e377c2", "full": "#111111"}
NAMES = {"golden": "golden (one-shot leave-one-out)", "predictor": "predictor",
         "predictor+tokens": "predictor + tokens", "attention": "CLS attention",
         "norm": "token norm (high first)", "norm-low": "token norm (low first)",
         "random": "random", "tome": "ToMe merging",
         "attention+fuse": "EViT (attention + fuse)", "full": "full model"}
MARKERS = {"golden": "*", "predictor": "o", "predictor+tokens": "D", "attention": "s",
           "norm": "v", "norm-low": "1", "random": "x", "tome": "^", "attention+fuse": "P"}
AXES = {"gflops": "GFLOPs per image, encoder + ranker (1 MAC = 2 FLOPs)",
        "latency_ms_b1": "latency at batch 1 (ms, median)",
        "latency_ms_bN": "latency at batch N (ms per batch, median)",
        "ms_per_image_bN": "ms per image at batch N (median)"}


def grid_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells are written with ``str`` (format them before)."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def colour(method: str) -> str:
    return COLOURS.get(method, "#8c564b")


def display_name(method: str) -> str:
    return NAMES.get(method, method)


@dataclass
class SweepResults:
    """Rows and meta of one sweep. ``accuracy``/``ci_*`` are fractions in [0, 1]."""
    meta: dict
    rows: list[dict]
    path: str | None = None
    problems: list[str] = field(default_factory=list)

    def methods(self) -> list[str]:
        """Methods in the sweep's order (meta), then any others in row order."""
        out = [m for m in self.meta.get("methods", []) if any(r["method"] == m for r in self.rows)]
        for r in self.rows:
            if r["method"] not in out:
                out.append(r["method"])
        return out

    def series(self, method: str) -> list[dict]:
        """Rows of ``method``, highest keep ratio first."""
        return sorted((r for r in self.rows if r["method"] == method), key=lambda r: -r["ratio"])

    @property
    def batch_n(self) -> int | None:
        return next((r.get("batch_N") for r in self.rows if r.get("batch_N")), None)


def _check_row(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise PatchRankError(f"{where}: a row must be an object, got {type(row).__name__}")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise PatchRankError(f"{where}: row lacks {', '.join(missing)}")
    out = dict(row)
    out["method"] = str(row["method"])
    for k in NUMERIC:
        v = row.get(k)
        if v is None:
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise PatchRankError(f"{where}: {k} must be a number, got {row[k]!r}") from None
        if not math.isfinite(v):
            raise PatchRankError(f"{where}: {k} is not finite")
        out[k] = v
    if not 0.0 <= out["accuracy"] <= 1.0:
        raise PatchRankError(f"{where}: accuracy must be a fraction in [0, 1], got {out['accuracy']}")
    return out


def parse_results(data, source: str = "results") -> SweepResults:
    """Check a loaded results object (the sweep's dict, or a bare list of rows)."""
    if isinstance(data, list):
        meta, rows = {}, data
    elif isinstance(data, dict):
        fmt = data.get("format")
        if fmt is not None and fmt != FORMAT:
            raise PatchRankError(f"{source}: format {fmt!r} is not {FORMAT!r}")
        meta, rows = data.get("meta") or {}, data.get("rows")
        if not isinstance(rows, list):
            raise PatchRankError(f"{source}: expected a 'rows' list")
    else:
        raise PatchRankError(f"{source}: expected an object with 'meta' and 'rows'")
    return SweepResults(meta, [_check_row(r, f"{source}, row {i}") for i, r in enumerate(rows)], source)


def load_results(path: str | os.PathLike) -> SweepResults:
    """Read one results JSON (``sweep`` format); errors name the file and the bad row."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PatchRankError(f"cannot read results {path}: {e}") from None
    res = parse_results(data, str(path))
    res.path = str(path)
    return res


def load_results_dir(folder: str | os.PathLike) -> tuple[list[SweepResults], list[str]]:
    """(every readable ``*.json`` results file of ``folder``, sorted by name; one message per
    file that could not be read)."""
    found, problems = [], []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            found.append(load_results(p))
        except PatchRankError as e:
            problems.append(str(e))
    return found, problems


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
    comparison (token norm, high first, at 28 % against six methods within 10 points): method ->
    its lowest accuracy. A method is off scale when its worst drop from the unpruned accuracy
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
    res = _coerce(results)
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
    res = _coerce(results)
    return tradeoff_figure(res, "gflops"), tradeoff_figure(res, "latency_ms_b1")


def save_png(results, path: str | os.PathLike, xs: Sequence[str] = ("gflops", "latency_ms_b1"),
             dpi: int = 130, title: str | None = None) -> Path:
    """The trade-off curves as one static PNG (a panel per x axis), e.g. ``docs/tradeoff.png``.
    Panels whose x has no values (latency not measured) are left out."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    res = _coerce(results)
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
                        marker=MARKERS.get(meth, "o"), markersize=4, linewidth=1.4, capsize=2,
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
    res = _coerce(results)
    ratios = sorted({r["ratio"] for r in res.rows}, reverse=True) if ratios is None else list(ratios)
    methods = res.methods() if methods is None else list(methods)

    def row_of(meth, ratio):
        return next((r for r in res.rows if r["method"] == meth and abs(r["ratio"] - ratio) < 1e-9), None)

    def accuracy(r):
        ci = (f" [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}]"
              if r.get("ci_low") is not None and r.get("ci_high") is not None else "")
        return f"{100 * r['accuracy']:.1f}{ci}"

    def table(fmt):
        return [f"| {display_name(meth)} | " + " | ".join(
            "—" if (r := row_of(meth, q)) is None else fmt(r) for q in ratios) + " |" for meth in methods]

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


def _coerce(results) -> SweepResults:
    if isinstance(results, SweepResults):
        return results
    if isinstance(results, (str, os.PathLike)):
        return load_results(results)
    return parse_results(results)


def save_html(results: dict, path: str | os.PathLike) -> Path:
    """Both trade-off figures (accuracy vs GFLOPs, vs latency) as one HTML page; plotly.js is
    loaded from its CDN, so the page stays small."""
    g, lat = tradeoff_figures(results)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        f.write(g.to_html(full_html=True, include_plotlyjs="cdn"))
        f.write(lat.to_html(full_html=False, include_plotlyjs=False))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m patchrank.figures RESULTS.json [--png F] [--html F]``: the same as
    ``patchrank figures`` (kept for the commands earlier READMEs showed)."""
    import sys

    from .cli import main as cli_main
    return cli_main(["figures", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
