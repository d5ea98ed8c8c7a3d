"""Layout and event wiring. Each listener is a thin wrapper that passes gradio's session hash and
progress bar to a plain handler in ``app.handlers``.

Concurrency: everything that runs the model shares one slot (``concurrency_id="model"``, limit 1,
on a 2-vCPU Space); the slider's re-threshold needs no model and gets its own slots. The queue is
bounded, so overload is refused with a message instead of piling up.
"""
from __future__ import annotations

import os
import threading
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from . import engine, handlers as H
from .inputs import MAX_RATIO, MIN_RATIO

QUEUE_MAX = 32
THEME = gr.themes.Soft(primary_hue="indigo")
CSS = """
.pr-panel img { image-rendering: auto; }
.pr-note { font-size: 0.9em; color: #555; }
"""
DEFAULT_RATIO = 0.5
INTRO = """# PatchRank: which image patches does CLIP need?
Upload an image. The **golden ranking** (one-shot leave-one-out: each patch removed alone at the pruning layer, ranked
by how far that moves the image embedding; the paper's greedy search is `python -m patchrank golden --mode greedy`)
and the learned **predictor** order its patches by importance; the slider keeps the top fraction and prunes the rest at the input
of one transformer block, as in *Patch Ranking: Efficient CLIP by Learning to Rank Local Patches*
(Wu et al., WACV 2025). Rankings are estimates of what this model uses, not explanations."""


def image_input(**kwargs) -> gr.Image:
    """A ``gr.Image`` that hands the raw uploaded file path to the handler without decoding it,
    so corrupt files, bombs and odd modes get the app's own clear messages (``app.inputs``).
    (An instance override, not a subclass: gradio writes a ``.pyi`` beside any component subclass.)"""
    img = gr.Image(type="filepath", image_mode=None, **kwargs)
    decode = img.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        if payload.path:
            return payload.path
        try:
            return decode(payload)             # data: URLs (pasted images)
        except Exception as e:
            raise gr.Error(f"This pasted image could not be read ({e}).", print_exception=False) from None
    img.preprocess = preprocess
    return img


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
        folder = H.app_tmp() / "panels"
        folder.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        tmp, path = folder / f".{name}.tmp", folder / f"{name}.jpg"
        value.convert("RGB").save(tmp, "JPEG", quality=self.quality)
        os.replace(tmp, path)
        with self._lock:
            self._recent.append(path)
            old = [self._recent.popleft() for _ in range(max(0, len(self._recent) - self.keep))]
        for f in old:
            f.unlink(missing_ok=True)
        return path

    def all(self, values: tuple) -> tuple:
        return tuple(self(v) for v in values)


_files = PanelFiles()


