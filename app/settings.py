"""The session's analysis settings and overlay opacity, checked as a request sends them.

The prune layer and the golden target change what an analysis computes (the engine's
``PatchModel.at_layer`` and ``golden_ranking(score=...)``), so after recording one the caller
re-analyses the image; opacity only changes how the rankings are drawn.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

from patchrank.errors import PatchRankError

import app.engine as engine
from .analysis import model_for
from .sessions import session as get_session


def set_layer(layer: Any, session: str | None) -> int:
    """Record the session's prune layer (checked against its model); returns it."""
    _, m = model_for(get_session(session))
    try:
        k = int(layer)
    except (TypeError, ValueError):
        raise gr.Error(f"The prune layer must be a whole number, got {layer!r}.", print_exception=False) from None
    if not 1 <= k < m.num_layers:
        raise gr.Error(f"The prune layer must be between 1 and {m.num_layers - 1} for {m.name} "
                       f"({m.num_layers} blocks), got {k}.", print_exception=False)
    get_session(session).layer = k
    return k


def set_golden_target(target: Any, session: str | None) -> str:
    """Record what the session's golden search scores: "similarity", "max" or "class:<label>"."""
    target = str(target or "similarity").strip()
    try:
        engine.golden_target_kwargs(target, ["placeholder"])
    except PatchRankError as e:
        raise gr.Error(f"Unknown golden target: {e}.", print_exception=False) from None
    get_session(session).golden_target = target
    return target


def set_opacity(opacity: Any, session: str | None) -> float:
    """Record the session's heatmap opacity (0 = the image only, 1 = the colours only)."""
    try:
        v = float(opacity)
    except (TypeError, ValueError):
        raise gr.Error(f"Opacity must be a number from 0 to 1, got {opacity!r}.", print_exception=False) from None
    if not 0.0 <= v <= 1.0:
        raise gr.Error(f"Opacity must be from 0 to 1, got {v}.", print_exception=False)
    get_session(session).opacity = v
    return v
