"""The app's handlers as plain functions (no server): inputs, drawing, analysis, slider, exports."""
import json
from pathlib import Path

from tests.app import app_support as S  # noqa: F401  (sets the app temp folder before gradio loads)
import gradio as gr
import numpy as np
import open_clip
import pytest
from PIL import Image

import patchrank as pr
from app import curve as C, engine, exports as X, handlers as H, inputs, render, sessions, tradeoffs as T

LEFT, RIGHT = "golden", "attention"


@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    return S.odd_images(tmp_path_factory.mktemp("odd"))


@pytest.fixture
def analysed(monkeypatch):
    """A session with the example photo analysed on the bundled model (golden stood in by norm)."""
    S.fast_golden(monkeypatch)
    H.ANALYSES.clear()
    sid = "test-analysed"
    sessions.session(sid).model_key = "bundled"
    out = H.analyze_views(str(S.EXAMPLE), "exact", 0.5, LEFT, RIGHT, session=sid)
    return sid, out


# -- inputs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", S.ACCEPTED)
def test_odd_images_become_rgb(odd, name):
    img, notes = inputs.load_image(str(odd[name]))
    assert img.mode == "RGB" and min(img.size) >= inputs.MIN_SIDE
    if name == "exif_rotated":
        assert img.size == (40, 80)                 # orientation 6 applied: 80x40 becomes 40x80
    if name == "animated":
        assert any("first frame" in n for n in notes)


@pytest.mark.parametrize("name", S.REFUSED)
def test_bad_images_refused_with_a_message(odd, name):
    with pytest.raises(inputs.InputError) as e:
        inputs.load_image(str(odd[name]))
    msg = str(e.value)
    assert len(msg) > 20 and "Traceback" not in msg
    if name in ("bomb", "big_header"):
        assert "megapixels" in msg
    if name == "tiny_1x1":
        assert "1x1" in msg


def test_missing_image():
    with pytest.raises(inputs.InputError, match="No image"):
        inputs.load_image(None)


def test_labels_parsing():
    assert inputs.parse_labels("cat, dog\nbird;  cat ") == ["cat", "dog", "bird"]
    with pytest.raises(inputs.InputError, match="at least one"):
        inputs.parse_labels(" , \n ")
    with pytest.raises(inputs.InputError, match="at most"):
        inputs.parse_labels(", ".join(f"class {i}" for i in range(500)))
    with pytest.raises(inputs.InputError, match="too long"):
        inputs.parse_labels("x" * 200)


@pytest.mark.parametrize("bad", [-0.1, 0.0, 1.5, float("nan"), "abc", None])
def test_ratio_checked(bad):
    with pytest.raises(inputs.InputError):
        inputs.check_ratio(bad)
    assert inputs.check_ratio("0.5") == 0.5


# -- drawing ----------------------------------------------------------------------------------------
def test_heatmap_colours_follow_rank():
    view = np.full((14 * 32, 14 * 32, 3), 128, np.uint8)
    order = np.random.default_rng(1).permutation(196)
    img = np.asarray(render.heatmap(view, order, (14, 14), "t"))
    assert img.shape[1] == 14 * 32 and img.shape[0] == 14 * 32 + render.STRIP_H

    def cell(p):
        r, c = divmod(int(p), 14)
        return img[r * 32 + 16, c * 32 + 16].astype(int)
    lut = render._lut()
    # first patch drawn in the top colour, last in the bottom colour (blended over grey)
    for p, colour in ((order[0], lut[255]), (order[-1], lut[0])):
        expect = 128 * (1 - render.HEAT_ALPHA) + colour * render.HEAT_ALPHA
        assert np.abs(cell(p) - expect).max() <= 2


def test_mask_overlay_keeps_and_dims():
    view = np.full((7 * 64, 7 * 64, 3), 200, np.uint8)
    keep = np.zeros(49, bool)
    keep[[0, 10, 48]] = True
    img = np.asarray(render.mask_overlay(view, keep, (7, 7), "t"))
    assert (img[32, 32] == 200).all()                 # patch 0 kept: unchanged
    assert img[32, 96].mean() < 100                   # patch 1 pruned: dimmed


def test_rank_of_inverts_order():
    order = np.array([3, 0, 2, 1])
    assert render.rank_of(order).tolist() == [1, 3, 2, 0]


