"""A real browser (Debian chromium driven by Playwright) uploads an image, moves the keep-ratio
slider and checks that the keep-mask overlays changed; saves the README's screenshot.

Skips where chromium or Playwright is missing, except in CI (CI=true), where a skip is a failure.
"""
import os
import shutil
from pathlib import Path

from tests import app_support as S  # noqa: F401  (sets the app temp folder before gradio loads)
import pytest

SCREENSHOT = S.REPO / "docs" / "screenshot.png"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage"]
TIMEOUT_MS = 240_000


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


def _src(page, elem_id: str) -> str:
    return page.eval_on_selector(f"#{elem_id} img", "e => e.currentSrc || e.src")


@pytest.mark.timeout(600)
def test_upload_slide_screenshot():
    chromium, sync_playwright = _browser_or_skip()
    with S.running_app(golden_mode="fast") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1500})
        try:
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url, wait_until="networkidle")
            page.wait_for_selector("#pr-image input[type=file]", state="attached")
            page.set_input_files("#pr-image input[type=file]", str(S.EXAMPLE))
            # stage 1 draws the masks; the golden stage, pruned forward and curve follow
            page.wait_for_function("() => document.querySelector('#pr-status')?.innerText.includes('Analysed')")
            page.wait_for_function("() => document.querySelector('#pr-cost')?.innerText.includes('Latency')")
            page.wait_for_selector(".js-plotly-plot")
            before = (_src(page, "pr-mask-left"), _src(page, "pr-mask-right"))
            agree_before = page.inner_text("#pr-agreement")
            assert "98 of 196" in agree_before

            slider = page.locator("#pr-ratio input[type=range]")
            box = slider.bounding_box()
            y = box["y"] + box["height"] / 2
            page.mouse.move(box["x"] + box["width"] * 0.5, y)
            page.mouse.down()
            for f in (0.45, 0.4, 0.33, 0.25):
                page.mouse.move(box["x"] + box["width"] * f, y, steps=3)
            page.mouse.up()
            page.wait_for_function(
                "(old) => { const a = document.querySelector('#pr-agreement'); "
                "return a && a.innerText !== old && !a.innerText.includes('98 of 196'); }",
                arg=agree_before)
            page.wait_for_function(
                "(old) => { const i = document.querySelector('#pr-mask-left img'); "
                "return i && (i.currentSrc || i.src) !== old; }", arg=before[0])
            # both keep masks redrawn (the right side is the predictor, or CLS attention when the
            # model has no predictor yet: both have a patch order)
            page.wait_for_function(
                "(old) => { const i = document.querySelector('#pr-mask-right img'); "
                "return i && (i.currentSrc || i.src) !== old; }", arg=before[1])
            assert _src(page, "pr-mask-left") != before[0] and _src(page, "pr-mask-right") != before[1]
            assert "98 of 196" not in page.inner_text("#pr-agreement")
            page.wait_for_function("() => document.querySelector('#pr-cost')?.innerText.includes('Latency')")
            page.wait_for_timeout(1500)               # let the last redraw settle for the picture
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT))         # the first 1500 px: image, rankings, masks
            assert SCREENSHOT.stat().st_size > 50_000
        except Exception:
            shot = Path(os.environ.get("PATCHRANK_APP_TMP", "/tmp")) / "browser-failure.png"
            page.screenshot(path=str(shot), full_page=True)
            print(f"page at failure saved to {shot}; status: {page.inner_text('#pr-status')!r}")
            raise
        finally:
            browser.close()
