"""One state, one truth: what the Explore tab shows is always drawn from one per-session view.

The page has many ways to change what it shows (slider drag, arrow keys, the number box, the
reset button, the ranker menus, labels, a new or refused or removed image, a model switch).
Were each to draw only its own part, the screen could show masks for one keep ratio beside a
top-5 and GFLOPs for another. So every path records the user's current choice
(:class:`View`) in the session and redraws *every* result that depends on it from that one
record, under the session's lock, so the last thing drawn is always a complete, consistent state.

Results are returned as ``{output key: value}`` dicts (``Out`` carries a panel label along with
a value; ``SKIP`` leaves an output as it is); ``app.ui`` maps keys to components. Nothing here
imports the UI, so the tests call these functions directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import gradio as gr

import patchrank as pr

import app.curve as C
import app.engine as engine
import app.plots as plots
import app.render as render
import app.scene_note as scene_note
from .analysis import Analysis, analyze, checked, ensure_golden, golden_pending, reanalyze
from .inputs import MAX_RATIO, MIN_RATIO, InputError, parse_labels
from .panels import agreement_md, heat_panel, mask_panel, status_md
from .progress import Progress
from .pruning import prune
from .sessions import session as get_session

#: Every output a new image (or a refused or removed one) replaces, in ``app.ui``'s order.
RESULT_KEYS = ("heat_l", "heat_r", "mask_l", "mask_r", "agreement", "top_full", "top_l",
               "top_r", "cost", "curve", "curve_md", "files", "status", "minkeep", "golden_target",
               "scene_note", "scene_box")
#: What a keep-ratio or ranker change redraws (the curve and exports do not depend on them).
VIEW_KEYS = RESULT_KEYS[:9]
#: Outputs of a labels change: what the labels redraw, and (a golden ranking scored for a class
#: is scored against the labels) what a re-analysis redraws. Progress shows on the first only.
LABEL_OUT_EXTRA = ("heat_l", "heat_r", "mask_l", "mask_r", "agreement", "status", "right")
#: What a change of class labels redraws.
LABEL_KEYS = ("top_full", "top_l", "top_r", "cost", "curve", "curve_md", "files", "minkeep",
              "golden_target")
LABEL_OUT = LABEL_KEYS + LABEL_OUT_EXTRA
SKIP = object()
NO_IMAGE = "Upload or paste an image, or pick an example."


@dataclass(frozen=True)
class Out:
    """An output value with the label its panel should show (which ranker, which keep ratio)."""
    value: Any
    label: str | None = None


@dataclass(frozen=True)
class View:
    """What the user has chosen on the Explore tab: the one source every result is drawn from."""
    ratio: float = 0.5
    left: str = "golden"
    right: str = "predictor"
    labels: Any = ""
    use_tokens: bool = False


def ratio_in_range(ratio: Any) -> bool:
    """False for the transient values the number box sends while a person types ("0", "")."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        return False
    return MIN_RATIO - 1e-9 <= r <= MAX_RATIO + 1e-9


def view_of(ratio: Any, left: Any, right: Any, labels: Any, use_tokens: Any) -> View:
    """The user's choice as sent by the page or an API call; refuses bad values (``gr.Error``)."""
    r, lft, rgt = checked(ratio, left, right)
    return View(r, lft, rgt, labels, bool(use_tokens))


def cleared(status: str, *, keys: tuple[str, ...] = RESULT_KEYS, why: str = NO_IMAGE) -> dict[str, Any]:
    """Every result in ``keys`` emptied (the old image's or the old labels' results must not stay
    on screen); ``status`` explains why, ``why`` is written on the emptied image panels."""
    blank = render.placeholder(None, why)
    out: dict[str, Any] = {}
    for key in keys:
        if key.startswith(("heat", "mask")):
            side = "Left" if key.endswith("_l") else "Right"
            out[key] = Out(blank, f"{side}: {'ranking' if key.startswith('heat') else 'kept / pruned'}")
        elif key.startswith("top"):
            out[key] = Out(None, _TOP_TITLES[key])
        elif key in ("agreement", "cost", "curve_md", "minkeep"):
            out[key] = ""
        elif key == "golden_target":
            out[key] = SKIP
        elif key == "status":
            out[key] = status
        else:                                        # curve figure, export files
            out[key] = None
    return out


_TOP_TITLES = {"top_full": "Full model: top-5", "top_l": "Left ranker, pruned: top-5",
               "top_r": "Right ranker, pruned: top-5"}


# -- drawing one view -----------------------------------------------------------------------------
def short_name(name: str) -> str:
    """A ranker's name short enough for a panel label (the drawn title has the full one)."""
    return {"golden": "golden", "attention+fuse": "EViT"}.get(name, plots.display_name(name))


def _side_titles(a: Analysis, view: View, side: str) -> tuple[str, str]:
    name = view.left if side == "l" else view.right
    k = a.model.keep_count(view.ratio)
    who = f"{'Left' if side == 'l' else 'Right'}: {short_name(name)}"
    return f"{who} ranking", f"{who}, keep {view.ratio:.2f} ({k}/{a.num_patches})"