# -- analysis, slider, release ------------------------------------------------------------------
def test_analyze_views_outputs(analysed):
    sid, out = analysed
    heat_l, heat_r, mask_l, mask_r, agree, status = out
    for im in (heat_l, heat_r, mask_l, mask_r):
        assert isinstance(im, Image.Image) and im.width >= 14 * 16
    assert "Kendall tau" in agree and "IoU" in agree
    assert "bundled" in status
    a = sessions.session(sid).analysis
    for name in ("golden", "attention", "norm", "random"):
        order = a.orders[name]
        assert sorted(order.tolist()) == list(range(196))


def test_threshold_runs_no_model(analysed, monkeypatch):
    """Dragging the slider re-thresholds cached orders: any model call would raise here."""
    sid, _ = analysed
    import patchrank.forward as F

    def boom(*a, **k):
        raise AssertionError("the slider's fast path ran the model")
    for name in ("run_prefix", "run_suffix", "run_blocks", "encode"):
        monkeypatch.setattr(F, name, boom)
    lo = H.threshold(0.2, LEFT, RIGHT, session=sid)
    hi = H.threshold(0.8, LEFT, RIGHT, session=sid)
    assert np.asarray(lo[0]).mean() < np.asarray(hi[0]).mean()      # fewer kept = darker
    assert "39 of 196" in lo[2] and "157 of 196" in hi[2]
    assert "with each side's ranker: golden (one-shot leave-one-out)" in lo[2] and "(its search)" in lo[2]


def test_prune_top5_and_costs(analysed):
    sid, _ = analysed
    full, left, right, md = H.prune(0.3, LEFT, RIGHT, "top, sandal, bag, sneaker, ankle boot, pair of trousers",
                                    session=sid)
    for d in (full, left, right):
        assert 1 <= len(d) <= 5 and all(0 <= v <= 1 for v in d.values())
    assert abs(sum(engine.probs(sessions.session(sid).analysis.model, ["a", "b"],
                                  sessions.session(sid).analysis.full_emb)[0]) - 1) < 1e-4
    assert "GFLOPs" in md and "Latency" in md and "59 of 196" in md
    # equal cost means all cost: each ranker's own work is added to the pruned encoder's
    m = sessions.session(sid).analysis.model
    enc = float(pr.flops(m, keep=59))
    from patchrank import rankers
    att = enc + rankers.ranker_gflops(m, "attention")
    assert f"CLS attention {att:.3g}" in md, md
    assert "(its search)" in md and f"{enc:.3f} pruned encoder" in md


def test_curve_and_flip(analysed):
    sid, _ = analysed
    fig, md = C.curve("top, sandal, bag", session=sid)
    names = {t.name for t in fig.data}
    assert {"golden (one-shot leave-one-out)", "CLS attention", "token norm (high first)", "random"} <= names
    d = C.curve_data(sessions.session(sid).analysis, ["top", "sandal", "bag"])
    for row in d["rankers"].values():
        assert len(row["prob"]) == len(d["ratios"])
        assert row["flip"] is None or 0 < row["flip"] < 1
    # at keep 1.0 every ranker keeps all patches: the full model's probability
    for row in d["rankers"].values():
        if d["ratios"][-1] == 1.0:
            assert abs(row["prob"][-1] - d["full_prob"]) < 1e-4


def test_export_files(analysed):
    sid, _ = analysed
    files = X.export(0.4, LEFT, "tome", "top, sandal, bag", session=sid)
    root = H.app_tmp()
    names = {Path(f).name for f in files}
    base = "cat-chelsea_keep0.40"                  # named after the image and the ratio
    assert {f"{base}_{n}" for n in ("rankings.json", "rankings.csv", "curve.json", "curve.csv")} <= names
    assert sum(n.endswith(".png") for n in names) == 4 and all(n.startswith(base) for n in names)
    assert Path(files[0]).name == f"{base}.zip"    # one click downloads everything
    import zipfile
    with zipfile.ZipFile(files[0]) as z:
        assert sorted(z.namelist()) == sorted(f"{base}/{Path(f).name}" for f in files[1:])
    for f in files:
        assert Path(f).resolve().is_relative_to(root.resolve())
    data = json.loads(Path(next(f for f in files if f.endswith("rankings.json"))).read_text())
    assert data["grid"] == [14, 14] and sorted(data["orders"]["golden"]) == list(range(196))
    rows = Path(next(f for f in files if f.endswith("rankings.csv"))).read_text().strip().splitlines()
    assert len(rows) == 197
    # a second export replaces the first one's folder (bounded disk use)
    files2 = X.export(0.4, LEFT, RIGHT, "top, sandal, bag", session=sid)
    assert not Path(files[0]).exists() and Path(files2[0]).exists()


