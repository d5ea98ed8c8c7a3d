"""Listeners: thin wrappers that pass gradio's session hash and progress bar to the plain
functions of the app (``app.state`` for what the Explore tab shows, and the services by concern:
``analysis``, ``panels``, ``pruning``, ``curve``, ``exports``, ``models``, ``predictors``,
``tradeoffs``) and turn their ``{key: value}`` results into the tuples gradio expects
(``app.outputs.pack``). Which listener is bound to which event is ``app.wiring``.

Each user action is one request: a new image, a model switch or a predictor upload is one
generator that yields successive complete states (fast rankers, then golden with top-5 and
costs, then the curve) instead of a chain of follow-up events, and the keep ratio has a single
listener whatever moved it (drag, keys, number box, reset).
"""
from __future__ import annotations

from typing import Iterator

import gradio as gr

import app.curve as C
import app.exports as X
import app.models as models
import app.predictors as P
import app.scene_note as scene_note
import app.state as S
import app.tradeoffs as T
from .analysis import current, default_golden_mode, model_for
from .outputs import FILES, IMAGE_KEYS, MODEL_KEYS, RANKER_KEYS, pack, sid as _sid
from .panels import analyze_views, threshold, views
from .pruning import prune
from .sessions import session as get_session


# -- the Explore tab's own listeners (private) ----------------------------------------------------
def on_image(image, golden_mode, ratio, left, right, labels, use_tokens, request: gr.Request,
             progress=gr.Progress()) -> Iterator[tuple]:
    """A new, pasted, removed or example image, or another golden mode: every result redrawn."""
    view = S.view_of(ratio, left, right, labels, use_tokens)
    for d in S.image_stream(image, golden_mode, view, session=_sid(request), progress=progress):
        yield pack(d, IMAGE_KEYS)


def on_ratio(ratio, left, right, labels, use_tokens, request: gr.Request) -> Iterator[tuple]:
    """Any keep-ratio change (drag frame, arrow key, number box, reset): masks and agreement at
    once (no model run), then top-5 and costs (a pruned forward, slow on a large model), all for
    the ratio shown and labelled with it. Values the number box passes through while a person
    types ("0", empty) are ignored until they are a keep ratio."""
    if not S.ratio_in_range(ratio):
        yield pack({}, S.VIEW_KEYS)
        return
    view = S.view_of(ratio, left, right, labels, use_tokens)
    first = S.draw(_sid(request), heat=False, view=view, top5=False)
    yield pack(first, S.VIEW_KEYS)
    if first.get("agreement", S.SKIP) is not S.SKIP:
        yield pack(S.draw(_sid(request), panels=False), S.VIEW_KEYS)


def on_rankers(ratio, left, right, labels, use_tokens, request: gr.Request) -> tuple:
    """Another ranker on either side: both rankings, masks, agreement, top-5 and costs."""
    view = S.view_of(ratio, left, right, labels, use_tokens)
    d = S.draw(_sid(request), heat=True, view=view)
    return pack({**d, "minkeep": S.min_keep_md(_sid(request))}, RANKER_KEYS)


def on_labels(ratio, left, right, labels, use_tokens, request: gr.Request,
              progress=gr.Progress()) -> Iterator[tuple]:
    """New class labels or learnable tokens switched: top-5, costs and curve; exports cleared.
    Unchanged labels (a blur after Enter) do nothing."""
    sess = get_session(_sid(request))
    view = S.view_of(ratio, left, right, labels, use_tokens)
    if sess.view == view and sess.curve_labels == labels and sess.analysis is not None:
        yield pack({}, S.LABEL_OUT)
        return
    for d in S.labels_stream(view, session=_sid(request), progress=progress):
        yield pack(d, S.LABEL_OUT)


