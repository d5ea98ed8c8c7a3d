"""A real browser (Debian chromium driven by Playwright) uses the app as a person would.

One app server and one page (1400x1000) for the whole module (tests run in file order and each
sets up the image it needs); the README's screenshot is saved by the first test. What is checked:
- upload, drag and release: masks, agreement, top-5 and costs end at the ratio shown, and the
  image, both masks, the slider and the three top-5s are inside one 1400x1000 screen (bounding
  boxes; that screen is docs/screenshot.png);
- arrow keys, the number box and the reset button: the same, every panel labelled with its ratio;
- one request per user action (upload, example click, keys, number box, reset, ranker menu,
  learnable-tokens box, typed labels, golden mode), counted on the queue's join requests;
- a non-image upload: the app's own one-line message once, no server path, no framework
  wording, and every result of the previous image cleared;
- a refused upload (1x1 PNG): the slider no longer draws anything from the previous image;
- a failed model load: the reason and the local-checkpoint route in one toast, the typed
  fields kept;
- the new controls, one request each: overlay opacity (arrow key) redraws the rankings, the
  prune layer re-analyses at that block, a class-conditioned golden ranking is drawn as such,
  a click on a patch lists its rank under every ranker, the export gives a zip named after the
  image and the ratio;
- at 800 px: an example click brings the panels into view, and the page is one column.
Timings (upload to first heatmap, drag frame, release) are printed (``pytest -s``).

Skips where chromium or Playwright is missing, except in CI (CI=true), where a skip is a failure.
"""
import json
import os
import shutil
import time
from pathlib import Path

from tests.app import app_support as S  # noqa: F401  (sets the app temp folder before gradio loads)
import pytest

pytestmark = pytest.mark.browser

SCREENSHOT = S.REPO / "docs" / "screenshot.png"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]
TIMEOUT_MS = 240_000
SETTLE_MS = 1500                  # long enough for a duplicate request to show up


def _browser_or_skip():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium and sync_playwright:
        return chromium, sync_playwright
    why = "chromium is not installed" if not chromium else "playwright is not installed"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}, but CI=true: the browser test must run in CI (.ci/run installs it)")
    pytest.skip(why)


class Joins:
    """The fn_index of every request that starts an event on the server (queue or not)."""

    def __init__(self):
        self.fns: list[int] = []

    def __call__(self, request) -> None:
        if request.method == "POST" and ("/queue/join" in request.url or "/run/predict" in request.url):
            self.fns.append(json.loads(request.post_data or "{}").get("fn_index"))

    def take(self) -> list[int]:
        out, self.fns = self.fns, []
        return out


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    chromium, sync_playwright = _browser_or_skip()
    odd = S.odd_images(tmp_path_factory.mktemp("odd"))
    with S.running_app(golden_mode="fast") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(TIMEOUT_MS)
        pg.joins = Joins()
        pg.odd = odd
        pg.on("request", pg.joins)
        pg.goto(url, wait_until="networkidle")
        pg.wait_for_selector("#pr-image input[type=file]", state="attached")
        try:
            yield pg
        finally:
            browser.close()


@pytest.fixture(autouse=True)
def _picture_on_failure(request, page):
    """A full-page picture of the page when a test of this module fails (for CI logs)."""
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        shot = Path(os.environ.get("PATCHRANK_APP_TMP", "/tmp")) / f"browser-{request.node.name}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"page at failure saved to {shot}; status: {_text(page, 'pr-status')!r}")


def _text(page, elem_id: str) -> str:
    return page.inner_text(f"#{elem_id}")


def _src(page, elem_id: str) -> str | None:
    return page.evaluate(f"() => {{ const i = document.querySelector('#{elem_id} img'); "
                         "return i ? (i.currentSrc || i.src) : null; }")


def _wait_text(page, elem_id: str, *parts: str) -> None:
    page.wait_for_function("([id, parts]) => { const e = document.getElementById(id); "
                           "return e && parts.every(p => e.innerText.includes(p)); }", arg=[elem_id, list(parts)])


def _analysed(page, path: Path) -> float:
    """Upload ``path`` and wait until every stage is drawn; returns seconds to the first panel
    (the keep masks: the tab shown first; the rankings are drawn in the same response)."""
    old = _src(page, "pr-mask-left")
    page.joins.take()
    t = time.perf_counter()
    page.set_input_files("#pr-image input[type=file]", str(path))
    page.wait_for_function("(old) => { const i = document.querySelector('#pr-mask-left img'); "
                           "return i && (i.currentSrc || i.src) !== old; }", arg=old)
    first = time.perf_counter() - t
    _wait_text(page, "pr-status", "Analysed", path.stem)
    _wait_text(page, "pr-curve-md", "Full model")
    page.wait_for_function("() => !document.getElementById('pr-status').innerText.includes('in progress')")
    return first


