"""Layout: the Blocks, its tabs and components, in the order a person reads them. Which
listener each component's events go to is ``app.wiring``; what the listeners do is ``app.events``.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import gradio as gr

from patchrank import predictor_list, scene_check

import app.engine as engine
import app.example_cache as example_cache
import app.precision as precision
import app.predictors as P
import app.render as render
import app.scene_note as scene_note
import app.state as S
import app.wiring as wiring
from .analysis import ranker_choices
from .examples import example_files
from .inputs import DEFAULT_RATIO, MAX_RATIO, MIN_RATIO
from .models import preload_on_spaces
from .tradeoffs import MAX_SWEEP_IMAGES

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
    precision.forced_format()                  # a bad PATCHRANK_APP_DTYPE stops the start, said plainly
    m = engine.REGISTRY.bundled()              # load once at startup; shared read-only
    preload_on_spaces()
    example_cache.WARMER.follow("bundled", m, golden_mode, example_files())   # examples' golden
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
            wiring.wire_tradeoffs(demo, _tradeoff_tab())
        wiring.wire(c)
    demo.queue(max_size=QUEUE_MAX, default_concurrency_limit=1)
    return demo


def _inputs_column(c: dict[str, Any], m, golden_mode: str) -> None:
    """Image and the examples beside it, then the analysis settings, labels, model and predictor
    (components stored in ``c``)."""
    c["image"] = image_input(label="Image", sources=["upload", "clipboard"], height=220,
                             elem_id="pr-image")
    _scene_box(c)                         # "not a scene" note + switch to real CLIP (hidden)
    files = example_files()
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
        _predictor_menu(c)                # predictors listed for the model
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
    rankers = ranker_choices()
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


def image_input(**kwargs) -> gr.Image:
    """The image input. Every event that reads it is wired with ``preprocess=False``: the
    handler gets the uploaded file's payload and decodes it itself (``app.inputs``), so a
    non-image, a bomb or an odd mode gets the app's own message. Gradio's own decoding raises
    "Could not preprocess input component ..." with the server path instead, and overriding
    ``preprocess`` on the instance does not last: any update sent to the component (an example
    click, a cleared refusal) replaces the session's copy of it with a fresh ``gr.Image``."""
    return gr.Image(type="filepath", image_mode=None, **kwargs)


def _scene_box(c: dict[str, Any]) -> None:
    """The "not a scene" note and its switch button, hidden until an image needs them. The
    scenes' ranges (about 1 s, once) are computed in the background now instead of in the first
    analysis."""
    threading.Thread(target=scene_check.scene_ranges, daemon=True, name="scene-ranges").start()
    with gr.Group(visible=False, elem_id="pr-scene-box") as c["scene_box"]:
        c["scene_note"] = gr.Markdown(elem_id="pr-scene-note")
        c["real_btn"] = gr.Button(f"Switch to real CLIP ({scene_note.REAL_CLIP})", variant="primary",
                                  elem_id="pr-real-clip")


def _predictor_menu(c: dict[str, Any]) -> None:
    """The predictor menu (inside the "Model and predictor" accordion), filled for the bundled
    model."""
    choices = P.menu_choices(engine.REGISTRY.bundled())
    c["pred_menu"] = gr.Dropdown(choices, value=predictor_list.BUNDLED if choices else None,
                                 label="Known predictors for this model", elem_id="pr-pred-menu",
                                 info="from assets/predictors.json and PATCHRANK_PREDICTORS")


def _tradeoff_tab() -> dict[str, Any]:
    """Accuracy vs GFLOPs and latency: precomputed results, or a sweep now (its components)."""
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
            n = gr.Number(200, precision=0, minimum=1, maximum=MAX_SWEEP_IMAGES, label="Images (at most)")
            with_golden = gr.Checkbox(False, label="include golden (slow: a search per image)")
        sweep_btn = gr.Button("Run sweep")
    return dict(trade_md=trade_md, focus=focus, fig_g=fig_g, fig_l=fig_l, refresh=refresh, spec=spec,
                n=n, with_golden=with_golden, sweep_btn=sweep_btn)


def launch_kwargs() -> dict[str, Any]:
    """Arguments for ``demo.launch`` shared by app.py and the tests (Gradio 6: theme/css here)."""
    return dict(theme=THEME, css=CSS, max_file_size="25mb", show_error=True)
