"""Event handlers as plain functions: images, numbers and strings in; PIL images, dicts, figures
and markdown out. The UI (``app.ui``) only wires them to components; tests call them directly.

Every handler takes ``session``: an id for the per-session state in ``app.store`` (the UI passes
gradio's session hash). Bad input raises ``gr.Error`` with a message a person can act on.
"""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import numpy as np
import torch

import patchrank as pr
from patchrank.bundled import BUNDLED_DIR
from patchrank.errors import ModelMismatch, PatchRankError

from . import engine, example_cache, messages, plots, render, scene_note
from .progress import downloaded_mb, downloads_shown, with_eta
from .inputs import InputError, check_choice, check_ratio, file_path, load_image, parse_labels
from .store import LRU, MAX_PREDICTORS_PER_SESSION, session as get_session

Progress = Callable[..., Any] | None
#: Example photos: repository-only (not in the wheel), like the results the trade-off tab reads.
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
#: Finished analyses shared by all sessions (same model + predictor + image + golden mode).
ANALYSES: LRU = LRU(24)
_ANALYSIS_LOCKS: LRU = LRU(64)
TRAIN_HINT = ("Train one with `python -m patchrank train-predictor` for this model (a GPU is "
              "advised: golden rankings for a few thousand images come first), then upload the "
              "`.safetensors` file below.")


def app_tmp() -> Path:
    """The app's temporary folder: exports and generated example scenes are written only here."""
    root = Path(os.environ.get("PATCHRANK_APP_TMP") or Path(tempfile.gettempdir()) / "patchrank-app")
    root = root / "files"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _fail(e: Exception) -> gr.Error:
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @functools.cached_property
    def mask_bases(self) -> tuple[np.ndarray, np.ndarray]:
        return render.mask_bases(self.view, self.model.grid)

    @property
    def grid(self) -> tuple[int, int]:
        return self.model.grid

    @property
    def num_patches(self) -> int:
        return self.model.num_patches


def _model_for(sess) -> tuple[str, Any]:
    try:
        return sess.model_key, engine.REGISTRY.get(sess.model_key)
    except KeyError:        # dropped from the registry meanwhile: back to the bundled model
        sess.model_key = "bundled"
        return "bundled", engine.REGISTRY.bundled()


def _predictor_for(sess, m) -> tuple[engine.PredictorInfo | None, str]:
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
    model_key, m = _model_for(sess)
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
        raise _fail(e) from None
    _, m = analysis_model(session)
    x = m.preprocess(img).unsqueeze(0)
    view = render.model_view(img, m.image_size, m.grid)
    return _analysis_of(x, view, notes, _name_of(image), golden_mode, session, progress, golden)


def reanalyze(golden_mode: str | None = None, *, session: str | None = None,
              progress: Progress = None, golden: bool = True) -> "Analysis":
    """The session's current image analysed again after a setting changed (prune layer, golden
    target or mode): the preprocessed image and its drawing do not depend on them."""
    a = _current(session)
    return _analysis_of(a.x, a.view, a.notes, a.image_name, golden_mode or a.golden_mode, session,
                        progress, golden)


def _analysis_of(x, view, notes, name, golden_mode, session, progress, golden) -> "Analysis":
    sess = get_session(session)
    golden_mode = golden_mode if golden_mode in engine.GOLDEN_MODES else "exact"
    model_key, m = analysis_model(session)
    pred, pred_why = _predictor_for(sess, m)
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
    report = _progress_fn(progress)
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
    with a._lock:
        if not golden_pending(a):
            return
        report = _progress_fn(progress)
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


def _progress_fn(progress: Progress) -> Callable[[float, str], None]:
    def report(frac: float | None, desc: str = "") -> None:
        if progress is not None:
            try:
                progress(None if frac is None else min(1.0, max(0.0, float(frac))), desc=desc)
            except Exception:   # a progress bar must never break the work
                pass
    return report


def _current(session: str | None) -> Analysis:
    a = get_session(session).analysis
    if a is None:
        raise gr.Error("No image analysed yet in this session: upload an image (or pick an "
                       "example) first.", print_exception=False)
    return a