def _all_at(page, ratio: str, kept: int) -> None:
    """Masks, agreement, top-5 and costs all say they are for ``ratio`` (``kept`` of 196)."""
    _wait_text(page, "pr-agreement", f"Keep ratio {ratio}", f"{kept} of 196")
    _wait_text(page, "pr-cost", f"At keep ratio {ratio}", f"Kept tokens {kept} of 196")
    _wait_text(page, "pr-top-left", f"keep {ratio}")
    _wait_text(page, "pr-top-right", f"keep {ratio}")
    _wait_text(page, "pr-mask-left", f"keep {ratio} ({kept}/196)")
    _wait_text(page, "pr-mask-right", f"keep {ratio} ({kept}/196)")


def _one_request(page, why: str) -> None:
    page.wait_for_timeout(SETTLE_MS)
    fns = page.joins.take()
    assert len(fns) == 1, f"{why}: {len(fns)} requests (fn_index {fns}), expected one"


def _toasts(page) -> list[str]:
    return [t.inner_text() for t in page.locator(".toast-body").all()]


def _close_toasts(page) -> None:
    for b in page.locator(".toast-body .toast-close").all():
        b.click()
    page.wait_for_function("() => !document.querySelector('.toast-body')")


@pytest.mark.timeout(600)
def test_upload_drag_release_and_screenshot(page):
    first = _analysed(page, S.EXAMPLE)
    _all_at(page, "0.50", 98)
    slider = page.locator("#pr-ratio input[type=range]")
    box = slider.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.5, y)
    page.mouse.down()
    frames = []
    for f in (0.45, 0.4, 0.33):
        old = _src(page, "pr-mask-left")
        t = time.perf_counter()
        page.mouse.move(box["x"] + box["width"] * f, y, steps=2)
        page.wait_for_function("(old) => { const i = document.querySelector('#pr-mask-left img'); "
                               "return i && (i.currentSrc || i.src) !== old; }", arg=old)
        frames.append(time.perf_counter() - t)
    t = time.perf_counter()
    page.mouse.move(box["x"] + box["width"] * 0.25, y, steps=2)
    page.mouse.up()
    shown = page.input_value("#pr-ratio input[type=number]")
    kept = round(float(shown) * 196)
    _all_at(page, f"{float(shown):.2f}", kept)
    release = time.perf_counter() - t
    print(f"\ntimings: upload -> first heatmap {first:.2f} s; drag frame "
          f"{', '.join(f'{x:.2f}' for x in frames)} s; release -> all panels {release:.2f} s")
    page.wait_for_timeout(1000)                   # let the last redraw settle for the picture
    page.evaluate("() => window.scrollTo(0, 0)")
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOT))         # one 1400x1000 screen: cause and effect
    assert SCREENSHOT.stat().st_size > 50_000
    for elem_id in ("pr-image", "pr-ratio", "pr-mask-left", "pr-mask-right", "pr-top-full",
                    "pr-top-left", "pr-top-right", "pr-minkeep"):
        b = page.locator(f"#{elem_id}").bounding_box()
        assert b and b["x"] >= 0 and b["y"] >= 0 and b["x"] + b["width"] <= 1400 \
            and b["y"] + b["height"] <= 1000, (elem_id, b)


@pytest.mark.timeout(300)
def test_keys_number_box_and_reset_redraw_everything_once(page):
    _analysed(page, page.odd["cmyk"])
    slider = page.locator("#pr-ratio input[type=range]")
    number = page.locator("#pr-ratio input[type=number]")
    number.fill("0.5")
    _all_at(page, "0.50", 98)
    page.joins.take()
    slider.focus()
    page.keyboard.press("ArrowLeft")
    _all_at(page, "0.49", 96)
    _one_request(page, "arrow key")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    _all_at(page, "0.51", 100)
    page.wait_for_timeout(SETTLE_MS)
    assert len(page.joins.take()) <= 2                 # one per key press, never more
    number.fill("0.3")
    _all_at(page, "0.30", 59)
    _one_request(page, "number box")
    number.press("Tab")                                # leaving the box changes nothing
    page.wait_for_timeout(SETTLE_MS)
    assert page.joins.take() == []
    page.click("#pr-reset")
    _all_at(page, "0.50", 98)
    _one_request(page, "reset button")


