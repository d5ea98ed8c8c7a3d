"""Listeners: thin wrappers that pass gradio's session hash and progress bar to the plain
functions in ``app.state`` and ``app.handlers`` and turn their ``{key: value}`` results into the
tuples gradio expects (``pack``).

Each user action is one request: a new image, a model switch or a predictor upload is one
generator that yields successive complete states (fast rankers, then golden with top-5 and
costs, then the curve) instead of a chain of follow-up events, and the keep ratio has a single
listener whatever moved it (drag, keys, number box, reset).
"""
from __future__ import annotations

import os
import threading
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from patchrank.files import atomic_path
from PIL import Image

from . import curve as C, engine, exports as X, handlers as H, state as S, tradeoffs as T

#: Outputs of an image (re)analysis, in the order ``app.ui`` lists their components.
IMAGE_KEYS = S.RESULT_KEYS + ("right", "image")
#: Outputs of a model switch that come before the image's.
MODEL_KEYS = ("model_status", "labels", "model", "local_box", "golden_mode", "pred_menu", "layer")
#: Outputs of the ranker menus: what depends on the view, and the slider's minimum-keep line.
RANKER_KEYS = S.VIEW_KEYS + ("minkeep",)


def image_input(**kwargs) -> gr.Image:
    """The image input. Every event that reads it is wired with ``preprocess=False``: the
    handler gets the uploaded file's payload and decodes it itself (``app.inputs``), so a
    non-image, a bomb or an odd mode gets the app's own message. Gradio's own decoding raises
    "Could not preprocess input component ..." with the server path instead, and overriding
    ``preprocess`` on the instance does not last: any update sent to the component (an example
    click, a cleared refusal) replaces the session's copy of it with a fresh ``gr.Image``."""
    return gr.Image(type="filepath", image_mode=None, **kwargs)


class PanelFiles:
    """Writes drawn panels as JPEG files for gradio to serve, under unique names and atomically.

    Handing gradio a PIL image makes it write ``<cache>/<content hash>/image.jpeg`` in place,
    truncating a file another user may be downloading when two users get the same picture (same
    image, same ratio); a path is instead copied into its cache atomically. Only the most recent
    ``keep`` files are kept here (gradio has its own copy by then)."""

    def __init__(self, keep: int = 256, quality: int = 90):
        self.keep, self.quality = keep, quality
        self._recent: deque[Path] = deque()
        self._lock = threading.Lock()

    def __call__(self, value):
        if not isinstance(value, Image.Image):
            return value
        path = H.app_tmp() / "panels" / f"{uuid.uuid4().hex}.jpg"
        with atomic_path(path) as tmp:
            value.convert("RGB").save(tmp, "JPEG", quality=self.quality)
        with self._lock:
            self._recent.append(path)
            old = [self._recent.popleft() for _ in range(max(0, len(self._recent) - self.keep))]
        for f in old:
            f.unlink(missing_ok=True)
        return path

    def all(self, values: tuple) -> tuple:
        return tuple(self(v) for v in values)


_files = PanelFiles()


def pack(results: dict[str, Any], keys: tuple[str, ...], labels: bool = True) -> tuple:
    """``{key: value}`` -> one value per key, in order: missing or ``SKIP`` keys are left as they
    are, ``Out`` values also set their panel's label (``labels=False`` for the API: plain values),
    images become served files."""
    out = []
    for key in keys:
        v = results.get(key, S.SKIP)
        if v is S.SKIP:
            out.append(gr.skip())
        elif isinstance(v, S.Out):
            labelled = labels and v.label
            out.append(gr.update(value=_files(v.value), label=v.label) if labelled else _files(v.value))
        elif key.endswith("_box"):                 # a group shown or hidden
            out.append(gr.update(visible=bool(v)))
        else:
            out.append(_files(v))
    return tuple(out)