# -- drawing the panels ---------------------------------------------------------------------------
def golden_title(a: Analysis) -> str:
    """What the golden search scored, for panel titles: "" when label-free."""
    kw = a.golden_kwargs
    if not kw:
        return ""
    if kw.get("score") == "max":
        return "for the predicted class"
    return f"for '{kw['classnames'][kw['labels'][0]]}'"


def _heat_panel(a: Analysis, name: str, ratio: float, opacity: float = render.HEAT_ALPHA):
    title = plots.display_name(name)
    title += "" if title.endswith("ranking") else " ranking"
    if name in a.orders:
        if name == "golden":
            title = f"golden {golden_title(a) or 'ranking'} ({a.golden_mode}, block {a.model.prune_layer})"
        return render.heatmap(a.view, a.orders[name], a.grid, title, alpha=opacity)
    if name in a.merger_orders:
        return render.heatmap(a.view, a.merger_orders[name], a.grid,
                              f"{title}: CLS attention at block {a.model.prune_layer}", alpha=opacity)
    if name in a.mergers:
        return _groups_panel(a, name, ratio)
    if name == "golden" and golden_pending(a):
        return render.placeholder(a.view, "Computing the golden ranking "
                                  f"({engine.GOLDEN_MODES[a.golden_mode]})...")
    return render.placeholder(a.view, _why_missing(a, name))


def _groups_panel(a: Analysis, name: str, ratio: float):
    if name != "tome" or a.prefix is None:
        return render.placeholder(a.view, f"{plots.display_name(name)} merges tokens: it has no "
                                  "per-patch order or groups to draw. Its accuracy is in the curve.")
    k = a.model.keep_count(ratio)
    groups = a.groups.get(k)
    if groups is None:
        try:
            groups = engine.tome_groups(a.model, a.prefix, k)
        except (PatchRankError, engine.EngineMissing) as e:
            return render.placeholder(a.view, f"{plots.display_name(name)}: {e}")
        if len(a.groups) > 64:
            a.groups.clear()
        a.groups[k] = groups
    return render.groups_overlay(a.view, groups, a.grid,
                                 f"{plots.display_name(name)} groups at keep {ratio:.2f}")


def _why_missing(a: Analysis, name: str) -> str:
    why = a.missing.get(name, "not available for this model")
    if name == "predictor":
        return f"No predictor for this model: {why}." + ("" if "train-predictor" in why else f" {TRAIN_HINT}")
    return f"{plots.display_name(name)}: {why}"


def _mask_panel(a: Analysis, name: str, ratio: float):
    k = a.model.keep_count(ratio)
    if name in a.orders:
        return render.mask_overlay(a.view, render.keep_mask(a.orders[name], k), a.grid,
                                   f"{plots.display_name(name)} at keep ratio {ratio:.2f}", a.mask_bases)
    if name in a.merger_orders:               # EViT: k-1 patches kept, the rest fused into one token
        keep = render.keep_mask(a.merger_orders[name], max(1, k - 1))
        return render.mask_overlay(a.view, keep, a.grid, f"{plots.display_name(name)} keep {ratio:.2f}: "
                                   "dimmed = fused into 1 token", a.mask_bases)
    if name in a.mergers:
        return _groups_panel(a, name, ratio)
    if name == "golden" and golden_pending(a):
        return render.placeholder(a.view, "Computing the golden ranking...")
    return render.placeholder(a.view, _why_missing(a, name))


def _with_rankers(a: Analysis, encoder_gflops: float, left: str, right: str) -> str:
    """"golden 41.1 (its search), predictor 0.284": the pruned encoder's GFLOPs plus what each
    side's ranker spends choosing (equal cost means all cost; ``engine.ranker_gflops``)."""
    costs = []
    for name in dict.fromkeys((left, right)):
        g = a.ranker_gflops.get(name)
        costs.append(f"{plots.display_name(name)} "
                     f"{'unknown' if g is None else format(encoder_gflops + g, '.3g')}"
                     + (" (its search)" if name == "golden" else ""))
    return ", ".join(costs)


