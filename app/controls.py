"""The controls peers' users ask for: overlay opacity, the prune layer, a class-conditioned
golden ranking, and clicking a patch to see its rank under every ranker.

Each is one listener (one request per action) plus one named API endpoint that does the same
for a ``gradio_client`` session. The prune layer and the golden target are analysis settings:
changing one re-analyses the current image (the engine's ``PatchModel.at_layer`` and
``golden_ranking(score=...)``) and redraws everything, as a new image does. Opacity only redraws
the two rankings; a click reads ranks the analysis already holds.
"""
from __future__ import annotations

from typing import Any, Iterator

import gradio as gr

from . import engine, events as E, handlers as H, plots, state as S
from patchrank.errors import PatchRankError

from .inputs import InputError, check_ratio
from .store import session as get_session

#: What a re-analysis redraws (the image input itself stays).
REANALYSIS_KEYS = S.RESULT_KEYS + ("right",)
#: Outputs of the opacity control: the two rankings.
OPACITY_KEYS = ("heat_l", "heat_r")


# -- prune layer ----------------------------------------------------------------------------------
def set_layer(layer: Any, session: str | None) -> int:
    """Record the session's prune layer (checked against its model); returns it."""
    _, m = H._model_for(get_session(session))
    try:
        k = int(layer)
    except (TypeError, ValueError):
        raise gr.Error(f"The prune layer must be a whole number, got {layer!r}.", print_exception=False) from None
    if not 1 <= k < m.num_layers:
        raise gr.Error(f"The prune layer must be between 1 and {m.num_layers - 1} for {m.name} "
                       f"({m.num_layers} blocks), got {k}.", print_exception=False)
    get_session(session).layer = k
    return k


def on_layer(layer, golden_mode, ratio, left, right, labels, use_tokens, request: gr.Request,
             progress=gr.Progress()) -> Iterator[tuple]:
    """Another prune layer: the image re-analysed there (rankings, masks, top-5, costs, curve)."""
    sid = E._sid(request)
    set_layer(layer, sid)
    view = S.view_of(ratio, left, right, labels, use_tokens)
    for d in S.reanalysis_stream(view, golden_mode, session=sid, progress=progress):
        yield E.pack(d, REANALYSIS_KEYS)


# -- golden target --------------------------------------------------------------------------------
def set_golden_target(target: Any, session: str | None) -> str:
    """Record what the session's golden search scores: "similarity", "max" or "class:<label>"."""
    target = str(target or "similarity").strip()
    try:
        engine.golden_target_kwargs(target, ["placeholder"])
    except PatchRankError as e:
        raise gr.Error(f"Unknown golden target: {e}.", print_exception=False) from None
    get_session(session).golden_target = target
    return target


def on_golden_target(target, golden_mode, ratio, left, right, labels, use_tokens,
                     request: gr.Request, progress=gr.Progress()) -> Iterator[tuple]:
    """The golden ranking scored for another target: the image re-analysed."""
    sid = E._sid(request)
    set_golden_target(target, sid)
    view = S.view_of(ratio, left, right, labels, use_tokens)
    for d in S.reanalysis_stream(view, golden_mode, session=sid, progress=progress):
        yield E.pack(d, REANALYSIS_KEYS)


def _api_views(view: S.View, sid: str | None, progress) -> tuple:
    """The API's answer after a setting changed: panels, agreement and status for the image
    analysed again (golden included), or a status alone when no image was analysed yet."""
    if get_session(sid).analysis is None:
        return (None,) * 5 + ("Setting kept; analyse an image (`/analyze`) to use it.",)
    a = H.reanalyze(session=sid, progress=progress)
    d = S.draw(sid, view=view, top5=False)
    return E.pack(d, ("heat_l", "heat_r", "mask_l", "mask_r", "agreement"), labels=False) + (H.status_md(a),)


def api_layer(layer, ratio, left, right, request: gr.Request, progress=gr.Progress()) -> tuple:
    """Prune at another block: (left/right rankings, left/right masks, agreement, status)."""
    sid = E._sid(request)
    set_layer(layer, sid)
    return _api_views(S.view_of(ratio, left, right, _labels_of(sid), False), sid, progress)


def api_golden_target(target, labels, ratio, left, right, request: gr.Request,
                      progress=gr.Progress()) -> tuple:
    """Golden scored for a target, against ``labels``: as ``api_layer``."""
    sid = E._sid(request)
    set_golden_target(target, sid)
    return _api_views(S.view_of(ratio, left, right, labels, False), sid, progress)


def _labels_of(sid: str | None) -> Any:
    return getattr(get_session(sid).view, "labels", "")


# -- opacity --------------------------------------------------------------------------------------
def set_opacity(opacity: Any, session: str | None) -> float:
    try:
        v = float(opacity)
    except (TypeError, ValueError):
        raise gr.Error(f"Opacity must be a number from 0 to 1, got {opacity!r}.", print_exception=False) from None
    if not 0.0 <= v <= 1.0:
        raise gr.Error(f"Opacity must be from 0 to 1, got {v}.", print_exception=False)
    get_session(session).opacity = v
    return v


def on_opacity(opacity, ratio, left, right, labels, use_tokens, request: gr.Request) -> tuple:
    """Heatmap opacity changed: both rankings redrawn (no model run)."""
    sid = E._sid(request)
    set_opacity(opacity, sid)
    view = S.view_of(ratio, left, right, labels, use_tokens)
    d = S.draw(sid, heat=True, view=view, top5=False)
    return E.pack(d, OPACITY_KEYS)


def api_opacity(opacity, ratio, left, right, request: gr.Request) -> tuple:
    """Both rankings drawn at this overlay opacity (0 = the image, 1 = colours only)."""
    sid = E._sid(request)
    H._current(sid)
    set_opacity(opacity, sid)
    d = S.draw(sid, heat=True, view=S.view_of(ratio, left, right, _labels_of(sid), False), top5=False)
    return E.pack(d, OPACITY_KEYS, labels=False)


# -- a patch's rank under every ranker ------------------------------------------------------------
def patch_ranks(row: Any, col: Any, ratio: Any, session: str | None) -> str:
    """Markdown: the rank of patch (row, col) under every ranker with an order, and whether it
    is kept at ``ratio``."""
    a = H._current(session)
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
    for name in [n for n in H.RANKER_VALUES if n in orders]:
        rank = int(engine.patch_ranks(orders[name])[p]) + 1
        lines.append(f"| {plots.display_name(name)} | {rank} of {a.num_patches} | "
                     f"{'yes' if rank <= k else 'no'} |")
    return "\n".join(lines)


def on_patch_click(ratio, evt: gr.SelectData, request: gr.Request) -> str:
    """A click on any of the four panels: that patch's rank under each ranker."""
    sid = E._sid(request)
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
    return patch_ranks(row, col, ratio, E._sid(request))