@pytest.mark.timeout(300)
def test_one_request_per_menu_choice_upload_and_example(page):
    _analysed(page, page.odd["exif_rotated"])
    page.joins.take()
    page.click("#pr-right input")
    page.click("ul[role=listbox] li:has-text('EViT')")
    _wait_text(page, "pr-top-right", "EViT")
    _wait_text(page, "pr-mask-right", "EViT", "keep 0.50")          # EViT's kept set is drawn
    page.get_by_role("tab", name="Rankings (heatmaps)").click()            # a tab: no request
    _wait_text(page, "pr-heat-right", "EViT")
    page.get_by_role("tab", name="Kept / pruned at this ratio").click()
    _one_request(page, "ranker menu")
    page.click("#pr-tokens input")
    _wait_text(page, "pr-cost", "earnable tokens")
    _one_request(page, "tokens checkbox")
    page.fill("#pr-labels textarea", "sandal, sneaker, bag")
    page.click("#pr-status")                                       # leave the box
    page.wait_for_function("() => !document.getElementById('pr-top-full').innerText.includes('ankle')")
    _wait_text(page, "pr-curve-md", "Full model")
    _one_request(page, "labels typed")
    _open_settings(page)
    page.click("#pr-golden-mode label:has-text('every patch')")
    _wait_text(page, "pr-curve-md", "Full model")
    _one_request(page, "golden mode")
    _analysed(page, page.odd["rgba"])
    _one_request(page, "upload")
    page.locator("[data-testid=examples] button, .gallery-item").first.click()
    _wait_text(page, "pr-status", "scene-01")
    _wait_text(page, "pr-curve-md", "Full model")
    page.wait_for_timeout(SETTLE_MS)
    queued = page.joins.take()
    # the example's value is set by one un-queued call, then one analysis: two events, once each
    assert len(queued) == len(set(queued)) <= 2, queued


@pytest.mark.timeout(300)
def test_non_image_upload_says_so_once_and_clears(page):
    _analysed(page, page.odd["palette"])
    page.joins.take()
    page.set_input_files("#pr-image input[type=file]", str(page.odd["not_image"]))
    page.wait_for_selector(".toast-body")
    _wait_text(page, "pr-status", "Image refused")
    _one_request(page, "bad upload")
    toasts = _toasts(page)
    assert len(toasts) == 1, toasts
    assert "not an image this app can read" in toasts[0]
    for bad in ("Could not preprocess", "/tmp", "gradio", "Traceback", "Error"):
        assert bad not in toasts[0], (bad, toasts[0])
    assert "Error" not in page.inner_text("#pr-status") + page.inner_text("#pr-agreement")
    assert "%" not in _text(page, "pr-top-full") + _text(page, "pr-top-left")   # top-5 cleared
    assert _text(page, "pr-cost").strip() == "" and _text(page, "pr-agreement").strip() == ""
    assert page.locator("#pr-curve .js-plotly-plot").count() == 0
    assert _src(page, "pr-image") is None                                 # the refused file went
    _close_toasts(page)


@pytest.mark.timeout(300)
def test_refused_upload_leaves_no_live_analysis(page):
    _analysed(page, page.odd["gray16"])
    page.set_input_files("#pr-image input[type=file]", str(page.odd["tiny_1x1"]))
    page.wait_for_selector(".toast-body")
    _wait_text(page, "pr-status", "Image refused", "1x1")
    page.wait_for_timeout(500)
    masks = (_src(page, "pr-mask-left"), _src(page, "pr-mask-right"))
    page.joins.take()
    page.locator("#pr-ratio input[type=range]").focus()
    page.keyboard.press("ArrowLeft")
    page.wait_for_timeout(SETTLE_MS)
    assert (_src(page, "pr-mask-left"), _src(page, "pr-mask-right")) == masks
    assert _text(page, "pr-agreement").strip() == "" and _text(page, "pr-cost").strip() == ""
    assert len(page.joins.take()) == 1
    _close_toasts(page)