def _agreement_md(a: Analysis, left: str, right: str, ratio: float) -> str:
    k = a.model.keep_count(ratio)
    enc = float(pr.flops(a.model, keep=k))
    head = (f"**Keep ratio {ratio:.2f}**: {k} of {a.num_patches} patches kept from block "
            f"{a.model.prune_layer} on; GFLOPs {enc:.3f} of {float(pr.flops(a.model)):.3f} for the "
            f"encoder (1 MAC = 2 FLOPs), with each side's ranker: "
            f"{_with_rankers(a, enc, left, right)}.")
    orders = {**a.merger_orders, **a.orders}
    if "golden" in (left, right) and golden_pending(a):
        return head + "  \nAgreement: computing the golden ranking; it follows in a moment."
    if left not in orders or right not in orders:
        return head + "  \nAgreement needs two rankers with a patch order (ToMe merges tokens instead)."
    if left == right:
        return head + "  \nBoth sides show the same ranker."
    tau = a.taus.get((left, right))
    if tau is None:
        tau = a.taus[(left, right)] = engine.kendall_tau(orders[left], orders[right])
    iou = engine.kept_iou(orders[left], orders[right], ratio)
    return (head + f"  \n**{plots.display_name(left)} vs {plots.display_name(right)}**: "
            f"Kendall tau {tau:+.3f} over the full order; kept-set IoU {iou:.3f} at this ratio.  \n"
            "*Kendall tau: +1 = the same order of all patches, 0 = unrelated, -1 = reversed. "
            "Kept-set IoU: patches both keep / patches either keeps (1 = the same kept set).*")


def _checked(ratio: Any, left: Any, right: Any) -> tuple[float, str, str]:
    try:
        return (check_ratio(ratio), check_choice(left, RANKER_VALUES, "ranker"),
                check_choice(right, RANKER_VALUES, "ranker"))
    except InputError as e:
        raise _fail(e) from None


def views(ratio: float, left: str, right: str, *, session: str | None = None) -> tuple:
    """All four panels + agreement: (heat_left, heat_right, mask_left, mask_right, markdown)."""
    ratio, left, right = _checked(ratio, left, right)
    a = _current(session)
    return (_heat_panel(a, left, ratio), _heat_panel(a, right, ratio), _mask_panel(a, left, ratio),
            _mask_panel(a, right, ratio), _agreement_md(a, left, right, ratio))


def threshold(ratio: float, left: str, right: str, *, session: str | None = None) -> tuple:
    """The slider's fast path: re-threshold cached orders, no model run.
    Returns (mask_left, mask_right, agreement markdown)."""
    ratio, left, right = _checked(ratio, left, right)
    a = _current(session)
    return _mask_panel(a, left, ratio), _mask_panel(a, right, ratio), _agreement_md(a, left, right, ratio)


def status_md(a: Analysis) -> str:
    m = a.model
    lines = [f"**Model** {engine.describe(m)}."]
    secs = ", ".join(f"{k} {v * 1e3:.0f} ms" if v < 1 else f"{k} {v:.1f} s"
                     for k, v in a.seconds.items())
    lines.append(f"**Analysed** `{a.image_name}` ({secs})."
                 + (" Golden ranking in progress..." if golden_pending(a) else ""))
    if a.notes:
        lines.append("**Input** " + "; ".join(a.notes) + ".")
    lines += scene_note.status_lines(a)           # a photo on the bundled model: say what it knows
    if a.golden_kwargs or m.prune_layer != engine.REGISTRY.get(a.model_key).prune_layer:
        lines.append(f"**Settings** pruned at block {m.prune_layer}; golden ranking "
                     f"{golden_title(a) or 'label-free'}.")
    if "predictor" in a.missing:
        why = a.missing["predictor"]
        lines.append(f"**No predictor for this model**: {why}."
                     + ("" if "train-predictor" in why else f" {TRAIN_HINT}")
                     + " Until then, compare the golden ranking with the training-free rankers.")
    elif a.predictor_source and a.predictor_source != "bundled":
        src = a.predictor_source
        lines.append(f"**Predictor** {src}." if src.startswith("listed ") else f"**Predictor** uploaded file `{src}`.")
    other = {k: v for k, v in a.missing.items() if k != "predictor"}
    if other:
        lines.append("**Not available**: " + "; ".join(f"{plots.display_name(k)}: {v}"
                                                       for k, v in other.items()) + ".")
    return "  \n".join(lines)


