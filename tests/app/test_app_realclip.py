"""The app on real photos and real CLIP through the stand-in Hub (docs/app.md).

- predictors listed per model (shipped list + PATCHRANK_PREDICTORS), loaded on choice from an
  ``hf-hub:`` repository, a failing one keeping the current predictor;
- a real CLIP's download shown with its size in MB and time left;
- a photo on the bundled model: a plain note and a switch to a real CLIP;
- the golden bar's time left;
- the examples' golden rankings ranked in the background, kept on disk, found by analyses,
  the thread stopping on a model switch.
Handlers are called directly, then the same through gradio_client on a served app.
"""
from __future__ import annotations

import itertools
import json
import threading
import time

from tests.app import app_support as S  # noqa: F401  (the app's temp folder, before gradio loads)
import gradio as gr
import pytest

import patchrank as pr
from patchrank import predictor_list, scene_check
from tests.conftest import tiny_vit
from tests.hub_fixtures import point_hub

from app import engine, example_cache, handlers as H, predictors as P, render, scene_note, state, sessions

pytestmark = pytest.mark.slow

REPO = "USER/patchrank-app-b32"
EXAMPLES = [str(p) for p in sorted((S.REPO / "assets" / "examples").glob("*.jpg"))]


@pytest.fixture(scope="module")
def listed(b32, hub, tmp_path_factory):
    """A predictor for the stand-in's ViT-B-32/openai on the Hub, and a list naming it, one for
    other weights, a missing file and one for another model (via PATCHRANK_PREDICTORS)."""
    m = b32[0]
    d = tmp_path_factory.mktemp("listed")
    pr.Predictor.for_model(m).save(d / "predictor.safetensors")
    hub.add(REPO, "predictor.safetensors", d / "predictor.safetensors")
    pr.Predictor.for_model(tiny_vit()).save(d / "other.safetensors")
    entries = [
        {"model": "ViT-B-32", "tag": "OpenAI", "source": f"hf-hub:{REPO}", "description": "good"},
        {"model": "ViT-B-32", "tag": "openai", "source": "other.safetensors", "description": "other weights"},
        {"model": "ViT-B-32", "tag": "openai", "source": f"hf-hub:{REPO}/missing.safetensors",
         "description": "missing"},
        {"model": "ViT-B-16", "tag": "openai", "source": f"hf-hub:{REPO}", "description": "B-16 only"},
    ]
    (d / "list.json").write_text(json.dumps({"predictors": entries}))
    return d / "list.json"


def _real_clip_setting(b32, hub, listed, monkeypatch) -> None:
    """A fresh model registry, the stand-in Hub serving ViT-B-32/openai, the predictor list in
    the environment and a fast golden stand-in: what every real-CLIP app test starts from."""
    monkeypatch.setattr(engine, "REGISTRY", engine.ModelRegistry())
    point_hub(monkeypatch, hub.url, b32[1])
    monkeypatch.setenv(predictor_list.ENV, str(listed))
    S.fast_golden(monkeypatch)


@pytest.fixture
def on_b32(b32, hub, listed, monkeypatch):
    """A session on ViT-B-32/openai (from the stand-in, cached), the list in the environment."""
    _real_clip_setting(b32, hub, listed, monkeypatch)
    sid = f"realclip-{time.monotonic_ns()}"
    msg, _, _ = H.load_model("ViT-B-32/openai", session=sid)
    assert msg.startswith("**Loaded**") and "MB downloaded" not in msg        # from the cache
    return sid


