"""Event wiring: which listener (``app.events``, ``app.controls``) is bound to which event of
which component, with which endpoint name; the components are laid out by ``app.ui``.

One request per user action. Gradio 6.31's Dropdown sends ``input`` twice per menu choice and its
Image sends ``change`` twice when an upload replaces a shown image, so binding those ran every
analysis twice (and showed every error twice); the menus listen to ``select`` and the image to
``input`` (upload, paste, remove: once each) plus the example click. The keep ratio has one
listener, on ``change``, which fires once for a drag frame, an arrow key, a number typed or the
reset button, so every way of moving it redraws the same things.

Concurrency: image analyses, model switches and exports share one slot (``concurrency_id=
"model"``, limit 1, on a 2-vCPU Space); redraws for the keep ratio and rankers (cached orders,
one small pruned forward) get their own slots so the slider stays live during a golden search.

The named API endpoints sit on hidden triggers: one call, one result, bad values refused.
"""
from __future__ import annotations

from typing import Any

import gradio as gr

import app.controls as K
import app.events as E
import app.state as S
from .inputs import DEFAULT_RATIO
from .outputs import IMAGE_KEYS, MODEL_KEYS, OPACITY_KEYS, REANALYSIS_KEYS


def _outs(c: dict[str, Any], keys: tuple[str, ...]) -> list:
    return [c[k] for k in keys]


def wire(c: dict[str, Any]) -> None:
    """The Explore tab's events: each user action sends one request (see the module docstring)."""
    model_kw = dict(concurrency_id="model", concurrency_limit=1)
    draw_kw = dict(concurrency_id="draw", concurrency_limit=4)
    private = dict(api_visibility="private")
    view_in = _outs(c, ("ratio", "left", "right", "labels", "use_tokens"))
    image_in = [c["image"], c["golden_mode"]] + view_in
    image_out = _outs(c, IMAGE_KEYS)
    view_out, label_out = _outs(c, S.VIEW_KEYS), _outs(c, S.LABEL_OUT)
    label_progress = dict(show_progress_on=_outs(c, S.LABEL_KEYS[:7]))

    raw = dict(preprocess=False)          # the image is decoded by the app (``app.ui.image_input``)
    c["image"].input(E.on_image, image_in, image_out, trigger_mode="always_last", **raw, **private,
                     **model_kw)
    c["examples"].load_input_event.then(E.on_image, image_in, image_out, **raw, **private, **model_kw)
    c["examples"].load_input_event.then(None, js=SHOW_RESULTS)      # in the page: no request
    c["golden_mode"].input(E.on_image, image_in, image_out, trigger_mode="always_last", **raw,
                           **private, **model_kw)
    c["reset"].click(None, None, [c["ratio"]], js=f"() => {DEFAULT_RATIO}")
    c["ratio"].change(E.on_ratio, view_in, view_out, show_progress="hidden", trigger_mode="always_last",
                      **private, **draw_kw)
    for dd in (c["left"], c["right"]):
        dd.select(E.on_rankers, view_in, view_out + [c["minkeep"]], show_progress="minimal",
                  trigger_mode="always_last", **private, **draw_kw)
    gr.on([c["labels"].blur, c["labels"].submit, c["use_tokens"].input], E.on_labels, view_in,
          label_out, trigger_mode="always_last", **label_progress, **private, **model_kw)
    c["preset"].input(E.on_label_preset, [c["preset"]], [c["labels"]], api_name="label_preset").success(
        E.on_labels, view_in, label_out, **label_progress, **private, **model_kw)
    _wire_controls(c, view_in, model_kw, draw_kw)
    c["export_btn"].click(E.on_export, _outs(c, ("ratio", "left", "right", "labels")), [c["files"]],
                          api_name="export", **model_kw)
    model_in = _outs(c, ("model", "arch", "ckpt")) + image_in
    model_out = _outs(c, MODEL_KEYS) + image_out
    c["model"].select(E.on_pick_model, model_in, model_out, **raw, **private, **model_kw)
    c["load_btn"].click(E.on_load_button, model_in, model_out, **raw, **private, **model_kw)
    c["pred_file"].upload(E.on_predictor_file, [c["pred_file"]] + image_in, [c["pred_status"]] + image_out,
                          **raw, **private, **model_kw)
    _wire_predictors(c, image_in, image_out, model_kw)
    _wire_real_clip(c, model_in, model_out, model_kw)
    _wire_api(c, model_kw, draw_kw)


def _wire_controls(c: dict[str, Any], view_in: list, model_kw: dict, draw_kw: dict) -> None:
    """Prune layer, golden target, overlay opacity and patch clicks (``app.controls``)."""
    private = dict(api_visibility="private")
    reanalysis_out = _outs(c, REANALYSIS_KEYS)
    for ctl, fn in ((c["layer"], K.on_layer), (c["golden_target"], K.on_golden_target)):
        trigger = ctl.select if isinstance(ctl, gr.Dropdown) else ctl.input
        trigger(fn, [ctl, c["golden_mode"]] + view_in, reanalysis_out, trigger_mode="always_last",
                **private, **model_kw)
    c["opacity"].change(K.on_opacity, [c["opacity"]] + view_in, _outs(c, OPACITY_KEYS),
                        show_progress="hidden", trigger_mode="always_last", **private, **draw_kw)
    for key in ("mask_l", "mask_r", "heat_l", "heat_r"):
        c[key].select(K.on_patch_click, [c["ratio"]], [c["patch"]], show_progress="hidden",
                      **private, **draw_kw)