def analyze_views(image: Any, golden_mode: str, ratio: float, left: str, right: str, *,
                  session: str | None = None, progress: Progress = None, golden: bool = True) -> tuple:
    """Analyse then draw: (heat_left, heat_right, mask_left, mask_right, agreement md, status md)."""
    ratio, left, right = _checked(ratio, left, right)
    a = analyze(image, golden_mode, session=session, progress=progress, golden=golden)
    return (*views(ratio, left, right, session=session), status_md(a))


def golden_views(ratio: float, left: str, right: str, *, session: str | None = None,
                 progress: Progress = None) -> tuple:
    """Add the golden ranking to the current analysis, then redraw (as ``analyze_views``)."""
    ratio, left, right = _checked(ratio, left, right)
    a = _current(session)
    ensure_golden(a, progress)
    return (*views(ratio, left, right, session=session), status_md(a))


# -- pruned forward on release --------------------------------------------------------------------
def _labels(labels: Any) -> list[str]:
    try:
        return parse_labels(labels, presets=[engine.IMAGENET_LABELS])
    except InputError as e:
        raise _fail(e) from None


def _probs(m, labels: list[str], emb: torch.Tensor, tokens=None) -> np.ndarray:
    try:
        return engine.probs(m, labels, emb, tokens)
    except PatchRankError as e:
        raise _fail(e) from None


def _label_dict(labels: list[str], p: np.ndarray, top: int = 5) -> dict[str, float]:
    idx = np.argsort(-p)[:top]
    return {labels[i]: float(p[i]) for i in idx}


def _pruned_emb(a: Analysis, name: str, ratio: float, tokens=None) -> torch.Tensor | None:
    k = a.model.keep_count(ratio)
    if name in a.orders:
        return engine.embed_kept(a.model, a.x, [a.orders[name][:k]], tokens)[0]
    if name in a.mergers:
        return engine.embed_merged(a.model, a.x, ratio, name, tokens)
    return None