# -- the predictor list (engine) --------------------------------------------------------------------
def test_predictor_list_format_and_matching(tmp_path, bundled):
    good = {"model": "bundled", "tag": None, "source": "p.safetensors", "description": "d"}
    (tmp_path / "a.json").write_text(json.dumps([good, {"model": "x"}, "junk"]))
    entries, problems = predictor_list.read([tmp_path / "a.json", tmp_path / "none.json"], env="")
    assert [e.source for e in entries] == [str(tmp_path / "p.safetensors")]   # relative to the list
    assert len(problems) == 3 and "entry 2: the entry for x has no source" in problems[0]
    inline = json.dumps([{**good, "source": "hf-hub:o/r"}, {**good, "model": "ViT-B-16", "tag": "openai"}])
    got, problems = predictor_list.known_for(bundled, [tmp_path / "a.json"], env=inline)
    assert [e.source for e in got] == [str(tmp_path / "p.safetensors"), "hf-hub:o/r"]   # not B-16
    assert len(problems) == 2
    assert predictor_list.read([], env="{not json")[1][0].startswith("PATCHRANK_PREDICTORS: not JSON")
    shipped, problems = P.known(bundled)
    assert [e.source for e in shipped] == ["bundled"] and not problems        # the shipped list
    assert not P.known(tiny_vit())[0]                                          # none for another model


# -- listed predictors, loaded on choice -------------------------------------------------------------
def test_listed_predictor_loads_from_the_hub_and_failures_keep_it(on_b32, listed):
    sid = on_b32
    menu = P.menu_update(sid)
    other = str(listed.parent / "other.safetensors")
    missing = f"hf-hub:{REPO}/missing.safetensors"
    assert [v for _, v in menu["choices"]] == [f"hf-hub:{REPO}", other, missing]   # no B-16, no bundled
    assert menu["value"] is None                                       # no predictor for it yet
    assert "Predictor" in P.choose(f"hf-hub:{REPO}", session=sid)
    H.analyze_views(str(S.EXAMPLE), "fast", 0.5, "golden", "predictor", session=sid)
    a = sessions.session(sid).analysis
    assert sorted(a.orders["predictor"].tolist()) == list(range(49))
    assert "**Predictor** listed hf-hub:" in H.status_md(a) and P.menu_update(sid)["value"] == f"hf-hub:{REPO}"
    for source, words in ((other, "can't be used with ViT-B-32"),
                          (missing, "Could not get the predictor"),
                          ("hf-hub:USER/elsewhere", "not a predictor listed for ViT-B-32")):
        with pytest.raises(gr.Error, match=words) as e:
            P.choose(source, session=sid)
        assert "current predictor is kept" in e.value.message
        assert P.current_source(sid) == f"hf-hub:{REPO}"


# -- download progress and size ---------------------------------------------------------------------
def test_download_shows_size_and_progress(b32, hub, monkeypatch, tmp_path):
    monkeypatch.setattr(engine, "REGISTRY", engine.ModelRegistry())
    point_hub(monkeypatch, hub.url, tmp_path / "hf-home")              # nothing cached: a download
    calls = []
    msg, _, _ = H.load_model("ViT-B-32/openai", session="realclip-dl",
                             progress=lambda f, desc="": calls.append((f, desc)))
    shown = [(f, d) for f, d in calls if d.startswith("Downloading ViT-B-32/openai: open_clip_model")]
    size = (tmp_path / "hf-home").rglob("open_clip_model.safetensors").__next__().stat().st_size
    assert shown and all(f" of {size / 1e6:.0f} MB" in d for _, d in shown)   # size before and while
    assert shown[0][0] == 0.0 and shown[-1][0] == 1.0
    assert [f for f, _ in shown] == sorted(f for f, _ in shown)
    assert f"{size / 1e6:.0f} MB downloaded" in msg


def test_golden_bar_says_time_left(monkeypatch):
    from app.progress import Eta
    clock = iter([0.0, 2.0, 4.0])
    monkeypatch.setattr("app.progress.time.monotonic", lambda: next(clock))
    seen = []
    eta = Eta(lambda f, d: seen.append(d))
    eta(0.25, "golden ranking: image 1/1, 49 variants")
    eta(0.5, "golden ranking: image 1/1, 98 variants")
    assert seen == ["golden ranking: image 1/1, 49 variants · about 6 s left",
                    "golden ranking: image 1/1, 98 variants · about 4 s left"]