def _wire_predictors(c: dict[str, Any], image_in: list, image_out: list, model_kw: dict) -> None:
    """The predictor menu's event and the named endpoints ``/choose_predictor`` and ``/predictors``."""
    c["pred_menu"].select(E.on_choose_predictor, [c["pred_menu"]] + image_in,
                          [c["pred_menu"], c["pred_status"]] + image_out, preprocess=False,
                          api_visibility="private", **model_kw)
    source = gr.Textbox(visible=False)        # any text: refused in words if not listed
    gr.Button(visible=False).click(E.api_choose_predictor, [source], [c["pred_status"]],
                                   api_name="choose_predictor", **model_kw)
    gr.Button(visible=False).click(E.api_predictors, None, gr.JSON(visible=False), api_name="predictors")


def _wire_real_clip(c: dict[str, Any], model_in: list, model_out: list, model_kw: dict) -> None:
    """The "not a scene" button sends one request, with the model menu's inputs and outputs
    (the menu itself excluded)."""
    c["real_btn"].click(E.on_real_clip, model_in[1:], model_out, preprocess=False,
                        api_visibility="private", **model_kw)


#: Brings the panels into view after an example click (narrow pages stack the examples above).
#: After an example click: bring the panels into view, and again once the first results have
#: arrived if the user has not scrolled meanwhile (a note above the panels that appears or goes
#: with the new image shifts them; scrolling once left them off screen on a narrow page).
SHOW_RESULTS = """() => {
  const go = () => { document.getElementById('pr-panels')?.scrollIntoView({block: 'start'}); return window.scrollY; };
  const at = go();
  for (const ms of [600, 1500]) setTimeout(() => { if (Math.abs(window.scrollY - at) < 400) go(); }, ms);
}"""


def _wire_api(c: dict[str, Any], model_kw: dict, draw_kw: dict) -> None:
    """Named API endpoints on hidden triggers: one call, one result, bad values refused."""
    view3 = _outs(c, ("ratio", "left", "right"))
    view5 = view3 + _outs(c, ("labels", "use_tokens"))
    panels = _outs(c, ("heat_l", "heat_r", "mask_l", "mask_r", "agreement"))

    def api(fn, inputs, outputs, name, **kw):
        gr.Button(visible=False).click(fn, inputs, outputs, api_name=name, **kw)

    api(E.on_analyze, [c["image"], c["golden_mode"]] + view3, panels + [c["status"]], "analyze",
        preprocess=False, **model_kw)
    api(E.on_set_ratio, view5, _outs(c, S.VIEW_KEYS[2:]), "set_ratio", **draw_kw)
    api(E.on_threshold, view3, panels[2:], "threshold", **draw_kw)
    api(E.on_prune, view5, _outs(c, ("top_full", "top_l", "top_r", "cost")), "prune", **model_kw)
    api(E.on_views, view3, panels, "views", **draw_kw)
    api(E.on_curve, [c["labels"]], _outs(c, ("curve", "curve_md")), "curve", **model_kw)
    api(E.on_load_model, _outs(c, ("model", "arch", "ckpt")),
        _outs(c, ("model_status", "labels", "model", "golden_mode")), "load_model", **model_kw)
    api(E.on_upload_predictor, [c["pred_file"]], [c["pred_status"]], "upload_predictor", **model_kw)
    api(K.api_layer, [c["layer"]] + view3, panels + [c["status"]], "prune_layer", **model_kw)
    api(K.api_golden_target, [c["golden_target"], c["labels"]] + view3, panels + [c["status"]],
        "golden_target", **model_kw)
    api(K.api_opacity, [c["opacity"]] + view3, _outs(c, OPACITY_KEYS), "opacity", **draw_kw)
    row, col = gr.Number(0, precision=0, visible=False), gr.Number(0, precision=0, visible=False)
    api(K.api_patch_rank, [row, col, c["ratio"]], [c["patch"]], "patch_rank", **draw_kw)


def wire_tradeoffs(demo: gr.Blocks, t: dict[str, Any]) -> None:
    """The trade-off tab: precomputed results on load and on request (``/tradeoff``), or a sweep
    now (``/sweep``, in the model slot: it runs the session's model)."""
    figs = [t["fig_g"], t["fig_l"], t["trade_md"]]
    t["refresh"].click(E.on_tradeoff, [t["focus"]], figs, api_name="tradeoff")
    t["focus"].input(E.on_tradeoff, [t["focus"]], figs, api_visibility="private")
    t["sweep_btn"].click(E.on_sweep, [t["spec"], t["n"], t["with_golden"], t["focus"]], figs,
                         api_name="sweep", concurrency_id="model", concurrency_limit=1)
    demo.load(E.on_tradeoff, [t["focus"]], figs, api_visibility="private")
