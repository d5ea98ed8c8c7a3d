"""Layout and event wiring; the listeners are in ``app.events``, what they draw in ``app.state``.

One request per user action. Gradio 6.31's Dropdown sends ``input`` twice per menu choice and its
Image sends ``change`` twice when an upload replaces a shown image, so binding those ran every
analysis twice (and showed every error twice); the menus listen to ``select`` and the image to
``input`` (upload, paste, remove: once each) plus the example click. The keep ratio has one
listener, on ``change``, which fires once for a drag frame, an arrow key, a number typed or the
reset button, so every way of moving it redraws the same things.

Concurrency: image analyses, model switches and exports share one slot (``concurrency_id=
"model"``, limit 1, on a 2-vCPU Space); redraws for the keep ratio and rankers (cached orders,
one small pruned forward) get their own slots so the slider stays live during a golden search.
The queue is bounded, so overload is refused with a message instead of piling up.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from . import (controls as K, engine, events as E, example_cache, handlers as H, predictors as P,
               render, scene_note, state as S, tradeoffs as T)
from .inputs import MAX_RATIO, MIN_RATIO

QUEUE_MAX = 32
THEME = gr.themes.Soft(primary_hue="indigo")
CSS = """
.pr-panel img { image-rendering: auto; }
.pr-note { font-size: 0.9em; color: #555; }
#pr-agreement p, #pr-minkeep p, #pr-patch p { margin: 0.1em 0; }
#pr-agreement, #pr-minkeep { font-size: 0.92em; }
#pr-title h3 { margin: 0; }
@media (max-width: 1000px) {   /* one column: panels as wide as the page, captions readable */
  .pr-panel, .pr-panel .image-container, .pr-panel .image-frame { height: auto !important; }
  .pr-panel img { width: 100% !important; max-height: none !important; object-fit: contain; }
}
#pr-title .pr-note { font-weight: normal; font-size: 0.8em; }
.pr-top .output-class { font-size: 1.05em !important; padding: 4px 8px !important; }
.pr-top .confidence-set { padding: 1px 0 !important; }
"""
DEFAULT_RATIO = 0.5
TITLE = ("### PatchRank: which image patches does CLIP need? <span class='pr-note'>Upload an image "
         "or click an example; the slider keeps each side's most important patches and the top-5 "
         "shows what the pruned model still predicts.</span>")
INTRO = """The **golden ranking** (one-shot leave-one-out: each patch removed alone at the pruning layer, ranked
by how far that moves the image embedding; the paper's greedy search is `python -m patchrank golden --mode greedy`)
and the learned **predictor** order its patches by importance; the slider keeps the top fraction and prunes the rest at the input
of one transformer block, as in *Patch Ranking: Efficient CLIP by Learning to Rank Local Patches*
(Wu et al., WACV 2025). Rankings are estimates of what this model uses, not explanations."""


# -- layout ---------------------------------------------------------------------------------------
def build_demo(golden_mode: str = "exact") -> gr.Blocks:
    """The whole app as a ``gr.Blocks`` (queue set, not launched). ``golden_mode``: the golden
    search selected at start ("exact" or "fast")."""
    m = engine.REGISTRY.bundled()              # load once at startup; shared read-only
    E.preload_on_spaces()
    example_cache.WARMER.follow("bundled", m, golden_mode, H.example_files())   # examples' golden
    # gradio cache: every 10 min, files older than 20 min go (panels are fetched within seconds)
    with gr.Blocks(title="PatchRank", delete_cache=(600, 1200)) as demo:
        gr.Markdown(TITLE, elem_id="pr-title")
        with gr.Tab("Explore"):
            c: dict[str, Any] = {}
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    _inputs_column(c, m, golden_mode)
                with gr.Column(scale=3, min_width=560):     # narrower pages: one column
                    _panels_column(c)
            _results_rows(c)
            with gr.Accordion("About the rankings", open=False):
                gr.Markdown(INTRO)
        with gr.Tab("Trade-offs"):
            _tradeoff_tab(demo)
        _wire(c)
    demo.queue(max_size=QUEUE_MAX, default_concurrency_limit=1)
    return demo


def _inputs_column(c: dict[str, Any], m, golden_mode: str) -> None:
    """Image and the examples beside it, then the analysis settings, labels, model and predictor
    (components stored in ``c``)."""
    c["image"] = E.image_input(label="Image", sources=["upload", "clipboard"], height=220,
                               elem_id="pr-image")
    scene_note.components(c)              # "not a scene" note + switch to real CLIP (hidden)
    files = H.example_files()
    c["examples"] = gr.Examples([[p] for p in files], inputs=[c["image"]], examples_per_page=20,
                                example_labels=[example_caption(p) for p in files],
                                label="Examples: scenes of the bundled model's classes, then photos "
                                      "(credits: assets/examples/ATTRIBUTION.md)")
    c["labels"] = gr.Textbox(", ".join(engine.labels_for(m)), lines=2, max_lines=8,
                             label="Class labels (comma or newline separated)", elem_id="pr-labels")
    with gr.Accordion("Golden ranking, prune layer, overlay", open=False):
        c["golden_mode"] = gr.Radio([(v, k) for k, v in engine.GOLDEN_MODES.items()], value=golden_mode,
                                    label="Golden ranking", elem_id="pr-golden-mode",
                                    info="fast mode: for large models on CPU; approximate")
        c["golden_target"] = gr.Dropdown(S.golden_choices(None, engine.labels_for(m))["choices"],
                                         value="similarity", allow_custom_value=True,
                                         label="Golden ranking scores", elem_id="pr-golden-target",
                                         info="what must survive pruning: the whole embedding, or "
                                              "what supports one class (a class-conditioned search)")
        c["layer"] = gr.Radio(elem_id="pr-layer", label="Prune at the input of block",
                              **_update_kwargs(S.layer_update(m)))
        c["opacity"] = gr.Slider(0.0, 1.0, value=render.HEAT_ALPHA, step=0.05, label="Ranking overlay opacity",
                                 elem_id="pr-opacity", buttons=[])
    c["preset"] = gr.Radio([(v, k) for k, v in engine.LABEL_PRESETS.items()], value="everyday",
                           label="Labels for real CLIP", elem_id="pr-label-set",
                           info="the bundled model keeps its 6 classes; ImageNet's first "
                                "use encodes 998 prompts (minutes on 2 CPU cores)")
    with gr.Accordion("Model and predictor", open=False):
        c["model"] = gr.Dropdown([(label, key) for key, (label, _) in engine.MODEL_CHOICES.items()],
                                 value="bundled", label="Model", elem_id="pr-model")
        with gr.Group(visible=False) as c["local_box"]:
            c["arch"] = gr.Textbox("", label="Architecture (open_clip name)", placeholder="ViT-B-16",
                                   elem_id="pr-arch")
            c["ckpt"] = gr.Textbox("", label="Checkpoint file or local-dir:/folder", elem_id="pr-ckpt",
                                   placeholder="/models/ViT-B-16-openai.safetensors")
            c["load_btn"] = gr.Button("Load model", elem_id="pr-load")
        c["model_status"] = gr.Markdown(f"**Model** {engine.describe(m)}.", label="Model status",
                                        elem_id="pr-model-status")
        P.components(c)                   # predictors listed for the model
        c["pred_file"] = gr.File(label="Predictor file for this model (.safetensors)",
                                 file_types=[".safetensors"], type="filepath")
        c["pred_status"] = gr.Markdown(label="Predictor status", elem_classes="pr-note")


def example_caption(path: str) -> str:
    """"scene: sandal" for a generated scene, "cat chelsea" for a photo (from the file name)."""
    stem = Path(path).stem
    if stem.startswith("scene-"):
        return "scene: " + stem.split("-", 2)[-1].replace("-", " ")
    return stem.replace("-", " ")


def _update_kwargs(update: dict) -> dict:
    return {k: v for k, v in update.items() if k != "__type__"}


def _panels_column(c: dict[str, Any]) -> None:
    """Ranker menus, both keep masks or both rankings (tabs), the keep-ratio slider, the
    agreement and the three top-5s: cause and effect on one screen."""
    rankers = H.ranker_choices()
    with gr.Row():
        c["left"] = gr.Dropdown(rankers, value="golden", label="Left ranker", elem_id="pr-left")
        c["right"] = gr.Dropdown(rankers, value="predictor", label="Right ranker", elem_id="pr-right")
    panel = dict(type="pil", format="jpeg", interactive=False, elem_classes="pr-panel", height=270)
    with gr.Tabs(elem_id="pr-panels"):
        with gr.Tab("Kept / pruned at this ratio", id="masks"):
            with gr.Row():
                c["mask_l"] = gr.Image(label="Left: kept / pruned", elem_id="pr-mask-left", **panel)
                c["mask_r"] = gr.Image(label="Right: kept / pruned", elem_id="pr-mask-right", **panel)
        with gr.Tab("Rankings (heatmaps)", id="heat"):
            with gr.Row():
                c["heat_l"] = gr.Image(label="Left: ranking", elem_id="pr-heat-left", **panel)
                c["heat_r"] = gr.Image(label="Right: ranking", elem_id="pr-heat-right", **panel)
    with gr.Row():
        # gradio's own reset button sends "change" twice; this one sets the value in the page
        c["ratio"] = gr.Slider(MIN_RATIO, MAX_RATIO, value=DEFAULT_RATIO, step=0.01, scale=4, buttons=[],
                               label="Keep ratio (fraction of patches kept)", elem_id="pr-ratio")
        c["reset"] = gr.Button(f"↺ {DEFAULT_RATIO:.2f}", size="sm", scale=0, min_width=70,
                               elem_id="pr-reset")
        c["use_tokens"] = gr.Checkbox(False, label="add learnable tokens after pruning (phase III)",
                                      scale=1, elem_id="pr-tokens")
    c["minkeep"] = gr.Markdown(elem_id="pr-minkeep", elem_classes="pr-note")
    with gr.Row():
        top = dict(num_top_classes=5, elem_classes="pr-top", min_width=200)
        c["top_full"] = gr.Label(label="Full model: top-5", elem_id="pr-top-full", **top)
        c["top_l"] = gr.Label(label="Left ranker, pruned: top-5", elem_id="pr-top-left", **top)
        c["top_r"] = gr.Label(label="Right ranker, pruned: top-5", elem_id="pr-top-right", **top)
    c["agreement"] = gr.Markdown(label="Keep count and agreement", elem_id="pr-agreement")
    c["patch"] = gr.Markdown("*Click a patch on any panel to see its rank under every ranker.*",
                             elem_id="pr-patch", elem_classes="pr-note")


def _results_rows(c: dict[str, Any]) -> None:
    """Costs, the per-image curve, exports and status."""
    c["cost"] = gr.Markdown(label="Kept tokens, GFLOPs, latency", elem_id="pr-cost")
    c["curve"] = gr.Plot(label="This image: top-class probability vs keep ratio", elem_id="pr-curve")
    c["curve_md"] = gr.Markdown(label="Flip points", elem_classes="pr-note", elem_id="pr-curve-md")
    with gr.Row():
        c["export_btn"] = gr.Button("Export overlays, rankings and curve (zip + files)", scale=1,
                                    elem_id="pr-export")
        c["files"] = gr.File(label="Exports (the zip holds them all)", file_count="multiple", scale=2,
                             elem_id="pr-files")
    c["status"] = gr.Markdown(label="Analysis status", elem_id="pr-status", elem_classes="pr-note")


def _tradeoff_tab(demo: gr.Blocks) -> None:
    """Accuracy vs GFLOPs and latency: precomputed results on load and on request, or a sweep now."""
    trade_md = gr.Markdown(label="Results status", elem_id="pr-trade-md")
    focus = gr.Checkbox(True, label="zoom on the close methods (a method far below them is named on "
                                    "the figure instead of squashing the axis)", elem_id="pr-focus")
    with gr.Row():
        fig_g = gr.Plot(label="Accuracy vs GFLOPs", elem_id="pr-trade-gflops")
        fig_l = gr.Plot(label="Latency vs keep ratio (median over methods, with its spread)",
                        elem_id="pr-trade-latency")
    refresh = gr.Button("Reload results")
    with gr.Accordion("Sweep a labelled dataset now (uses the model selected in Explore)", open=False):
        with gr.Row():
            spec = gr.Textbox("bundled-eval:200", label="Dataset",
                              info="a folder with one subfolder per class, or bundled-eval:N")
            n = gr.Number(200, precision=0, minimum=1, maximum=T.MAX_SWEEP_IMAGES, label="Images (at most)")
            with_golden = gr.Checkbox(False, label="include golden (slow: a search per image)")
        sweep_btn = gr.Button("Run sweep")
    figs = [fig_g, fig_l, trade_md]
    refresh.click(E.on_tradeoff, [focus], figs, api_name="tradeoff")
    focus.input(E.on_tradeoff, [focus], figs, api_visibility="private")
    sweep_btn.click(E.on_sweep, [spec, n, with_golden, focus], figs, api_name="sweep",
                    concurrency_id="model", concurrency_limit=1)
    demo.load(E.on_tradeoff, [focus], figs, api_visibility="private")


def launch_kwargs() -> dict[str, Any]:
    """Arguments for ``demo.launch`` shared by app.py and the tests (Gradio 6: theme/css here)."""
    return dict(theme=THEME, css=CSS, max_file_size="25mb", show_error=True)


def _outs(c: dict[str, Any], keys: tuple[str, ...]) -> list:
    return [c[k] for k in keys]


def _wire(c: dict[str, Any]) -> None:
    """The Explore tab's events: each user action sends one request (see the module docstring)."""
    model_kw = dict(concurrency_id="model", concurrency_limit=1)
    draw_kw = dict(concurrency_id="draw", concurrency_limit=4)
    private = dict(api_visibility="private")
    view_in = _outs(c, ("ratio", "left", "right", "labels", "use_tokens"))
    image_in = [c["image"], c["golden_mode"]] + view_in
    image_out = _outs(c, E.IMAGE_KEYS)
    view_out, label_out = _outs(c, S.VIEW_KEYS), _outs(c, S.LABEL_OUT)
    label_progress = dict(show_progress_on=_outs(c, S.LABEL_KEYS[:7]))

    raw = dict(preprocess=False)          # the image is decoded by the app (``E.image_input``)
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
    model_out = _outs(c, E.MODEL_KEYS) + image_out
    c["model"].select(E.on_pick_model, model_in, model_out, **raw, **private, **model_kw)
    c["load_btn"].click(E.on_load_button, model_in, model_out, **raw, **private, **model_kw)
    c["pred_file"].upload(E.on_predictor_file, [c["pred_file"]] + image_in, [c["pred_status"]] + image_out,
                          **raw, **private, **model_kw)
    P.wire(c, image_in, image_out, model_kw)
    scene_note.wire(c, model_in, model_out, model_kw)
    _wire_api(c, model_kw, draw_kw)


def _wire_controls(c: dict[str, Any], view_in: list, model_kw: dict, draw_kw: dict) -> None:
    """Prune layer, golden target, overlay opacity and patch clicks (``app.controls``)."""
    private = dict(api_visibility="private")
    reanalysis_out = _outs(c, K.REANALYSIS_KEYS)
    for ctl, fn in ((c["layer"], K.on_layer), (c["golden_target"], K.on_golden_target)):
        trigger = ctl.select if isinstance(ctl, gr.Dropdown) else ctl.input
        trigger(fn, [ctl, c["golden_mode"]] + view_in, reanalysis_out, trigger_mode="always_last",
                **private, **model_kw)
    c["opacity"].change(K.on_opacity, [c["opacity"]] + view_in, _outs(c, K.OPACITY_KEYS),
                        show_progress="hidden", trigger_mode="always_last", **private, **draw_kw)
    for key in ("mask_l", "mask_r", "heat_l", "heat_r"):
        c[key].select(K.on_patch_click, [c["ratio"]], [c["patch"]], show_progress="hidden",
                      **private, **draw_kw)


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
    api(K.api_opacity, [c["opacity"]] + view3, _outs(c, K.OPACITY_KEYS), "opacity", **draw_kw)
    row, col = gr.Number(0, precision=0, visible=False), gr.Number(0, precision=0, visible=False)
    api(K.api_patch_rank, [row, col, c["ratio"]], [c["patch"]], "patch_rank", **draw_kw)