def _sid(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


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
    sess = H.get_session(_sid(request))
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
    golden_mode = H.default_golden_mode(sid)
    from .predictors import menu_update        # (imports this module)
    yield pack({"model_status": msg, "labels": new_labels, "model": value, "pred_menu": menu_update(sid),
                "local_box": value == "local", "golden_mode": golden_mode,
                "layer": S.layer_update(H._model_for(H.get_session(sid))[1])}, MODEL_KEYS + IMAGE_KEYS)
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
    yield from _load_stream(lambda: H.load_model(choice, arch, path, session=_sid(request),
                                                 progress=progress),
                            choice, image, golden_mode, ratio, left, right, labels, use_tokens,
                            request, progress)


def on_load_button(choice, arch, path, image, golden_mode, ratio, left, right, labels, use_tokens,
                   request: gr.Request, progress=gr.Progress(track_tqdm=True)) -> Iterator[tuple]:
    """The Load model button (the local checkpoint's fields are kept as typed)."""
    yield from _load_stream(lambda: H.load_model(choice, arch, path, session=_sid(request),
                                                 progress=progress),
                            choice, image, golden_mode, ratio, left, right, labels, use_tokens,
                            request, progress)


def on_predictor_file(file, image, golden_mode, ratio, left, right, labels, use_tokens,
                      request: gr.Request, progress=gr.Progress()) -> Iterator[tuple]:
    """An uploaded predictor file, then the image analysed with it, as one request."""
    sid = _sid(request)
    msg = H.upload_predictor(file, session=sid)
    yield (msg,) + pack({}, IMAGE_KEYS)
    view = S.view_of(ratio, left, right, labels, use_tokens)
    for d in S.image_stream(image, golden_mode, view, session=sid, progress=progress):
        yield (gr.skip(),) + pack(d, IMAGE_KEYS)


# -- named API endpoints (one call, one result; bad values raise) ---------------------------------
def on_analyze(image, golden_mode, ratio, left, right, request: gr.Request,
               progress=gr.Progress(track_tqdm=True)) -> tuple:
    """Rank the image's patches with every ranker (golden included); draw rankings and keep masks."""
    return _files.all(H.analyze_views(image, golden_mode, ratio, left, right, session=_sid(request),
                                      progress=progress))


def on_set_ratio(ratio, left, right, labels, use_tokens, request: gr.Request) -> tuple:
    """Everything that depends on the keep ratio, for one ratio: both keep masks, agreement,
    top-5 of the full and both pruned models, kept tokens / GFLOPs / latency."""
    view = S.view_of(ratio, left, right, labels, use_tokens)
    H._current(_sid(request))                       # no image yet: say so
    d = S.draw(_sid(request), heat=False, view=view)
    return pack(d, S.VIEW_KEYS[2:], labels=False)


def on_views(ratio, left, right, request: gr.Request) -> tuple:
    """Redraw both rankings and keep masks from cached orders (no model run)."""
    return _files.all(H.views(ratio, left, right, session=_sid(request)))


def on_threshold(ratio, left, right, request: gr.Request) -> tuple:
    """Re-threshold the cached orders: both keep masks and the agreement (no model run)."""
    return _files.all(H.threshold(ratio, left, right, session=_sid(request)))


def on_prune(ratio, left, right, labels, use_tokens, request: gr.Request) -> tuple:
    """Pruned forward for both rankers: top-5 zero-shot, kept tokens, GFLOPs, latency."""
    return H.prune(ratio, left, right, labels, bool(use_tokens), session=_sid(request))


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
    msg, labels, value = H.load_model(choice, arch, path, session=_sid(request), progress=progress)
    if labels is None:
        return msg, gr.skip(), value, gr.skip()
    return msg, labels, value, H.default_golden_mode(_sid(request))


def on_label_preset(preset, request: gr.Request) -> str:
    """Fill the labels box with a label set (the session keeps it across model changes)."""
    return H.label_preset(preset, session=_sid(request))


def on_upload_predictor(file, request: gr.Request) -> str:
    """Use an uploaded predictor file for the current model (refused if made for another model)."""
    return H.upload_predictor(file, session=_sid(request))


def on_sweep(spec, limit, include_golden, focus, request: gr.Request,
             progress=gr.Progress(track_tqdm=True)) -> tuple:
    """Accuracy / GFLOPs / latency per method and keep ratio on a labelled dataset, computed now."""
    return T.sweep_dataset(spec, limit, include_golden, focus, session=_sid(request), progress=progress)


def on_tradeoff(focus: bool = True) -> tuple:
    """Accuracy vs GFLOPs (zoomed on the close methods when ``focus``) and latency vs keep
    ratio (median over methods with its spread) from the precomputed sweep results."""
    return T.tradeoff(focus=focus)


def preload_on_spaces() -> None:
    """On Spaces, load the default real-CLIP model in the background (the bundled one is ready)."""
    if engine.ON_SPACES and os.environ.get("PATCHRANK_PRELOAD", "1") != "0":
        def work():
            try:
                engine.REGISTRY.load(engine.SPACES_DEFAULT)
            except Exception as e:  # the app still works with the bundled model
                print(f"[patchrank] preload of {engine.SPACES_DEFAULT} failed: {e}")
        threading.Thread(target=work, daemon=True, name="preload").start()
