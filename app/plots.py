"""Plotly figures of the Explore tab: the per-image keep-ratio curve and empty placeholders.

The trade-off tab's figures are ``app.tradeoffs`` (sweep results read by ``patchrank.results``
and drawn by ``patchrank.figures``; method names and colours from ``patchrank.styles``).
"""
from __future__ import annotations

import plotly.graph_objects as go

# Colours and names are the engine's one style table, so the app and the README agree.
from patchrank.styles import colour, display_name  # noqa: E402


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
        if row.get("min_keep") is not None:
            fig.add_trace(go.Scatter(x=[row["min_keep"]], y=[0.02], mode="markers", showlegend=False,
                                     marker=dict(symbol="triangle-up", size=11, color=colour(name)),
                                     hovertemplate=f"{display_name(name)} keeps the top-1 down to keep "
                                                   f"{row['min_keep']:.2f}<extra></extra>"))
    fig.add_hline(y=curve["full_prob"], line_dash="dot", line_color="#444",
                  annotation_text="full model", annotation_position="bottom right")
    fig.update_xaxes(range=[0, 1.02])
    fig.update_yaxes(range=[0, 1.02])
    return _layout(fig, f"p('{curve['top_class']}') vs keep ratio (x = prediction flips, "
                        "▲ = smallest keep ratio keeping it)",
                   "keep ratio (fraction of patches kept)", "probability of the full model's top class")


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False,
                       font=dict(size=14))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(template="plotly_white", height=300, margin=dict(l=10, r=10, t=10, b=10))
    return fig
