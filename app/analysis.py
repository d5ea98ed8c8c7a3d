"""The analysis of one image: every ranker's patch order on the session's model, computed once.

An ``Analysis`` is what every other part of the app draws from (panels, top-5, curve, exports),
so it is computed once per (model, prune layer, predictor, image, golden settings) and shared,
read-only, by all sessions (``ANALYSES``); the slow golden search is added to it later
(``ensure_golden``) so the fast rankers can be shown first. The small checks every handler
makes on what a request sends (a keep ratio, two rankers, class labels, an analysed image) are
here too, turned into ``gr.Error`` messages a person can act on.
"""
from __future__ import annotations

import functools
import hashlib
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import torch

import patchrank as pr
from patchrank.errors import PatchRankError

import app.engine as engine
import app.example_cache as example_cache
import app.plots as plots
import app.render as render
from .inputs import InputError, check_choice, check_ratio, load_image, parse_labels
from .progress import Progress, reporter, with_eta
from .sessions import LRU, session as get_session

#: Finished analyses shared by all sessions (same model + predictor + image + golden mode).
ANALYSES: LRU = LRU(24)
_ANALYSIS_LOCKS: LRU = LRU(64)
#: Above this many GFLOPs on a CPU the golden search defaults to one-shot on 2x2 cells.
FAST_GOLDEN_GFLOPS = 2.0


def fail(e: Exception) -> gr.Error:
    """A refusal as the toast a person reads (no traceback in the server log)."""
    return gr.Error(str(e).strip() or type(e).__name__, print_exception=False)


def ranker_choices() -> list[tuple[str, str]]:
    """(label, value) pairs for the two ranker selectors: golden, predictor, then the engine's."""
    names = engine.registered_rankers()
    values = list(engine.BUILTIN_ORDERED) + [n for n in names if n not in engine.BUILTIN_ORDERED]
    # a merger is offered only if the app can draw what it keeps (no placeholder panels)
    values = [v for v in values if v not in names or not engine.is_merger(v)
              or v in engine.DRAWABLE_MERGERS]
    return [(plots.display_name(v), v) for v in values]


RANKER_VALUES = [v for _, v in ranker_choices()]


# -- the analysis of one image --------------------------------------------------------------------
@dataclass
class Analysis:
    """Everything computed once per (model, predictor, image, golden mode); read-only after."""
    key: str
    model_key: str
    model: Any
    view: np.ndarray                       # the model's crop, drawn at display size
    x: torch.Tensor                        # preprocessed [1,3,H,W]
    orders: dict[str, np.ndarray]          # ranker -> order [P], most important first
    mergers: list[str]                     # available merging "rankers" (no order)
    missing: dict[str, str]                # ranker -> why it is not available
    full_emb: torch.Tensor                 # unpruned embedding [E]
    golden_mode: str
    predictor_source: str | None
    seconds: dict[str, float]
    notes: list[str]
    image_name: str = "image"
    golden_target: str = "similarity"                # engine.GOLDEN_TARGETS key or class:<label>
    golden_kwargs: dict = field(default_factory=dict)  # engine.golden_target_kwargs for it
    curve_embs: dict = field(default_factory=dict)   # filled by curve(): ratios + embeddings
    taus: dict = field(default_factory=dict)         # (left, right) -> Kendall tau
    prefix: torch.Tensor | None = None               # tokens entering the prune layer (merging)
    groups: dict = field(default_factory=dict)       # kept count -> ToMe group per patch
    merger_orders: dict = field(default_factory=dict)  # merger -> order of what it keeps (EViT)
    ranker_gflops: dict = field(default_factory=dict)  # ranker -> GFLOPs of choosing (None: unknown)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @functools.cached_property
    def mask_bases(self) -> tuple[np.ndarray, np.ndarray]:
        return render.mask_bases(self.view, self.model.grid)

    @property
    def grid(self) -> tuple[int, int]:
        return self.model.grid

    @property
    def num_patches(self) -> int:
        return self.model.num_patches


def model_for(sess) -> tuple[str, Any]:
    """The session's model (key, model), back to the bundled one if it was dropped."""
    try:
        return sess.model_key, engine.REGISTRY.get(sess.model_key)
    except KeyError:        # dropped from the registry meanwhile: back to the bundled model
        sess.model_key = "bundled"
        return "bundled", engine.REGISTRY.bundled()