def prune(ratio: float, left: str, right: str, labels: Any, use_tokens: bool = False, *,
          session: str | None = None) -> tuple:
    """Run the pruned forward at ``ratio`` for both rankers (with the model's learnable tokens
    appended when ``use_tokens`` and it has some): (top-5 full, top-5 left, top-5 right, cost
    markdown). Top-5 are {label: probability} dicts."""
    ratio, left, right = _checked(ratio, left, right)
    names = _labels(labels)
    a = _current(session)
    m = a.model
    k = m.keep_count(ratio)
    tokens, tok_note = None, ""
    if use_tokens:
        tokens, why = engine.bundled_tokens(m)
        if tokens is not None and not tokens.covers(ratio):
            lo, hi = tokens.keep_range
            tokens, why = None, (f"they were trained for keep {lo:g}-{hi:g} (above that little is "
                                 f"pruned and they would only add noise); not applied at {ratio:g}")
            tok_note = f"  \n**Learnable tokens not used**: {why}."
        else:
            tok_note = (f"  \n**Learnable tokens** {tokens.num_visual} visual"
                        + (f" + {tokens.n_ctx} text context" if getattr(tokens, 'n_ctx', 0) else "")
                        + " appended after pruning (pruned side only)." if tokens is not None
                        else f"  \n**No learnable tokens for this model**: {why}.")
    full = _probs(m, names, a.full_emb)[0]
    out = [_label_dict(names, full)]
    for name in (left, right):
        emb = _pruned_emb(a, name, ratio, tokens)
        out.append({} if emb is None else _label_dict(names, _probs(m, names, emb, tokens)[0]))
    timed = next((n for n in (left, right, "golden", "random") if n in a.orders), None)
    lat_p, lat_f = engine.time_forward(m, a.x, None if timed is None else a.orders[timed][:k], tokens=tokens)
    extra = tokens.num_visual if tokens is not None else 0
    g_p, g_f = float(pr.flops(m, keep=k, extra_tokens=extra)), float(pr.flops(m))
    costs = _with_rankers(a, g_p, left, right)
    top = names[int(np.argmax(full))]
    flips = []
    for name, d in zip((left, right), out[1:]):
        if d:
            p_top = next(iter(d))
            flips.append(f"{plots.display_name(name)}: top-1 **{p_top}**"
                         + (" (same as full)" if p_top == top else " (**changed**)"))
    md = (f"**Kept tokens** {k} of {a.num_patches} patches (+ CLS"
          + (f" + {extra} learnable" if extra else "") + f") from block {m.prune_layer} on.  \n"
          f"**GFLOPs** {g_p:.3f} pruned encoder vs {g_f:.3f} full ({100 * (1 - g_p / g_f):.0f}% "
          f"fewer; analytic, 1 MAC = 2 FLOPs); with the ranker's own cost: " + costs
          + ".  \n"
          f"**Latency** {lat_p:.1f} ms pruned vs {lat_f:.1f} ms full (x{lat_f / max(lat_p, 1e-6):.2f}); "
          f"this image, batch 1, median of 3 on this server's CPU." + latency_note(g_f, lat_p, lat_f)
          + "  \n"
          f"**Full model** top-1 **{top}**. " + "; ".join(flips) + tok_note)
    return (*out, md)


def latency_note(gflops_full: float, ms_pruned: float, ms_full: float) -> str:
    """Why pruning may not pay at batch 1 on a small model, said beside the numbers."""
    if gflops_full >= FAST_GOLDEN_GFLOPS and ms_pruned < ms_full:
        return ""
    return (f" *At batch 1 a {gflops_full:.2f}-GFLOP model's time is mostly fixed per-call overhead "
            "(Python, one kernel launch per layer, gathering the kept tokens), so the pruned forward "
            "can be as slow as the full one; the saved GFLOPs pay off on larger models and batches.*")


# -- models and predictors ------------------------------------------------------------------------
def load_model(choice: str, arch: str = "", path: str = "", *, session: str | None = None,
               progress: Progress = None) -> tuple[str, str | None, str]:
    """Switch the session's model. Returns (status markdown, labels text or None when unchanged,
    the selector value to show). A failed load keeps the current model and says why."""
    sess = get_session(session)
    report = _progress_fn(progress)
    if choice not in engine.MODEL_CHOICES:
        return (f"**Unknown model** {choice!r}; choose one of {', '.join(engine.MODEL_CHOICES)}. "
                "The current model is kept.", None, sess.model_key)
    report(0.05, f"loading {choice}")
    t = time.perf_counter()
    try:
        with downloads_shown(report, choice) as seen:     # size in MB and time left on the bar
            key, m = engine.REGISTRY.load(choice, arch, path)
    except Exception as e:  # any reason a load fails is told to the user; the app carries on
        prev = sess.model_key
        msg = messages.model_load_failure(choice, arch, path, e, prev)
        # a failed local load keeps the menu on "local" (and its fields shown) to fix a typo
        return msg, None, "local" if choice == "local" or prev not in engine.MODEL_CHOICES else prev
    dt = time.perf_counter() - t
    report(1.0, "loaded")
    sess.model_key = key
    sess.analysis, sess.layer = None, None          # the new model prunes at its own default
    pred, why = _predictor_for(sess, m)
    got = f", {downloaded_mb(seen):.0f} MB downloaded" if seen else ""
    msg = f"**Loaded** {engine.describe(m)} ({dt:.1f} s{got})."
    example_cache.WARMER.follow(key, m, default_golden_mode(session), example_files())
    if pred is None:
        msg += (f"  \n**No predictor for this model**: {why}."
                + ("" if "train-predictor" in why else f" {TRAIN_HINT}"))
    return msg, ", ".join(engine.labels_for(m, sess.label_preset)), choice


