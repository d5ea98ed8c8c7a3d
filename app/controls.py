"""Listeners of the Explore tab's finer controls: overlay opacity, the prune layer, the golden
target, and a click on a patch to see its rank under every ranker.

Each control is one listener (one request per action) plus one named API endpoint that does the
same for a ``gradio_client`` session. The prune layer and the golden target are analysis
settings (``app.settings``): changing one re-analyses the current image and redraws everything,
as a new image does. Opacity only redraws the two rankings; a click reads ranks the analysis
already holds.
"""
from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

import app.state as S
from .analysis import current, reanalyze
from .outputs import OPACITY_KEYS, REANALYSIS_KEYS, pack, sid as _sid
from .panels import patch_ranks, status_md
from .settings import set_golden_target, set_layer, set_opacity
from .sessions import session as get_session


def on_layer(layer, golden_mode, ratio, left, right, labels, use_tokens, request: gr.Request,
             progress=gr.Progress()) -> Iterator[tuple]:
    """Another prune layer: the image re-analysed there (rankings, masks, top-5, costs, curve)."""
    sid = _sid(request)
    set_layer(layer, sid)
    view = S.view_of(ratio, left, right, labels, use_tokens)
    for d in S.reanalysis_stream(view, golden_mode, session=sid, progress=progress):
        yield pack(d, REANALYSIS_KEYS)


def on_golden_target(target, golden_mode, ratio, left, right, labels, use_tokens,
                     request: gr.Request, progress=gr.Progress()) -> Iterator[tuple]:
    """The golden ranking scored for another target: the image re-analysed."""
    sid = _sid(request)
    set_golden_target(target, sid)
    view = S.view_of(ratio, left, right, labels, use_tokens)
    for d in S.reanalysis_stream(view, golden_mode, session=sid, progress=progress):
        yield pack(d, REANALYSIS_KEYS)


def _api_views(view: S.View, sid: str | None, progress) -> tuple:
    """The API's answer after a setting changed: panels, agreement and status for the image
    analysed again (golden included), or a status alone when no image was analysed yet."""
    if get_session(sid).analysis is None:
        return (None,) * 5 + ("Setting kept; analyse an image (`/analyze`) to use it.",)
    a = reanalyze(session=sid, progress=progress)
    d = S.draw(sid, view=view, top5=False)
    return pack(d, ("heat_l", "heat_r", "mask_l", "mask_r", "agreement"), labels=False) + (status_md(a),)


def api_layer(layer, ratio, left, right, request: gr.Request, progress=gr.Progress()) -> tuple:
    """Prune at another block: (left/right rankings, left/right masks, agreement, status)."""
    sid = _sid(request)
    set_layer(layer, sid)
    return _api_views(S.view_of(ratio, left, right, _labels_of(sid), False), sid, progress)


def api_golden_target(target, labels, ratio, left, right, request: gr.Request,
                      progress=gr.Progress()) -> tuple:
    """Golden scored for a target, against ``labels``: as ``api_layer``."""
    sid = _sid(request)
    set_golden_target(target, sid)
    return _api_views(S.view_of(ratio, left, right, labels, False), sid, progress)


def _labels_of(sid: str | None) -> Any:
    return getattr(get_session(sid).view, "labels", "")


def on_opacity(opacity, ratio, left, right, labels, use_tokens, request: gr.Request) -> tuple:
    """Heatmap opacity changed: both rankings redrawn (no model run)."""
    sid = _sid(request)
    set_opacity(opacity, sid)
    view = S.view_of(ratio, left, right, labels, use_tokens)
    d = S.draw(sid, heat=True, view=view, top5=False)
    return pack(d, OPACITY_KEYS)


def api_opacity(opacity, ratio, left, right, request: gr.Request) -> tuple:
    """Both rankings drawn at this overlay opacity (0 = the image, 1 = colours only)."""
    sid = _sid(request)
    current(sid)
    set_opacity(opacity, sid)
    d = S.draw(sid, heat=True, view=S.view_of(ratio, left, right, _labels_of(sid), False), top5=False)
    return pack(d, OPACITY_KEYS, labels=False)


def on_patch_click(ratio, evt: gr.SelectData, request: gr.Request) -> str:
    """A click on any of the four panels: that patch's rank under each ranker."""
    sid = _sid(request)
    a = get_session(sid).analysis
    if a is None or not evt.index:
        return ""
    x, y = evt.index[:2]
    cell = a.view.shape[0] // a.grid[0]
    if y >= a.grid[0] * cell:
        return "Click on the image part of a panel (not its caption) to see that patch's ranks."
    return patch_ranks(y // cell, x // cell, ratio, sid)


def api_patch_rank(row, col, ratio, request: gr.Request) -> str:
    """Rank of patch (row, col) (0-based, row-major) under every ranker, kept at ``ratio``."""
    return patch_ranks(row, col, ratio, _sid(request))