def _load_stream(load, choice, image, golden_mode, ratio, left, right, labels, use_tokens,
                 request, progress) -> Iterator[tuple]:
    """A model load, then (if it worked) the image analysed with it, as one request. A failed
    load keeps the current model and gives its reason as one toast (a warning, not an error:
    an error would stamp "Error" on every output of the event)."""
    sid = _sid(request)
    msg, new_labels, value = load()
    if new_labels is None:
        gr.Warning(msg.replace("**", "").replace("`", ""))
        yield pack({"model_status": msg, "model": value, "local_box": value == "local"},
                   MODEL_KEYS + IMAGE_KEYS)
        return
    golden_mode = default_golden_mode(sid)
    yield pack({"model_status": msg, "labels": new_labels, "model": value, "pred_menu": P.menu_update(sid),
                "local_box": value == "local", "golden_mode": golden_mode,
                "layer": S.layer_update(model_for(get_session(sid))[1])}, MODEL_KEYS + IMAGE_KEYS)
    view = S.view_of(ratio, left, right, new_labels, use_tokens)
    for d in S.image_stream(image, golden_mode, view, session=sid, progress=progress):
        yield pack({}, MODEL_KEYS) + pack(d, IMAGE_KEYS)


def on_pick_model(choice, arch, path, image, golden_mode, ratio, left, right, labels, use_tokens,
                  request: gr.Request, progress=gr.Progress(track_tqdm=True)) -> Iterator[tuple]:
    """A model chosen in the menu: load it (the local entry only shows its fields)."""
    if choice == "local":
        yield pack({"model_status": "Enter the architecture and a checkpoint path (or "
                    "`local-dir:/folder`), then press **Load model**.", "local_box": True},
                   MODEL_KEYS + IMAGE_KEYS)
        return
    yield from _load_stream(lambda: models.load_model(choice, arch, path, session=_sid(request),
                                                 progress=progress),
                            choice, image, golden_mode, ratio, left, right, labels, use_tokens,
                            request, progress)


def on_load_button(choice, arch, path, image, golden_mode, ratio, left, right, labels, use_tokens,
                   request: gr.Request, progress=gr.Progress(track_tqdm=True)) -> Iterator[tuple]:
    """The Load model button (the local checkpoint's fields are kept as typed)."""
    yield from _load_stream(lambda: models.load_model(choice, arch, path, session=_sid(request),
                                                 progress=progress),
                            choice, image, golden_mode, ratio, left, right, labels, use_tokens,
                            request, progress)


def on_predictor_file(file, image, golden_mode, ratio, left, right, labels, use_tokens,
                      request: gr.Request, progress=gr.Progress()) -> Iterator[tuple]:
    """An uploaded predictor file, then the image analysed with it, as one request."""
    sid = _sid(request)
    msg = P.upload_predictor(file, session=sid)
    yield (msg,) + pack({}, IMAGE_KEYS)
    view = S.view_of(ratio, left, right, labels, use_tokens)
    for d in S.image_stream(image, golden_mode, view, session=sid, progress=progress):
        yield (gr.skip(),) + pack(d, IMAGE_KEYS)


def on_choose_predictor(choice, image, golden_mode, ratio, left, right, labels, use_tokens,
                        request: gr.Request, progress=gr.Progress()) -> Iterator[tuple]:
    """A predictor chosen in the menu, then the image analysed with it, as one request. A
    failure is one toast; the menu goes back to the predictor still in use."""
    sid = _sid(request)
    try:
        msg = P.choose(choice, session=sid, progress=progress)
    except gr.Error as e:
        gr.Warning(e.message)
        yield (gr.update(value=P.current_source(sid)), f"**Predictor not changed**: {e.message}") \
            + pack({}, IMAGE_KEYS)
        return
    yield (gr.skip(), msg) + pack({}, IMAGE_KEYS)
    view = S.view_of(ratio, left, right, labels, use_tokens)
    for d in S.image_stream(image, golden_mode, view, session=sid, progress=progress):
        yield (gr.skip(), gr.skip()) + pack(d, IMAGE_KEYS)


def on_real_clip(arch, path, image, golden_mode, ratio, left, right, labels, use_tokens,
                 request: gr.Request, progress=gr.Progress()) -> Iterator[tuple]:
    """The "not a scene" note's button: the model menu's own switch to ``scene_note.REAL_CLIP``
    (download shown, image redone)."""
    yield from on_pick_model(scene_note.REAL_CLIP, arch, path, image, golden_mode, ratio, left,
                             right, labels, use_tokens, request, progress)