@pytest.mark.timeout(300)
def test_failed_model_load_says_why_and_keeps_the_fields(page):
    page.click("text=Model and predictor")
    page.click("#pr-model input")
    page.click("ul[role=listbox] li:has-text('ViT-B-32')")
    page.wait_for_selector(".toast-body")
    page.wait_for_timeout(SETTLE_MS)
    toasts = _toasts(page)
    assert len(toasts) == 1 and "local checkpoint" in toasts[0] and "load_model(" not in toasts[0]
    _close_toasts(page)
    page.click("#pr-model input")
    page.click("ul[role=listbox] li:has-text('local checkpoint')")
    page.fill("#pr-arch textarea, #pr-arch input", "ViT-B-16")
    page.fill("#pr-ckpt textarea, #pr-ckpt input", "/no/such/ckpt.safetensors")
    page.joins.take()
    page.click("#pr-load")
    page.wait_for_selector(".toast-body")
    _one_request(page, "load button")
    toasts = _toasts(page)
    assert len(toasts) == 1 and "not found" in toasts[0], toasts
    assert page.input_value("#pr-arch textarea, #pr-arch input") == "ViT-B-16"
    assert page.input_value("#pr-ckpt textarea, #pr-ckpt input") == "/no/such/ckpt.safetensors"
    assert "local" in page.input_value("#pr-model input")
    _close_toasts(page)


def _open_settings(page) -> None:
    if not page.locator("#pr-layer").is_visible():
        page.click("text=Golden ranking, prune layer, overlay")
        page.wait_for_selector("#pr-layer", state="visible")


@pytest.mark.timeout(400)
def test_new_controls_one_request_each(page):
    _analysed(page, S.EXAMPLE)
    _open_settings(page)
    page.get_by_role("tab", name="Rankings (heatmaps)").click()
    old = _src(page, "pr-heat-left")
    page.joins.take()
    page.locator("#pr-opacity input[type=range]").focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function("(old) => { const i = document.querySelector('#pr-heat-left img'); "
                           "return i && (i.currentSrc || i.src) !== old; }", arg=old)
    _one_request(page, "opacity key")
    page.locator("#pr-heat-left img").click(position={"x": 40, "y": 40})   # a patch near the top left
    _wait_text(page, "pr-patch", "Patch row", "golden", "of 196")
    _one_request(page, "patch click")
    page.get_by_role("tab", name="Kept / pruned at this ratio").click()
    page.click("#pr-layer label:has-text('2')")
    _wait_text(page, "pr-agreement", "from block 2 on")
    _wait_text(page, "pr-curve-md", "Full model")
    _one_request(page, "prune layer")
    assert "block 1" in _text(page, "pr-status") or "block 2" in _text(page, "pr-status")
    page.click("#pr-golden-target input")
    page.click("ul[role=listbox] li:has-text(\"the class 'sandal'\")")
    _wait_text(page, "pr-status", "golden ranking for 'sandal'")
    _wait_text(page, "pr-curve-md", "Full model")
    _one_request(page, "golden target")
    page.click("#pr-golden-target input")
    page.click("ul[role=listbox] li:has-text('label-free')")
    _wait_text(page, "pr-curve-md", "Full model")
    page.click("#pr-layer label:has-text('1')")
    _wait_text(page, "pr-agreement", "from block 1 on")
    _wait_text(page, "pr-curve-md", "Full model")
    page.joins.take()
    page.click("#pr-export")
    page.wait_for_function("() => document.getElementById('pr-files').innerText.includes('.zip')")
    shown = float(page.input_value("#pr-ratio input[type=number]"))
    assert f"cat-chelsea_keep{shown:.2f}\n.zip" in _text(page, "pr-files")
    _one_request(page, "export")


@pytest.mark.timeout(300)
def test_narrow_page_example_click_brings_results_into_view(page):
    page.set_viewport_size({"width": 800, "height": 1000})
    try:
        page.evaluate("() => window.scrollTo(0, 0)")
        image, panels = (page.locator(f"#{i}").bounding_box() for i in ("pr-image", "pr-panels"))
        assert panels["y"] > image["y"] + image["height"]          # one column: panels below
        page.locator("[data-testid=examples] button, .gallery-item").nth(3).click()
        _wait_text(page, "pr-status", "scene-04")
        page.wait_for_timeout(2000)          # the re-scroll after the photo's note went away
        top = page.locator("#pr-panels").bounding_box()["y"]
        assert -2 <= top < 400, top                     # scrolled to the results (sub-pixel)
        assert page.locator("#pr-mask-left").bounding_box()["width"] > 300   # captions readable
        page.screenshot(path=str(Path(os.environ.get("PATCHRANK_APP_TMP", "/tmp")) / "narrow.png"))
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})