def label_preset(preset: str, *, session: str | None = None) -> str:
    """Switch the session's label set for real CLIP (``engine.LABEL_PRESETS``); returns the
    labels text (a model with its own classes keeps them). The choice is kept when the model
    changes. The first use of ImageNet on a real CLIP encodes 998 prompts (minutes on 2 CPU
    cores for ViT-B; cached on the model afterwards)."""
    try:
        preset = check_choice(preset, list(engine.LABEL_PRESETS), "label set")
    except InputError as e:
        raise _fail(e) from None
    sess = get_session(session)
    sess.label_preset = preset
    _, m = _model_for(sess)
    return ", ".join(engine.labels_for(m, preset))


#: Above this many GFLOPs on a CPU the golden search defaults to one-shot on 2x2 cells.
FAST_GOLDEN_GFLOPS = 2.0


def default_golden_mode(session: str | None = None) -> str:
    """"exact" for small models (the bundled one), "fast" for large ones on a CPU."""
    _, m = _model_for(get_session(session))
    big = float(pr.flops(m)) > FAST_GOLDEN_GFLOPS and m.device.type == "cpu"
    return "fast" if big else "exact"


def upload_predictor(file: Any, *, session: str | None = None) -> str:
    """Use an uploaded predictor file for the session's current model; refuses a file made for
    another model. Returns a status message (markdown)."""
    sess = get_session(session)
    try:
        path = file_path(file, "predictor file")
    except InputError as e:
        raise _fail(e) from None
    _, m = _model_for(sess)
    orig = file.get("orig_name") if isinstance(file, dict) else getattr(file, "orig_name", None)
    name = Path(orig or path.name).name
    try:
        info = engine.load_uploaded_predictor(m, str(path), name)
    except engine.EngineMissing as e:
        raise _fail(e) from None
    except ModelMismatch as e:
        raise gr.Error(f"This predictor file can't be used with {m.name}: {e}", print_exception=False) from None
    except PatchRankError as e:   # not a predictor, or a corrupt / truncated one
        raise gr.Error(f"This file is not a usable PatchRank predictor: {e}", print_exception=False) from None
    except Exception as e:  # safetensors/JSON errors for files that are not predictors at all
        raise gr.Error(f"This file is not a PatchRank predictor ({type(e).__name__}: {e}).",
                       print_exception=False) from None
    while len(sess.predictors) >= MAX_PREDICTORS_PER_SESSION:
        sess.predictors.pop(next(iter(sess.predictors)))
    sess.predictors[m.model_id] = info
    sess.analysis = None
    return (f"**Predictor loaded** from `{name}` for {m.name}. Analyse an image to use it "
            "(it replaces the bundled predictor in this session only).")


# -- examples -------------------------------------------------------------------------------------
_EXAMPLES_LOCK = threading.Lock()


def example_files(scenes: int = 6) -> list[str]:
    """Example images: one bundled evaluation scene per class (written to the app's temporary
    folder on first use) followed by the real photos in assets/examples."""
    out: list[str] = []
    with _EXAMPLES_LOCK:
        try:
            src = BUNDLED_DIR / "eval.npz"
            d = app_tmp() / f"examples-{src.stat().st_size}-{int(src.stat().st_mtime)}"
            ds = pr.bundled_eval(limit=200)
            d.mkdir(parents=True, exist_ok=True)
            seen = set()
            for img, lab in zip(ds.images, ds.labels):
                if int(lab) in seen:
                    continue
                seen.add(int(lab))
                name = ds.classnames[int(lab)].replace(" ", "-")
                path = d / f"scene-{len(seen):02d}-{name}.png"
                if not path.exists():
                    img.save(path)
                out.append(str(path))
                if len(seen) >= scenes:
                    break
        except (PatchRankError, OSError):
            pass
    out += sorted(str(p) for p in EXAMPLES_DIR.glob("*.jpg"))
    return out