def test_errors_are_clear(analysed, odd):
    sid, _ = analysed
    with pytest.raises(gr.Error, match="between"):
        H.threshold(7, LEFT, RIGHT, session=sid)
    with pytest.raises(gr.Error, match="Unknown ranker"):
        H.threshold(0.5, "oracle", RIGHT, session=sid)
    with pytest.raises(gr.Error, match="at least one"):
        H.prune(0.5, LEFT, RIGHT, "", session=sid)
    with pytest.raises(gr.Error, match="at most"):
        H.prune(0.5, LEFT, RIGHT, ",".join(f"c{i}" for i in range(500)), session=sid)
    with pytest.raises(gr.Error, match="not an image"):
        H.analyze_views(str(odd["not_image"]), "fast", 0.5, LEFT, RIGHT, session=sid)
    with pytest.raises(gr.Error, match="No image analysed"):
        H.threshold(0.5, LEFT, RIGHT, session="never-analysed")
    # the session's earlier analysis survives a refused input
    assert sessions.session(sid).analysis is not None
    H.threshold(0.5, LEFT, RIGHT, session=sid)


def test_real_golden_fast_mode(monkeypatch):
    """The actual golden engine, in the app's fast mode, on a small bundled scene."""
    H.ANALYSES.clear()
    ds = __import__("patchrank").bundled_eval(limit=1)
    calls = []
    a = H.analyze(ds.images[0], "fast", session="test-golden",
                  progress=lambda f, desc="": calls.append((f, desc)))
    assert sorted(a.orders["golden"].tolist()) == list(range(196))
    assert "golden" in a.seconds
    fracs = [f for f, d in calls if f is not None and d.startswith("golden ranking: image")]
    assert len(fracs) >= 4 and fracs == sorted(fracs)     # the bar moves during the search


def test_predictor_missing_then_uploaded(monkeypatch, tmp_path, tiny):
    S.fast_golden(monkeypatch)
    sid = "test-predictor"
    m = engine.REGISTRY.bundled()
    out = H.analyze_views(str(S.EXAMPLE), "exact", 0.5, "golden", "predictor", session=sid)
    a = sessions.session(sid).analysis
    if "predictor" in a.missing:                   # no shipped predictor for this model (yet)
        assert "No predictor for this model" in out[5]
    from patchrank.predictor import Predictor
    # a file trained for another model is refused, naming the mismatch
    other = tmp_path / "other.safetensors"
    Predictor.for_model(tiny).save(other)
    with pytest.raises(gr.Error, match="can't be used"):
        H.upload_predictor(str(other), session=sid)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(gr.Error, match="predictor"):
        H.upload_predictor(str(junk), session=sid)
    # one made for this model is used for this session only
    mine = tmp_path / "mine.safetensors"
    Predictor.for_model(m).save(mine)
    msg = H.upload_predictor(str(mine), session=sid)
    assert "Predictor loaded" in msg
    H.analyze_views(str(S.EXAMPLE), "exact", 0.5, "golden", "predictor", session=sid)
    a = sessions.session(sid).analysis
    assert sorted(a.orders["predictor"].tolist()) == list(range(196))
    assert a.predictor_source == "mine.safetensors"


def test_failed_model_load_keeps_current():
    sid = "test-models"
    sessions.session(sid).model_key = "bundled"
    msg, labels, value = H.load_model("ViT-B-32/openai", session=sid)     # offline: no weights
    assert "Could not load" in msg and "stays in use" in msg and labels is None and value == "bundled"
    assert "local checkpoint" in msg and "load_model(" not in msg     # user's words and route
    msg, labels, value = H.load_model("local", "ViT-B-16", "/nonexistent/ckpt.safetensors", session=sid)
    assert "Could not load" in msg and "not found" in msg and value == "local"   # menu kept on local
    msg, labels, value = H.load_model("local", "ViT-B-16", str(S.EXAMPLE), session=sid)  # not weights
    assert "could not be read as ViT-B-16 weights" in msg and value == "local"
    msg, labels, value = H.load_model("local", "", "", session=sid)
    assert "Could not load" in msg
    assert sessions.session(sid).model_key == "bundled"
    msg, labels, value = H.load_model("bundled", session=sid)
    assert "Loaded" in msg and "sandal" in labels