def _sid(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


# -- wrappers (one per listener) ------------------------------------------------------------------
def on_analyze(image, golden_mode, ratio, left, right, request: gr.Request,
               progress=gr.Progress(track_tqdm=True)):
    """Rank the image's patches with every ranker (golden included); draw rankings and keep masks."""
    return _files.all(H.analyze_views(image, golden_mode, ratio, left, right, session=_sid(request),
                                      progress=progress))


def _blank_panels(request: gr.Request | None) -> tuple:
    H.get_session(_sid(request)).analysis = None
    blank = H.render.placeholder(None, "Upload or paste an image, or pick an example below.")
    return (*_files.all((blank,) * 4), "", "No image yet.", gr.skip())


def _analyze_fast(image, golden_mode, ratio, left, right, request: gr.Request,
                  progress=gr.Progress()):
    """UI stage 1: every ranker but golden, drawn at once; golden follows in ``_golden``. With no
    predictor for the model, the right side switches to CLS attention (a training-free ranker)."""
    if image is None:
        return _blank_panels(request)
    ratio, left, right = H._checked(ratio, left, right)
    a = H.analyze(image, golden_mode, session=_sid(request), progress=progress, golden=False)
    if "predictor" in a.missing and right == "predictor" and "attention" in a.orders:
        right = "attention"
        gr.Info("No predictor for this model: comparing with CLS attention instead.")
    return (*_files.all(H.views(ratio, left, right, session=_sid(request))), H.status_md(a), right)


def _golden(ratio, left, right, request: gr.Request, progress=gr.Progress()):
    """UI stage 2: the golden search on the current analysis, then redraw."""
    if H.get_session(_sid(request)).analysis is None:
        return (gr.skip(),) * 6
    return _files.all(H.golden_views(ratio, left, right, session=_sid(request), progress=progress))


def on_views(ratio, left, right, request: gr.Request):
    """Redraw both rankings and keep masks from cached orders (no model run)."""
    return _files.all(H.views(ratio, left, right, session=_sid(request)))


def on_threshold(ratio, left, right, request: gr.Request):
    """Slider drag: re-threshold the cached orders; returns both keep masks and the agreement."""
    return _files.all(H.threshold(ratio, left, right, session=_sid(request)))


def on_prune(ratio, left, right, labels, use_tokens, request: gr.Request):
    """Slider release: pruned forward for both rankers; top-5 zero-shot, kept tokens, GFLOPs, latency."""
    return H.prune(ratio, left, right, labels, bool(use_tokens), session=_sid(request))


def on_curve(labels, request: gr.Request, progress=gr.Progress()):
    """Top-class probability vs keep ratio for every ranker, with the flip points."""
    return H.curve(labels, session=_sid(request), progress=progress)


def on_export(ratio, left, right, labels, request: gr.Request, progress=gr.Progress()):
    """Overlay PNGs, rankings and the per-image curve (JSON + CSV) as downloadable files."""
    return H.export(ratio, left, right, labels, session=_sid(request), progress=progress)


def on_load_model(choice, arch, path, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    """Switch this session's model; a failed load keeps the current one."""
    msg, labels, value = H.load_model(choice, arch, path, session=_sid(request), progress=progress)
    if labels is None:
        gr.Warning("Model not loaded; the current model is kept.")
        return msg, gr.skip(), value, gr.update(visible=value == "local"), gr.skip()
    return msg, labels, value, gr.update(visible=value == "local"), H.default_golden_mode(_sid(request))


def on_pick_model(choice, arch, path, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    if choice == "local":
        return ("Enter the architecture and a checkpoint path (or `local-dir:/folder`), then press "
                "**Load model**.", gr.skip(), choice, gr.update(visible=True), gr.skip())
    return on_load_model(choice, arch, path, request, progress)


def on_label_preset(preset, request: gr.Request):
    """Fill the labels box with a label set (the session keeps it across model changes)."""
    return H.label_preset(preset, session=_sid(request))


def on_upload_predictor(file, request: gr.Request):
    """Use an uploaded predictor file for the current model (refused if made for another model)."""
    return H.upload_predictor(file, session=_sid(request))


def on_sweep(spec, limit, include_golden, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
    """Accuracy / GFLOPs / latency per method and keep ratio on a labelled dataset, computed now."""
    return H.sweep_dataset(spec, limit, include_golden, session=_sid(request), progress=progress)


def on_tradeoff():
    """Accuracy vs GFLOPs and vs latency from the precomputed sweep results."""
    return H.tradeoff()


# Private follow-ups of a (re)analysis: quiet when there is nothing to do.
def _after_prune(ratio, left, right, labels, use_tokens, request: gr.Request):
    if H.get_session(_sid(request)).analysis is None:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    return H.prune(ratio, left, right, labels, bool(use_tokens), session=_sid(request))


def _after_curve(labels, request: gr.Request, progress=gr.Progress()):
    if H.get_session(_sid(request)).analysis is None:
        return gr.skip(), gr.skip()
    return H.curve(labels, session=_sid(request), progress=progress)


def _reanalyze(image, golden_mode, ratio, left, right, request: gr.Request, progress=gr.Progress()):
    if image is None:
        return (gr.skip(),) * 7
    return _analyze_fast(image, golden_mode, ratio, left, right, request, progress)


# -- layout ---------------------------------------------------------------------------------------
def _preload_on_spaces() -> None:
    if engine.ON_SPACES and os.environ.get("PATCHRANK_PRELOAD", "1") != "0":
        def work():
            try:
                engine.REGISTRY.load(engine.SPACES_DEFAULT)
            except Exception as e:  # the app still works with the bundled model
                print(f"[patchrank] preload of {engine.SPACES_DEFAULT} failed: {e}")
        threading.Thread(target=work, daemon=True, name="preload").start()


def build_demo(golden_mode: str = "exact") -> gr.Blocks:
    """The whole app as a ``gr.Blocks`` (queue set, not launched). ``golden_mode``: the golden
    search selected at start ("exact" or "fast")."""
    m = engine.REGISTRY.bundled()              # load once at startup; shared read-only
    _preload_on_spaces()
    rankers = H.ranker_choices()
    model_choices = [(label, key) for key, (label, _) in engine.MODEL_CHOICES.items()]
    # gradio cache: every 10 min, files older than 20 min go (panels are fetched within seconds)
    with gr.Blocks(title="PatchRank", delete_cache=(600, 1200)) as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Explore"):
            with gr.Row():
                with gr.Column(scale=1, min_width=300):
                    image = image_input(label="Image", sources=["upload", "clipboard"],
                                       height=300, elem_id="pr-image")
                    golden_mode = gr.Radio([(v, k) for k, v in engine.GOLDEN_MODES.items()], value=golden_mode,
                                           label="Golden ranking",
                                           info="fast mode: for large models on CPU; approximate")
                    labels = gr.Textbox(", ".join(engine.labels_for(m)), lines=3, max_lines=8,
                                        label="Class labels (comma or newline separated)",
                                        elem_id="pr-labels")
                    preset = gr.Radio([(v, k) for k, v in engine.LABEL_PRESETS.items()],
                                      value="everyday", label="Labels for real CLIP", elem_id="pr-label-set",
                                      info="the bundled model keeps its 6 classes; ImageNet's first "
                                           "use encodes 998 prompts (minutes on 2 CPU cores)")
                    with gr.Accordion("Model and predictor", open=False):
                        model = gr.Dropdown(model_choices, value="bundled", label="Model",
                                            elem_id="pr-model")
                        with gr.Group(visible=False) as local_box:
                            arch = gr.Textbox("", label="Architecture (open_clip name)", placeholder="ViT-B-16")
                            ckpt = gr.Textbox("", label="Checkpoint file or local-dir:/folder",
                                              placeholder="/models/ViT-B-16-openai.safetensors")
                            load_btn = gr.Button("Load model")
                        model_status = gr.Markdown(f"**Model** {engine.describe(m)}.", label="Model status")
                        pred_file = gr.File(label="Predictor file for this model (.safetensors)",
                                            file_types=[".safetensors"], type="filepath")
                        pred_status = gr.Markdown(label="Predictor status", elem_classes="pr-note")
                with gr.Column(scale=3):
                    with gr.Row():
                        left = gr.Dropdown(rankers, value="golden", label="Left ranker", elem_id="pr-left")
                        right = gr.Dropdown(rankers, value="predictor", label="Right ranker", elem_id="pr-right")
                    with gr.Row():
                        heat_l = gr.Image(label="Left: ranking", type="pil", format="jpeg", interactive=False,
                                          elem_id="pr-heat-left", elem_classes="pr-panel")
                        heat_r = gr.Image(label="Right: ranking", type="pil", format="jpeg", interactive=False,
                                          elem_id="pr-heat-right", elem_classes="pr-panel")
                    with gr.Row():
                        ratio = gr.Slider(MIN_RATIO, MAX_RATIO, value=DEFAULT_RATIO, step=0.01, scale=4,
                                          label="Keep ratio (fraction of patches kept)", elem_id="pr-ratio")
                        use_tokens = gr.Checkbox(False, label="add learnable tokens after pruning", scale=1,
                                                 info="recover accuracy (phase III); bundled model")
                    with gr.Row():
                        mask_l = gr.Image(label="Left: kept / pruned", type="pil", format="jpeg",
                                          interactive=False, elem_id="pr-mask-left", elem_classes="pr-panel")
                        mask_r = gr.Image(label="Right: kept / pruned", type="pil", format="jpeg",
                                          interactive=False, elem_id="pr-mask-right", elem_classes="pr-panel")
                    agreement = gr.Markdown(label="Keep count and agreement", elem_id="pr-agreement")
            with gr.Row():
                top_full = gr.Label(num_top_classes=5, label="Full model: top-5")
                top_l = gr.Label(num_top_classes=5, label="Left ranker, pruned: top-5")
                top_r = gr.Label(num_top_classes=5, label="Right ranker, pruned: top-5")
            cost = gr.Markdown(label="Kept tokens, GFLOPs, latency", elem_id="pr-cost")
            curve_plot = gr.Plot(label="This image: top-class probability vs keep ratio")
            curve_md = gr.Markdown(label="Flip points", elem_classes="pr-note")
            with gr.Row():
                export_btn = gr.Button("Export overlays, rankings and curve", scale=1)
                files = gr.File(label="Exports", file_count="multiple", scale=2)
            status = gr.Markdown(label="Analysis status", elem_id="pr-status", elem_classes="pr-note")
            gr.Examples([[p] for p in H.example_files()], inputs=[image], examples_per_page=20,
                        label="Examples: bundled evaluation scenes, then real photos "
                              "(sources and licences: assets/examples/ATTRIBUTION.md)")
        with gr.Tab("Trade-offs"):
            trade_md = gr.Markdown(label="Results status")
            with gr.Row():
                fig_g = gr.Plot(label="Accuracy vs GFLOPs")
                fig_l = gr.Plot(label="Accuracy vs latency")
            refresh = gr.Button("Reload results")
            with gr.Accordion("Sweep a labelled dataset now (uses the model selected in Explore)", open=False):
                with gr.Row():
                    sweep_spec = gr.Textbox("bundled-eval:200", label="Dataset",
                                            info="a folder with one subfolder per class, or bundled-eval:N")
                    sweep_n = gr.Number(200, precision=0, minimum=1, maximum=H.MAX_SWEEP_IMAGES,
                                        label="Images (at most)")
                    sweep_golden = gr.Checkbox(False, label="include golden (slow: a search per image)")
                sweep_btn = gr.Button("Run sweep")

        panels = [heat_l, heat_r, mask_l, mask_r, agreement]
        analysis_in = [image, golden_mode, ratio, left, right]
        prune_in, prune_out = [ratio, left, right, labels, use_tokens], [top_full, top_l, top_r, cost]
        model_kw = dict(concurrency_id="model", concurrency_limit=1)

        def follow_ups(ev):
            """After a (re)analysis: golden search, pruned forward, per-image curve, in turn."""
            return (ev.success(_golden, [ratio, left, right], panels + [status], api_visibility="private",
                               **model_kw)
                      .success(_after_prune, prune_in, prune_out, api_visibility="private",
                               show_progress="minimal", **model_kw)
                      .success(_after_curve, [labels], [curve_plot, curve_md], api_visibility="private",
                               **model_kw))

        stage1_out = panels + [status, right]
        follow_ups(image.change(_analyze_fast, analysis_in, stage1_out, api_visibility="private",
                                trigger_mode="always_last", **model_kw))
        follow_ups(golden_mode.input(_reanalyze, analysis_in, stage1_out, api_visibility="private",
                                      trigger_mode="always_last", **model_kw))
        ratio.input(on_threshold, [ratio, left, right], [mask_l, mask_r, agreement], api_name="threshold",
                    show_progress="hidden", trigger_mode="always_last",
                    concurrency_id="draw", concurrency_limit=4)
        ratio.release(on_prune, prune_in, prune_out, api_name="prune", show_progress="minimal",
                      trigger_mode="always_last", **model_kw)
        for dd in (left, right):
            dd.input(on_views, [ratio, left, right], panels, api_visibility="private",
                     concurrency_id="draw", concurrency_limit=4).success(
                _after_prune, prune_in, prune_out, api_visibility="private", **model_kw)
        gr.on([labels.blur, labels.submit], _after_prune, prune_in, prune_out, api_visibility="private",
              trigger_mode="always_last", **model_kw).success(
            _after_curve, [labels], [curve_plot, curve_md], api_visibility="private", **model_kw)
        use_tokens.change(_after_prune, prune_in, prune_out, api_visibility="private", **model_kw)
        preset.input(on_label_preset, [preset], [labels], api_name="label_preset").success(
            _after_prune, prune_in, prune_out, api_visibility="private", **model_kw).success(
            _after_curve, [labels], [curve_plot, curve_md], api_visibility="private", **model_kw)
        export_btn.click(on_export, [ratio, left, right, labels], [files], api_name="export", **model_kw)
        model_out = [model_status, labels, model, local_box, golden_mode]
        follow_ups(model.input(on_pick_model, [model, arch, ckpt], model_out, api_visibility="private",
                               **model_kw)
                   .success(_reanalyze, analysis_in, stage1_out, api_visibility="private", **model_kw))
        follow_ups(load_btn.click(on_load_model, [model, arch, ckpt], model_out, api_name="load_model",
                                  **model_kw)
                   .success(_reanalyze, analysis_in, stage1_out, api_visibility="private", **model_kw))
        follow_ups(pred_file.upload(on_upload_predictor, [pred_file], [pred_status],
                                    api_name="upload_predictor", **model_kw)
                   .success(_reanalyze, analysis_in, stage1_out, api_visibility="private", **model_kw))
        # API-only endpoints (hidden triggers): one-call analysis, redraw, per-image curve.
        analyze_btn = gr.Button(visible=False)
        analyze_btn.click(on_analyze, analysis_in, panels + [status], api_name="analyze", **model_kw)
        views_btn = gr.Button(visible=False)
        views_btn.click(on_views, [ratio, left, right], panels, api_name="views",
                        concurrency_id="draw", concurrency_limit=4)
        curve_btn = gr.Button(visible=False)
        curve_btn.click(on_curve, [labels], [curve_plot, curve_md], api_name="curve", **model_kw)
        refresh.click(on_tradeoff, None, [fig_g, fig_l, trade_md], api_name="tradeoff")
        sweep_btn.click(on_sweep, [sweep_spec, sweep_n, sweep_golden], [fig_g, fig_l, trade_md],
                        api_name="sweep", **model_kw)
        demo.load(on_tradeoff, None, [fig_g, fig_l, trade_md], api_visibility="private")
    demo.queue(max_size=QUEUE_MAX, default_concurrency_limit=1)
    return demo


def launch_kwargs() -> dict[str, Any]:
    """Arguments for ``demo.launch`` shared by app.py and the tests (Gradio 6: theme/css here)."""
    return dict(theme=THEME, css=CSS, max_file_size="25mb", show_error=True)