def predictor_for(sess, m) -> tuple[engine.PredictorInfo | None, str]:
    """The session's uploaded predictor for ``m`` or the shipped one; a predictor exists only
    for the prune layer it was trained at, so at another layer there is none, and why."""
    up = sess.predictors.get(m.model_id)
    if up is None:
        return engine.bundled_predictor(m)
    made = getattr(up.predictor, "prune_layer", None)
    if made is not None and made != m.prune_layer:
        return None, (f"the uploaded predictor was trained for pruning at block {made} and exists "
                      f"only for that layer (this analysis prunes at block {m.prune_layer})")
    return up, ""


def analysis_model(session: str | None) -> tuple[str, Any]:
    """The session's model at the session's prune layer (its default when none is chosen or the
    chosen one does not exist in this model)."""
    sess = get_session(session)
    model_key, m = model_for(sess)
    k = sess.layer
    return model_key, engine.at_layer(m, k if k is not None and 1 <= k < m.num_layers else None)


def golden_settings(session: str | None) -> tuple[str, dict]:
    """(golden target, ``golden_ranking`` arguments for it) from the session's choice and labels;
    a class-conditioned target with labels that cannot be read falls back to label-free."""
    sess = get_session(session)
    target = sess.golden_target or "similarity"
    if target == "similarity":
        return target, {}
    try:
        names = parse_labels(getattr(sess.view, "labels", ""), presets=[engine.IMAGENET_LABELS])
        return target, engine.golden_target_kwargs(target, names)
    except (InputError, PatchRankError):
        return "similarity", {}


def _name_of(image: Any) -> str:
    if isinstance(image, (str, os.PathLike)):
        return Path(image).stem[:60] or "image"
    if isinstance(image, dict) and (image.get("orig_name") or image.get("path")):
        return Path(image.get("orig_name") or image["path"]).stem[:60]
    return "image"


def analyze(image: Any, golden_mode: str = "exact", *, session: str | None = None,
            progress: Progress = None, golden: bool = True) -> "Analysis":
    """Rank the patches of ``image`` with every available ranker on the session's model, at the
    session's prune layer, with its golden target.

    ``golden=False`` skips the (slow) golden search; ``ensure_golden`` adds it later. Cached: the
    same image with the same model, layer, predictor and golden settings is analysed once for
    all sessions. Raises gr.Error for unreadable images."""
    try:
        img, notes = load_image(image)
    except InputError as e:
        raise fail(e) from None
    _, m = analysis_model(session)
    x = m.preprocess(img).unsqueeze(0)
    view = render.model_view(img, m.image_size, m.grid)
    return _analysis_of(x, view, notes, _name_of(image), golden_mode, session, progress, golden)


def reanalyze(golden_mode: str | None = None, *, session: str | None = None,
              progress: Progress = None, golden: bool = True) -> "Analysis":
    """The session's current image analysed again after a setting changed (prune layer, golden
    target or mode): the preprocessed image and its drawing do not depend on them."""
    a = current(session)
    return _analysis_of(a.x, a.view, a.notes, a.image_name, golden_mode or a.golden_mode, session,
                        progress, golden)


def _analysis_of(x, view, notes, name, golden_mode, session, progress, golden) -> "Analysis":
    sess = get_session(session)
    golden_mode = golden_mode if golden_mode in engine.GOLDEN_MODES else "exact"
    model_key, m = analysis_model(session)
    pred, pred_why = predictor_for(sess, m)
    target, gkw = golden_settings(session)
    digest = hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
    names = hashlib.sha256(repr(gkw.get("classnames", ())).encode()).hexdigest()[:8]
    key = (f"{m.model_id}|{m.prune_layer}|{pred.digest if pred else '-'}|{golden_mode}|{target}|"
           f"{names}|{digest}")
    lock = _ANALYSIS_LOCKS.setdefault(key, threading.Lock)
    with lock:
        hit = ANALYSES.get(key)
        if hit is None:
            hit = _compute_analysis(key, model_key, m, view, x, golden_mode, pred, pred_why, notes,
                                    name, progress)
            hit.golden_target, hit.golden_kwargs = target, gkw
            ANALYSES.put(key, hit)
    sess.analysis = hit
    if golden:
        ensure_golden(hit, progress)
    return hit