def test_labels_prefilled_per_model():
    m = engine.REGISTRY.bundled()
    assert engine.labels_for(m) == list(m.classnames)

    class Real:
        classnames = None
    assert "cat" in engine.labels_for(Real())


def test_imagenet_label_preset(monkeypatch):
    """Real CLIP's labels can be switched to open_clip's 1,000 ImageNet classes: the 100-label
    cap of the box is lifted for the preset alone, the choice survives a model switch, and
    /prune classifies among all of them. A random-init CLIP with a tiny text tower but real
    CLIP's 77-token context stands in for ViT-B (whose 998 prompts take minutes on 2 cores)."""
    from tests.conftest import tiny_vit
    S.fast_golden(monkeypatch)
    real = tiny_vit(context_length=77)
    monkeypatch.setattr(engine.REGISTRY, "_others", sessions.LRU(2))
    engine.REGISTRY._others.put("ViT-B-32/openai", real)
    sid = "test-imagenet"
    sessions.session(sid).model_key = "bundled"
    bundled_text = H.label_preset("imagenet", session=sid)
    assert bundled_text == ", ".join(engine.REGISTRY.bundled().classnames)   # keeps its own classes
    sessions.session(sid).model_key = "ViT-B-32/openai"
    text = H.label_preset("imagenet", session=sid)
    names = inputs.parse_labels(text, presets=[engine.IMAGENET_LABELS])
    assert len(names) == len(set(open_clip.IMAGENET_CLASSNAMES)) == 998 and names[0] == "tench"
    with pytest.raises(inputs.InputError, match="at most 100"):
        inputs.parse_labels(text + ", one more thing", presets=[engine.IMAGENET_LABELS])
    H.analyze_views(str(S.EXAMPLE), "exact", 0.5, LEFT, RIGHT, session=sid)
    full, left, right, md = H.prune(0.5, LEFT, RIGHT, text, session=sid)
    assert len(full) == 5 and set(full) <= set(names)
    assert H.label_preset("everyday", session=sid).startswith("cat, dog")
    with pytest.raises(gr.Error, match="Unknown label set"):
        H.label_preset("everything", session=sid)
    assert sessions.session(sid).label_preset == "everyday"


# -- trade-off tab ----------------------------------------------------------------------------------
def test_tradeoff_placeholder_and_figures(tmp_path):
    g, lat, md = T.tradeoff(tmp_path / "none")
    assert "not computed yet" in md
    rows = [{"method": m, "ratio": r, "accuracy": 0.5 + r / 3, "gflops": 0.1 + r, "latency_ms": 2 + r}
            for m in ("predictor", "random") for r in (0.3, 0.6, 1.0)]
    (tmp_path / "sweep.json").write_text(json.dumps(rows))
    (tmp_path / "broken.json").write_text("{not json")
    g, lat, md = T.tradeoff(tmp_path)
    assert len(g.data) == 2 and len(lat.data) == 1          # latency: one median line over methods
    assert "broken.json" in md and "6 points" in md


# -- bounded memory, examples -------------------------------------------------------------------
def test_sessions_bounded():
    for i in range(sessions.MAX_SESSIONS + 20):
        sessions.session(f"flood-{i}")
    assert len(sessions.SESSIONS) <= sessions.MAX_SESSIONS


def test_examples_gallery():
    files = H.example_files()
    real = [f for f in files if Path(f).parent == H.EXAMPLES_DIR]
    scenes = [f for f in files if Path(f).parent != H.EXAMPLES_DIR]
    assert len(real) >= 10 and len(scenes) >= 1
    credits = (H.EXAMPLES_DIR / "ATTRIBUTION.md").read_text()
    for f in real:
        assert Path(f).stat().st_size < 1_000_000
        assert f"`{Path(f).name}`" in credits
    for f in scenes:
        assert Path(f).resolve().is_relative_to(H.app_tmp().resolve())


