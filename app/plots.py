"""Plotly figures: the per-image keep-ratio curve and the accuracy trade-off curves.

Also reads precomputed sweep results (``assets/results/*.json``): each file holds a list of rows
``{method, ratio, accuracy, gflops, latency_ms}`` (or ``{"rows": [...], ...}`` with the same rows;
extra keys are ignored, ``latency_ms`` may be missing).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go

RESULTS_DIR = Path(__file__).resolve().parent.parent / "assets" / "results"

# Colours and names are the engine's (``patchrank.figures``), so the app and the README agree.
from patchrank.figures import colour, display_name, series_xy  # noqa: E402


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white",
                      height=380, margin=dict(l=50, r=20, t=50, b=45),
                      legend=dict(orientation="h", y=-0.22))
    return fig


def curve_figure(curve: dict) -> go.Figure:
    """Top-class probability vs keep ratio, one line per ranker, the flip point marked.

    ``curve``: ``{"ratios": [...], "top_class": str, "full_prob": float,
    "rankers": {name: {"prob": [...], "flip": ratio | None}}}``."""
    fig = go.Figure()
    ratios = curve["ratios"]
    for name, row in curve["rankers"].items():
        fig.add_trace(go.Scatter(x=ratios, y=row["prob"], mode="lines+markers", name=display_name(name),
                                 line=dict(color=colour(name)), marker=dict(size=5),
                                 hovertemplate="keep %{x:.2f}: p=%{y:.3f}<extra>" + display_name(name) + "</extra>"))
        if row.get("flip") is not None:
            i = ratios.index(row["flip"])
            fig.add_trace(go.Scatter(x=[row["flip"]], y=[row["prob"][i]], mode="markers",
                                     marker=dict(symbol="x", size=12, color=colour(name)),
                                     name=f"{display_name(name)} flips at {row['flip']:.2f}",
                                     hovertemplate=f"prediction changes at keep {row['flip']:.2f}<extra></extra>"))
    fig.add_hline(y=curve["full_prob"], line_dash="dot", line_color="#444",
                  annotation_text="full model", annotation_position="bottom right")
    fig.update_xaxes(range=[0, 1.02])
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, f"p('{curve['top_class']}') vs keep ratio (x = prediction flips)",
                   "keep ratio (fraction of patches kept)", "probability of the full model's top class")


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(template="plotly_white", height=300, margin=dict(l=10, r=10, t=10, b=10))
    return fig


@dataclass
class Results:
    """Rows read from the results folder, plus what could not be read."""
    rows: list[dict] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


REQUIRED = ("method", "ratio", "accuracy", "gflops")


def _clean_row(row, model: str = "") -> dict | None:
    if not isinstance(row, dict) or any(k not in row for k in REQUIRED):
        return None
    try:
        out = {"method": str(row["method"]), "ratio": float(row["ratio"]),
               "accuracy": float(row["accuracy"]), "gflops": float(row["gflops"])}
        for k in ("latency_ms", "encoder_gflops", "ranker_gflops"):
            out[k] = float(row[k]) if row.get(k) is not None else None
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) for k, v in out.items() if isinstance(v, float)):
        return None
    out["model"] = str(row.get("model") or model)
    out["precomputed"] = bool(row.get("precomputed"))
    for k in ("ci_low", "ci_high"):
        try:
            out[k] = float(row[k]) if row.get(k) is not None else None
        except (TypeError, ValueError):
            out[k] = None
    return out


def read_results(folder: str | Path = RESULTS_DIR) -> Results:
    """All rows of ``folder/*.json``; files that don't parse are listed in ``problems``."""
    res = Results()
    folder = Path(folder)
    if not folder.is_dir():
        return res
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            res.problems.append(f"{path.name}: not readable JSON ({e})")
            continue
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            res.problems.append(f"{path.name}: expected a list of rows")
            continue
        meta = data.get("meta", {}) if isinstance(data, dict) else {}
        model = str(meta.get("model") or meta.get("model_id") or "") if isinstance(meta, dict) else ""
        good = [r for r in (_clean_row(row, model) for row in rows) if r is not None]
        if len(good) < len(rows):
            res.problems.append(f"{path.name}: {len(rows) - len(good)} rows lack "
                                f"{'/'.join(REQUIRED)} and were skipped")
        if good:
            res.rows.extend(good)
            res.sources.append(path.name)
    return res


def _pct(v: float | None) -> float | None:
    return None if v is None else (100 * v if v <= 1 else v)


def tradeoff_figure(rows: list[dict], x: str) -> go.Figure:
    """Accuracy vs ``x`` ("gflops" or "latency_ms"), one line per method (and model, when the
    rows hold several), points labelled by keep ratio, 95% intervals when the rows carry them."""
    fig = go.Figure()
    several = len({r.get("model", "") for r in rows}) > 1
    keys = sorted({(r.get("model", ""), r["method"]) for r in rows})
    for model, m in keys:
        pts = sorted((r for r in rows if r["method"] == m and r.get("model", "") == model
                      and r.get(x) is not None), key=lambda r: r[x])
        if not pts:
            continue
        acc = [_pct(r["accuracy"]) for r in pts]
        err = None
        if all(r.get("ci_low") is not None and r.get("ci_high") is not None for r in pts):
            err = dict(type="data", symmetric=False, thickness=1,
                       array=[_pct(r["ci_high"]) - a for r, a in zip(pts, acc)],
                       arrayminus=[a - _pct(r["ci_low"]) for r, a in zip(pts, acc)])
        xs, name = series_xy(m, pts, x)
        name += f" ({model})" if several and model else ""
        fig.add_trace(go.Scatter(
            x=xs, y=acc, error_y=err, mode="lines+markers", name=name,
            line=dict(color=colour(m)), text=[f"keep {r['ratio']:.2f}" for r in pts],
            hovertemplate="%{text}<br>%{x:.3g} " + ("GFLOPs" if x == "gflops" else "ms")
                          + "<br>accuracy %{y:.1f}%<extra>" + name + "</extra>"))
    label = "GFLOPs per image, encoder + ranker (1 MAC = 2 FLOPs)" if x == "gflops" else "measured latency (ms per image, batch 1)"
    return _layout(fig, f"Accuracy vs {'GFLOPs' if x == 'gflops' else 'latency'}", label,
                   "zero-shot top-1 accuracy (%)")