# -- named API endpoints (one call, one result; bad values raise) ---------------------------------
def on_analyze(image, golden_mode, ratio, left, right, request: gr.Request,
               progress=gr.Progress(track_tqdm=True)) -> tuple:
    """Rank the image's patches with every ranker (golden included); draw rankings and keep masks."""
    return FILES.all(analyze_views(image, golden_mode, ratio, left, right, session=_sid(request),
                                      progress=progress))


def on_set_ratio(ratio, left, right, labels, use_tokens, request: gr.Request) -> tuple:
    """Everything that depends on the keep ratio, for one ratio: both keep masks, agreement,
    top-5 of the full and both pruned models, kept tokens / GFLOPs / latency."""
    view = S.view_of(ratio, left, right, labels, use_tokens)
    current(_sid(request))                       # no image yet: say so
    d = S.draw(_sid(request), heat=False, view=view)
    return pack(d, S.VIEW_KEYS[2:], labels=False)


def on_views(ratio, left, right, request: gr.Request) -> tuple:
    """Redraw both rankings and keep masks from cached orders (no model run)."""
    return FILES.all(views(ratio, left, right, session=_sid(request)))


def on_threshold(ratio, left, right, request: gr.Request) -> tuple:
    """Re-threshold the cached orders: both keep masks and the agreement (no model run)."""
    return FILES.all(threshold(ratio, left, right, session=_sid(request)))


def on_prune(ratio, left, right, labels, use_tokens, request: gr.Request) -> tuple:
    """Pruned forward for both rankers: top-5 zero-shot, kept tokens, GFLOPs, latency."""
    return prune(ratio, left, right, labels, bool(use_tokens), session=_sid(request))


def on_curve(labels, request: gr.Request, progress=gr.Progress()) -> tuple:
    """Top-class probability vs keep ratio for every ranker, with the flip points."""
    return C.curve(labels, session=_sid(request), progress=progress)


def on_export(ratio, left, right, labels, request: gr.Request, progress=gr.Progress()) -> list[str]:
    """Overlay PNGs, rankings and the per-image curve (JSON + CSV) as downloadable files."""
    return X.export(ratio, left, right, labels, session=_sid(request), progress=progress)


def on_load_model(choice, arch, path, request: gr.Request,
                  progress=gr.Progress(track_tqdm=True)) -> tuple:
    """Switch this session's model: (status, labels, menu value, golden mode). A failed load
    keeps the current model and says why in the status."""
    msg, labels, value = models.load_model(choice, arch, path, session=_sid(request), progress=progress)
    if labels is None:
        return msg, gr.skip(), value, gr.skip()
    return msg, labels, value, default_golden_mode(_sid(request))


def on_label_preset(preset, request: gr.Request) -> str:
    """Fill the labels box with a label set (the session keeps it across model changes)."""
    return models.label_preset(preset, session=_sid(request))


def on_upload_predictor(file, request: gr.Request) -> str:
    """Use an uploaded predictor file for the current model (refused if made for another model)."""
    return P.upload_predictor(file, session=_sid(request))


def api_choose_predictor(choice, request: gr.Request, progress=gr.Progress()) -> str:
    """``/choose_predictor``: use a listed predictor (refused if not listed for the model)."""
    return P.choose(choice, session=_sid(request), progress=progress)


def api_predictors(request: gr.Request) -> list[dict]:
    """``/predictors``: the predictors listed for the session's model."""
    _, m = model_for(get_session(_sid(request)))
    return [{"model": e.model, "tag": e.tag, "source": e.source, "description": e.description}
            for e in P.known(m)[0]]


def on_sweep(spec, limit, include_golden, focus, request: gr.Request,
             progress=gr.Progress(track_tqdm=True)) -> tuple:
    """Accuracy / GFLOPs / latency per method and keep ratio on a labelled dataset, computed now."""
    return T.sweep_dataset(spec, limit, include_golden, focus, session=_sid(request), progress=progress)


def on_tradeoff(focus: bool = True) -> tuple:
    """Accuracy vs GFLOPs (zoomed on the close methods when ``focus``) and latency vs keep
    ratio (median over methods with its spread) from the precomputed sweep results."""
    return T.tradeoff(focus=focus)