def test_results_reader_is_the_engines(tmp_path):
    """One results schema: a file with a bad row is refused whole, the row named (the engine's
    ``patchrank.results`` reader), and the rest of the folder is still drawn."""
    (tmp_path / "a.json").write_text(json.dumps({"rows": [
        {"method": "golden", "ratio": 0.5, "accuracy": 0.8, "gflops": 1.0},
        {"method": "golden", "ratio": "x", "accuracy": 0.8, "gflops": 1.0}]}))
    (tmp_path / "b.json").write_text(json.dumps([
        {"method": m, "ratio": r, "accuracy": 0.7, "gflops": r} for m in ("golden", "random")
        for r in (0.5, 1.0)]))
    g, lat, md = T.tradeoff(tmp_path)
    assert "a.json, row 1: ratio must be a number" in md and len(g.data) == 2
    assert "no latency" in json.dumps(lat.to_plotly_json())


def test_tradeoff_names_the_dataset_zooms_and_draws_latency_spread():
    g, lat, md = T.tradeoff()                     # the shipped bundled sweep
    assert "bundled-eval, 1200 images" in g.layout.title.text and "1200 images" in md
    lo, hi = g.layout.yaxis.range
    assert lo > 60 and any("token norm (high first)" in a.text for a in g.layout.annotations)
    g_all, _, _ = T.tradeoff(focus=False)
    assert g_all.layout.yaxis.range is None
    (trace,) = lat.data
    assert list(trace.x) == sorted(trace.x) and trace.error_y.array is not None
    assert "Latency vs keep ratio" in lat.layout.title.text and "overhead" in md


def test_sweep_on_demand_small():
    g, lat, md = T.sweep_dataset("bundled-eval:8", 8, False, session="test-sweep")
    assert len(g.data) >= 3 and "8 images" in md
    with pytest.raises(gr.Error, match="could not run"):
        T.sweep_dataset("/no/such/folder", 8, session="test-sweep")
    with pytest.raises(gr.Error, match="between"):
        T.sweep_dataset("bundled-eval:8", 10**6, session="test-sweep")


def test_prune_with_learnable_tokens(analysed, monkeypatch):
    sid, _ = analysed
    labels = "top, sandal, bag"
    monkeypatch.setattr(engine, "bundled_tokens", lambda m: (None, "none shipped yet"))
    *_, md = H.prune(0.5, LEFT, RIGHT, labels, True, session=sid)
    assert "No learnable tokens for this model" in md
    from patchrank.tokens import LearnableTokens
    m = sessions.session(sid).analysis.model
    tok = LearnableTokens.for_model(m, num_visual=2)
    monkeypatch.setattr(engine, "bundled_tokens", lambda m: (tok, ""))
    full, left, right, md = H.prune(0.5, LEFT, RIGHT, labels, True, session=sid)
    assert "+ 2 learnable" in md and len(left) == 3
    assert f"{float(__import__('patchrank').flops(m, keep=98, extra_tokens=2)):.3f}" in md
    tok.meta["train"] = {"ratios": [0.4, 0.6, 0.8]}          # trained for keep 0.4-0.8 only
    *_, md = H.prune(0.9, LEFT, RIGHT, labels, True, session=sid)
    assert "Learnable tokens not used" in md and "0.4-0.8" in md and "learnable" not in md.split("Latency")[0]


def test_other_model_geometry(tiny):
    """A non-bundled model (4x4 grid, no class names, no predictor) goes through every view."""
    engine.REGISTRY._others.put("tiny-test", tiny)
    sid = "test-tiny"
    sessions.session(sid).model_key = "tiny-test"
    H.ANALYSES.clear()
    out = H.analyze_views(str(S.EXAMPLE), "fast", 0.5, "golden", "predictor", session=sid)
    a = sessions.session(sid).analysis
    assert a.grid == (4, 4) and sorted(a.orders["golden"].tolist()) == list(range(16))
    assert "predictor" in a.missing and "No predictor for this model" in out[5]
    assert out[0].width == 4 * render.cell_size((4, 4))
    masks = H.threshold(0.25, "golden", "tome", session=sid)
    assert "4 of 16" in masks[2]
    full, left, right, md = H.prune(0.25, "golden", "attention", ", ".join(engine.DEFAULT_REAL_LABELS[:5]),
                                    session=sid)
    assert len(full) == 5 and "4 of 16" in md
    C.curve("cat, dog", session=sid)
    sessions.session(sid).model_key = "bundled"


def test_default_golden_mode_per_model(tiny):
    assert H.default_golden_mode("test-mode-bundled") == "exact"       # small bundled model
    engine.REGISTRY._others.put("tiny-test", tiny)
    sessions.session("test-mode-tiny").model_key = "tiny-test"
    assert H.default_golden_mode("test-mode-tiny") == "exact"          # tiny: cheap either way