def _panels(a: Analysis, view: View, heat: bool, opacity: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for side, name in (("l", view.left), ("r", view.right)):
        heat_title, mask_title = _side_titles(a, view, side)
        draw_heat = heat or (name in a.mergers and name not in a.merger_orders)  # groups follow k
        out[f"heat_{side}"] = (Out(heat_panel(a, name, view.ratio, opacity), heat_title)
                               if draw_heat else SKIP)
        out[f"mask_{side}"] = Out(mask_panel(a, name, view.ratio), mask_title)
    out["agreement"] = agreement_md(a, view.left, view.right, view.ratio)
    return out


def _vocabulary_note(a: Analysis, names: list[str]) -> str:
    unknown = engine.unknown_labels(a.model, names)
    if not unknown:
        return ""
    who = "the bundled model" if a.model.name == "bundled" else a.model.name
    return (f"  \n**Note**: {', '.join(repr(u) for u in unknown[:6])} "
            f"{'is' if len(unknown) == 1 else 'are'} outside {who}'s vocabulary (its text encoder "
            f"learnt only the words of its classes: {', '.join(a.model.classnames or ())}), so "
            "such labels get the same meaningless score. Use its classes, or load real CLIP.")


def _top5(a: Analysis, view: View, session: str | None) -> dict[str, Any]:
    """Top-5 of the full and both pruned models plus the cost line, all for ``view``."""
    k = a.model.keep_count(view.ratio)
    head = (f"**At keep ratio {view.ratio:.2f}** ({k} of {a.num_patches} patches), "
            f"left {plots.display_name(view.left)}, right {plots.display_name(view.right)}.  \n")
    try:
        names = parse_labels(view.labels, presets=[engine.IMAGENET_LABELS])
    except InputError as e:
        out = cleared("", keys=("top_full", "top_l", "top_r"))
        out["cost"] = head + f"**No top-5**: {e}"
        return out
    full, left, right, md = prune(view.ratio, view.left, view.right, names, view.use_tokens,
                                    session=session)
    out = {"top_full": Out(full, f"Full model ({a.num_patches} patches): top-5")}
    for key, side, name, d in (("top_l", "Left", view.left, left), ("top_r", "Right", view.right, right)):
        label = f"{side}: {short_name(name)}, keep {view.ratio:.2f}: top-5"
        if not d and name == "golden" and golden_pending(a):
            label = f"{side}: golden: computing the golden ranking..."
        out[key] = Out(d or None, label)
    if golden_pending(a):
        md += "  \n(Latency measured while the golden search runs on the same CPU: expect it slower.)"
    out["cost"] = head + md + _vocabulary_note(a, names)
    return out


def draw(session: str | None, *, heat: bool = True, view: View | None = None,
         panels: bool = True, top5: bool = True) -> dict[str, Any]:
    """Every result that depends on the view (``panels``: masks, rankings and agreement, no model
    run; ``top5``: top-5 and costs, a pruned forward), drawn for the session's current (or the
    given) view under the session's lock. With no analysed image nothing changes (all
    ``SKIP``): the results were cleared when the image went."""
    sess = get_session(session)
    with sess.lock:                  # read the view and draw it without another redraw between
        if view is not None:
            sess.view = view
        a, view = sess.analysis, sess.view or View()
        if a is None:
            return {key: SKIP for key in VIEW_KEYS}
        return {**(_panels(a, view, heat, sess.opacity) if panels else {}),
                **(_top5(a, view, session) if top5 else {})}


def curve_results(session: str | None, progress: Progress = None) -> dict[str, Any]:
    """The per-image curve for the current labels; a refusal empties it and says why."""
    sess = get_session(session)
    view = sess.view or View()
    try:
        parse_labels(view.labels, presets=[engine.IMAGENET_LABELS])
    except InputError as e:
        return {"curve": None, "curve_md": f"No curve: {e}"}
    fig, md, d = C.curve_full(view.labels, session=session, progress=progress)
    sess.curve_labels, sess.curve = view.labels, d
    return {"curve": fig, "curve_md": md, "files": None, "minkeep": min_keep_md(session),
            "golden_target": golden_choices(session)}


def min_keep_md(session: str | None) -> str:
    """The line under the slider: how far each side can prune and keep the top-1."""
    sess = get_session(session)
    view = sess.view or View()
    return C.min_keep_note(sess.curve, view.left, view.right)


def golden_choices(session: str | None, labels: Any = None) -> Any:
    """The golden target menu for the session's labels, or ``labels`` (and its current choice)."""
    sess = get_session(session)
    try:
        names = parse_labels(getattr(sess.view, "labels", "") if labels is None else labels,
                             presets=[engine.IMAGENET_LABELS])
    except InputError:
        names = []
    choices = [(v, k) for k, v in engine.GOLDEN_TARGETS.items()]
    choices += [(f"the class '{n}'", f"class:{n}") for n in names[:MAX_CLASS_TARGETS]]
    value = sess.golden_target or "similarity"
    if value not in [c[1] for c in choices]:
        choices.append((f"the class '{value[6:]}'", value))
    return gr.update(choices=choices, value=value)


#: Most labels offered as golden targets in the menu (ImageNet's 998 would make it unusable).
MAX_CLASS_TARGETS = 100


def layer_update(m: pr.PatchModel, value: int | None = None) -> Any:
    """The prune-layer control for model ``m``: blocks 1 to L-1 (block 0 would prune before
    any patch has seen another), each with the pruned encoder's GFLOPs at keep 0.5."""
    k0 = m.prune_layer if value is None else value
    full = float(pr.flops(m))
    half = m.keep_count(0.5)
    costs = "; ".join(f"{k}: {float(pr.flops(engine.at_layer(m, k), keep=half)):.3g}"
                      for k in range(1, m.num_layers))
    return gr.update(choices=[(str(k), k) for k in range(1, m.num_layers)], value=k0,
                     info=f"GFLOPs at keep 0.50 by block: {costs} (unpruned {full:.3g}). Earlier = "
                          "cheaper, later = closer to the full model. A predictor exists only for "
                          "the block it was trained at.")



# -- whole flows ----------------------------------------------------------------------------------
def image_stream(image: Any, golden_mode: str, view: View, *, session: str | None = None,
                 progress: Progress = None) -> Iterator[dict[str, Any]]:
    """A new, removed or re-analysed image, as successive complete states: fast rankers first,
    then the golden ranking with top-5 and costs, then the curve. A refused image clears every
    result (the image input too) and says why in one toast (a warning: an error would also
    stamp "Error" on every output of the event)."""
    sess = get_session(session)
    sess.view, sess.curve_labels, sess.curve = view, None, None
    if image is None:
        sess.analysis = None
        yield cleared(NO_IMAGE)
        return
    try:
        a = analyze(image, golden_mode, session=session, progress=progress, golden=False)
    except gr.Error as e:
        sess.analysis = None
        gr.Warning(e.message)
        yield {**cleared(f"**Image refused**: {e.message}",
                         why="No image analysed: the upload was refused (see the message)."),
               "image": None}
        return
    yield from _analysis_stream(a, view, session, progress)


def reanalysis_stream(view: View, golden_mode: str | None = None, *, session: str | None = None,
                      progress: Progress = None) -> Iterator[dict[str, Any]]:
    """The current image again after an analysis setting changed (prune layer, golden target):
    the same successive states as a new image. Without an image only the setting is kept."""
    sess = get_session(session)
    sess.view, sess.curve_labels, sess.curve = view, None, None
    if sess.analysis is None:
        yield {"golden_target": golden_choices(session)}
        return
    a = reanalyze(golden_mode, session=session, progress=progress, golden=False)
    yield from _analysis_stream(a, view, session, progress)


def _analysis_stream(a: Analysis, view: View, session: str | None,
                     progress: Progress) -> Iterator[dict[str, Any]]:
    sess = get_session(session)
    out: dict[str, Any] = {}
    if "predictor" in a.missing and view.right == "predictor" and "attention" in a.orders:
        view = View(view.ratio, view.left, "attention", view.labels, view.use_tokens)
        out["right"] = "attention"
        why = a.missing["predictor"]
        gr.Info(("The predictor exists only for the block it was trained at"
                 if "exists only for" in why else "No predictor for this model")
                + ": comparing with CLS attention instead.")
    first = draw(session, view=view)
    if golden_pending(a):            # top-5 and costs wait for the golden side
        first.update(cleared("", keys=("top_full", "top_l", "top_r")))
        first["cost"] = "Computing the golden ranking; top-5 and costs follow."
    yield {**out, **first, "curve": None, "curve_md": "", "files": None, "status": status_md(a),
           "minkeep": "", "golden_target": golden_choices(session), **scene_note.outputs(a)}
    if golden_pending(a):
        ensure_golden(a, progress)
        if sess.analysis is not a:     # another image arrived meanwhile: its stream takes over
            return
        yield {**draw(session), "status": status_md(a)}
    if sess.analysis is a:
        yield curve_results(session, progress)


def labels_stream(view: View, *, session: str | None = None,
                  progress: Progress = None) -> Iterator[dict[str, Any]]:
    """New class labels (typed, a preset, learnable tokens on or off): top-5, costs, curve and
    exports redrawn for them. Refused labels clear what the old labels produced and say why."""
    sess = get_session(session)
    try:
        parse_labels(view.labels, presets=[engine.IMAGENET_LABELS])
    except InputError as e:
        sess.view = view
        gr.Warning(str(e))
        yield {**cleared("", keys=LABEL_KEYS), "cost": f"**Labels refused**: {e}"}
        return
    if sess.analysis is None:
        sess.view = view
        return
    if sess.golden_target != "similarity" and sess.analysis.golden_kwargs.get("classnames") != \
            engine.golden_target_kwargs(sess.golden_target, parse_labels(
                view.labels, presets=[engine.IMAGENET_LABELS])).get("classnames"):
        yield from reanalysis_stream(view, session=session, progress=progress)   # scored on the labels
        return
    now = draw(session, view=view)
    yield {key: now[key] for key in ("top_full", "top_l", "top_r", "cost")}
    yield curve_results(session, progress)
