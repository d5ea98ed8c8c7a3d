"""How each method is shown: its name in tables and legends, its colour and its marker.

One table, read by the figures (``patchrank.figures``), the paper-shaped table of ``reproduce``
and the app, so a method looks and is called the same everywhere. A method has two labels:
``name``, the project's own wording (README tables, figure legends, the app), and ``paper``,
how the paper's table names it (docs/paper.md: "Ours", "ToMe", the unpruned CLIP row), used
only by the table that is laid out like the paper's. Methods not listed (a custom ranker) are
shown under their own name in a neutral colour.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Style:
    name: str
    colour: str
    marker: str = "o"            # matplotlib marker of the static figure
    paper: str | None = None     # the paper-shaped table's label; None: ``name``


STYLES: dict[str, Style] = {
    "golden": Style("golden (one-shot leave-one-out)", "#d62728", "*"),
    "predictor": Style("predictor", "#1f77b4", "o", paper="Ours (predictor)"),
    "predictor+tokens": Style("predictor + tokens", "#17becf", "D", paper="Ours (predictor + tokens)"),
    "attention": Style("CLS attention", "#2ca02c", "s"),
    "norm": Style("token norm (high first)", "#9467bd", "v"),
    "norm-low": Style("token norm (low first)", "#e377c2", "1"),
    "random": Style("random", "#7f7f7f", "x"),
    "tome": Style("ToMe merging", "#ff7f0e", "^", paper="ToMe"),
    "attention+fuse": Style("EViT (CLS attention + fuse)", "#bcbd22", "P"),
    "full": Style("full model", "#111111", "o", paper="CLIP (unpruned)"),
}
FALLBACK_COLOUR = "#8c564b"


def style(method: str) -> Style:
    return STYLES.get(method) or Style(method, FALLBACK_COLOUR)


def display_name(method: str) -> str:
    return style(method).name


def paper_name(method: str) -> str:
    s = style(method)
    return s.paper or s.name


def colour(method: str) -> str:
    return style(method).colour


def marker(method: str) -> str:
    return style(method).marker