def test_real_clip_golden_reports_time_left_in_both_modes(b32, monkeypatch):
    """The real golden search on ViT-B-32 (the stand-in's weights): each mode's bar moves and
    says how long is left."""
    monkeypatch.setattr(engine, "REGISTRY", engine.ModelRegistry())
    engine.REGISTRY._others.put("ViT-B-32/openai", b32[0])
    sid = "realclip-eta"
    sessions.session(sid).model_key = "ViT-B-32/openai"
    for mode in ("exact", "fast"):
        H.ANALYSES.clear()
        calls = []
        H.analyze(str(S.EXAMPLE), mode, session=sid, progress=lambda f, desc="": calls.append((f, desc)))
        golden = [(f, d) for f, d in calls if d.startswith("golden ranking: image 1/1")]
        assert len(golden) >= 4 and [f for f, _ in golden] == sorted(f for f, _ in golden), mode
        assert any(d.endswith(" left") and "· about" in d for _, d in golden), (mode, golden[-1])


# -- a photo on the bundled model -------------------------------------------------------------------
def test_scene_check_separates_the_scenes_from_the_example_photos(bundled):
    views = [render.model_view(im, bundled.image_size, bundled.grid)
             for im in pr.bundled_eval(limit=300).images]
    assert all(scene_check.check(v).is_scene for v in views)
    from PIL import Image
    for f in EXAMPLES:
        verdict = scene_check.check(render.model_view(Image.open(f).convert("RGB"), bundled.image_size,
                                                      bundled.grid))
        assert not verdict.is_scene and verdict.reason().startswith("its "), f


def test_photo_gets_note_and_switch_scene_does_not(monkeypatch):
    S.fast_golden(monkeypatch)
    sid = "realclip-note"
    sessions.session(sid).model_key = "bundled"
    view = state.View(0.5, "golden", "attention", "top, bag", False)
    first = next(state.image_stream(str(S.EXAMPLE), "exact", view, session=sid))
    assert first["scene_box"] is True and "six" not in first["scene_note"]
    assert "top, pair of trousers, sandal, sneaker, bag, ankle boot" in first["scene_note"]
    assert scene_note.REAL_CLIP in first["scene_note"] and "**Not a scene**" in first["status"]
    scene = H.example_files(scenes=1)[0]
    first = next(state.image_stream(scene, "exact", view, session=sid))
    assert first["scene_box"] is False and "Not a scene" not in first["status"]
    cleared = next(state.image_stream(None, "exact", view, session=sid))
    assert cleared["scene_box"] is None                                # hidden with the results


def test_switch_button_is_the_model_menus_switch(b32, hub, monkeypatch):
    """The button's listener is the menu's switch to REAL_CLIP: the real CLIP loads (from the
    stand-in), the image is analysed with it, and the note goes."""
    monkeypatch.setattr(engine, "REGISTRY", engine.ModelRegistry())
    monkeypatch.setattr(scene_note, "REAL_CLIP", "ViT-B-32/openai")
    point_hub(monkeypatch, hub.url, b32[1])
    S.fast_golden(monkeypatch)
    sid = "realclip-switch"
    sessions.session(sid).model_key = "bundled"
    req = type("Req", (), {"session_hash": sid})()
    from app import events as E
    stream = E.on_real_clip("", "", str(S.EXAMPLE), "fast", 0.5, "golden", "attention",
                            "cat, dog", False, req, progress=None)
    outs = list(itertools.islice(stream, 2))            # the switch, then the image's first state
    stream.close()
    keys = E.MODEL_KEYS + E.IMAGE_KEYS
    states = [dict(zip(keys, o)) for o in outs]
    assert sessions.session(sid).model_key == "ViT-B-32/openai" and states[0]["model"] == "ViT-B-32/openai"
    assert gr.update(visible=False) in [st["scene_box"] for st in states]     # the note goes
    assert "ViT-B-32/openai" in states[1]["status"]


# -- the examples' golden rankings, in the background, on disk --------------------------------------
def test_examples_ranked_in_background_and_found_on_disk(bundled, monkeypatch):
    monkeypatch.setenv(example_cache.ENV, "1")
    w = example_cache.Warmer()
    w.follow("bundled", bundled, "fast", EXAMPLES[:2])
    assert w.join(300) and w.done == EXAMPLES[:2]
    monkeypatch.setattr(engine, "golden_order", lambda *a, **k: pytest.fail("searched again"))
    H.ANALYSES.clear()
    sid = "realclip-cache"
    sessions.session(sid).model_key = "bundled"
    a = H.analyze(EXAMPLES[1], "fast", session=sid)                 # from the disk: no search
    assert sorted(a.orders["golden"].tolist()) == list(range(196))
    x = a.x
    assert example_cache.lookup(bundled, x, "exact") is None       # keyed by mode,
    assert example_cache.lookup(tiny_vit(), x[:, :, :32, :32], "fast") is None   # model and image