def _compute_analysis(key, model_key, m, view, x, golden_mode, pred, pred_why, notes, name,
                      progress) -> Analysis:
    seconds, orders, missing, mergers = {}, {}, {}, []
    report = reporter(progress)
    report(0.0, "full forward")
    t = time.perf_counter()
    full = engine.embed_full(m, x)
    seconds["full forward"] = time.perf_counter() - t
    names = engine.registered_rankers()
    for name_ in [v for v in RANKER_VALUES if v not in ("golden", "predictor")]:
        if name_ not in names:
            missing[name_] = f"the engine has no ranker named {name_!r}"
            continue
        t = time.perf_counter()
        try:
            if engine.is_merger(name_):
                mergers.append(name_)
                continue
            orders[name_] = engine.ranker_order(m, x, name_)
        except (PatchRankError, engine.EngineMissing) as e:
            missing[name_] = str(e)
        seconds[name_] = time.perf_counter() - t
    if pred is not None:
        t = time.perf_counter()
        try:
            orders["predictor"] = engine.ranker_order(m, x, "predictor", pred)
        except PatchRankError as e:
            missing["predictor"] = str(e)
        seconds["predictor"] = time.perf_counter() - t
    else:
        missing["predictor"] = pred_why
    if "golden" not in names:
        missing["golden"] = "the engine has no golden ranking"
    a = Analysis(key, model_key, m, view, x, orders, mergers, missing, full, golden_mode,
                 pred.source if pred else None, seconds, notes, name)
    a.ranker_gflops = {n: engine.ranker_gflops(m, n, golden_mode, pred)
                       for n in RANKER_VALUES if n not in missing or n == "golden"}
    if mergers:
        a.prefix = engine.prefix(m, x)
    if "attention+fuse" in mergers:            # EViT keeps its k-1 best patches: drawable
        a.merger_orders["attention+fuse"] = engine.fuse_order(m, a.prefix)
    return a


def golden_pending(a: Analysis) -> bool:
    return "golden" not in a.orders and "golden" not in a.missing


def ensure_golden(a: Analysis, progress: Progress = None) -> None:
    """Add the golden ranking to an analysis (once; other sessions wait for the same result)."""
    if not golden_pending(a):
        return
    with a.lock:
        if not golden_pending(a):
            return
        report = reporter(progress)
        report(None, f"golden ranking ({engine.GOLDEN_MODES[a.golden_mode]})")
        t = time.perf_counter()
        try:                    # the examples' cache first; the bar says the time left
            a.orders["golden"] = example_cache.golden_order(a.model, a.x, a.golden_mode,
                                                            progress=with_eta(report),
                                                            target=a.golden_kwargs or None)
        except (PatchRankError, engine.EngineMissing) as e:
            a.missing["golden"] = str(e)
        a.seconds["golden"] = time.perf_counter() - t
        report(1.0, "done")


def current(session: str | None) -> Analysis:
    """The session's analysed image; refused in words when there is none yet."""
    a = get_session(session).analysis
    if a is None:
        raise gr.Error("No image analysed yet in this session: upload an image (or pick an "
                       "example) first.", print_exception=False)
    return a


def checked(ratio: Any, left: Any, right: Any) -> tuple[float, str, str]:
    """A keep ratio and two rankers as a request sent them, checked (``gr.Error`` if not)."""
    try:
        return (check_ratio(ratio), check_choice(left, RANKER_VALUES, "ranker"),
                check_choice(right, RANKER_VALUES, "ranker"))
    except InputError as e:
        raise fail(e) from None


def class_labels(labels: Any) -> list[str]:
    """The class labels box (or a preset) as a list; refused labels become ``gr.Error``."""
    try:
        return parse_labels(labels, presets=[engine.IMAGENET_LABELS])
    except InputError as e:
        raise fail(e) from None


def class_probs(m, labels: list[str], emb: torch.Tensor, tokens=None) -> np.ndarray:
    """Zero-shot probabilities for ``labels``; what the engine refuses becomes ``gr.Error``."""
    try:
        return engine.probs(m, labels, emb, tokens)
    except PatchRankError as e:
        raise fail(e) from None


def default_golden_mode(session: str | None = None) -> str:
    """"exact" for small models (the bundled one), "fast" for large ones on a CPU."""
    _, m = model_for(get_session(session))
    big = float(pr.flops(m)) > FAST_GOLDEN_GFLOPS and m.device.type == "cpu"
    return "fast" if big else "exact"