def test_background_thread_stops_on_model_switch_and_pauses_for_requests(bundled, monkeypatch):
    monkeypatch.setenv(example_cache.ENV, "1")
    started = threading.Event()

    def slow(m, x, mode, progress=None, target=None):     # a search in chunks, as the engine's
        started.set()
        for i in range(200):
            progress(i / 200, "chunk")
            time.sleep(0.01)
        return engine.ranker_order(m, x, "norm")
    monkeypatch.setattr(engine, "golden_order", slow)
    w = example_cache.Warmer()
    with example_cache._busy_lock:                          # a request's own search is running
        example_cache._busy += 1
    try:
        w.follow("bundled", bundled, "exact", EXAMPLES[2:6])
        assert not started.wait(1.0)                        # the thread waits for it
    finally:
        with example_cache._busy_lock:
            example_cache._busy -= 1
            example_cache._busy_lock.notify_all()
    assert started.wait(30)
    old = w._thread
    w.follow("other", bundled, "exact", [])                # another model: the old thread stops
    old.join(10)
    assert not old.is_alive() and len(w.done) == 0
    w.stop()


# -- the same through gradio_client ---------------------------------------------------------------------
@pytest.fixture
def served(b32, hub, listed, monkeypatch):
    from gradio_client import Client
    _real_clip_setting(b32, hub, listed, monkeypatch)
    with S.running_app(golden_mode="fast") as url:
        yield Client(url, verbose=False, analytics_enabled=False)


def test_client_note_switch_list_and_choose(served):
    from gradio_client import handle_file
    c = served
    out = c.predict(handle_file(str(S.EXAMPLE)), "fast", 0.5, "golden", "attention", api_name="/analyze")
    assert "**Not a scene**" in out[5]
    assert [p["source"] for p in c.predict(api_name="/predictors")] == ["bundled"]
    msg, labels, value, mode = c.predict("ViT-B-32/openai", "", "", api_name="/load_model")
    assert value == "ViT-B-32/openai" and mode == "fast"
    listed = c.predict(api_name="/predictors")
    assert {p["model"] for p in listed} == {"ViT-B-32"} and len(listed) == 3
    assert "in use for ViT-B-32" in c.predict(f"hf-hub:{REPO}", api_name="/choose_predictor")
    with pytest.raises(Exception, match="not a predictor listed"):
        c.predict("hf-hub:USER/elsewhere", api_name="/choose_predictor")
    out = c.predict(handle_file(str(S.EXAMPLE)), "fast", 0.5, "golden", "predictor", api_name="/analyze")
    assert "Not a scene" not in out[5] and "listed hf-hub:" in out[5]


# -- one page load in a real browser ------------------------------------------------------------------
def test_browser_photo_shows_note_and_switch_button(tmp_path, monkeypatch):
    """Upload a photo on the bundled model: the note and the switch button appear."""
    from tests.app.test_app_browser import ARGS, _browser_or_skip
    chromium, sync_playwright = _browser_or_skip()
    S.fast_golden(monkeypatch)
    with S.running_app(golden_mode="fast") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1400})
            page.set_default_timeout(120_000)
            page.goto(url, wait_until="networkidle")
            assert not page.locator("#pr-real-clip").is_visible()
            page.set_input_files("#pr-image input[type=file]", str(S.EXAMPLE))
            page.wait_for_selector("#pr-real-clip", state="visible")
            note = page.inner_text("#pr-scene-note")
            assert "not like anything the bundled model knows" in note and "sandal" in note
            assert scene_note.REAL_CLIP in page.inner_text("#pr-real-clip")
        finally:
            browser.close()
