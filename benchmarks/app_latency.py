"""App timings: startup, first full analysis, slider drag frame and release, golden per image.

    python benchmarks/app_latency.py [--image assets/examples/cat-chelsea.jpg] [--skip-startup]
    python benchmarks/app_latency.py --model ViT-B-16 --skip-startup     # random init, no download

Prints one JSON object. A drag frame's "server time" = the ``threshold`` handler (re-threshold of
cached orders + drawing both masks + agreement) plus writing both as JPEG files and gradio's
postprocessing of them (file data + copy into its cache), 60 random ratios after a warm-up. A
release adds top-5 of the full and both pruned models, GFLOPs and the latency measurement.
With ``--model ARCH`` (an open_clip architecture in random init: the same cost as its real
weights) also one golden search per mode on the image, and an example whose golden order the
background thread cached on disk. Timing lives here, not in tests (docs/design.md); on a shared
2-core machine, read medians.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("PATCHRANK_APP_TMP", tempfile.mkdtemp(prefix="patchrank-app-bench-"))


def startup_seconds(timeout: float = 300.0) -> float:
    """Seconds from `python app.py` to the first HTTP 200 on its port; the server is then stopped."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1")
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < timeout:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - t0
            except OSError:
                time.sleep(0.25)
        raise TimeoutError("app.py did not answer")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def use_model(name: str, sid: str):
    """Make ``name`` the session's model: the bundled one, or an open_clip architecture with
    random-init weights (``pr.load_model(name)``: no download; same cost as the real weights)."""
    import patchrank as pr
    from app import engine, sessions
    if name == "bundled":
        m = engine.REGISTRY.bundled()
    else:
        m = pr.load_model(name)
        engine.REGISTRY._others.put(name, m)
    sessions.session(sid).model_key = name
    return m


def golden_per_image(m, image: str) -> dict:
    """Seconds of one golden search (the app's settings) per mode, on one image."""
    from app import engine, inputs
    x = m.preprocess(inputs.load_image(image)[0]).unsqueeze(0)
    out = {}
    for mode in ("fast", "exact"):
        t = time.perf_counter()
        engine.golden_order(m, x, mode)
        out[f"golden_{mode}_s"] = round(time.perf_counter() - t, 2)
    return out


def first_analysis(image: str, mode: str, sid: str, left: str, right: str, labels: str) -> dict:
    """The stages of a first analysis, as the page runs them, in seconds."""
    from app import curve as C, handlers as H
    H.ANALYSES.clear()
    t0 = time.perf_counter()
    H.analyze_views(image, mode, 0.5, left, right, session=sid, golden=False)
    t1 = time.perf_counter()
    H.golden_views(0.5, left, right, session=sid)
    t2 = time.perf_counter()
    H.prune(0.5, left, right, labels, session=sid)
    t3 = time.perf_counter()
    C.curve(labels, session=sid)
    t4 = time.perf_counter()
    return {"golden_mode": mode, "first_overlays_s": round(t1 - t0, 3), "golden_s": round(t2 - t1, 3),
            "prune_s": round(t3 - t2, 3), "curve_s": round(t4 - t3, 3), "total_s": round(t4 - t0, 3)}


def slider_release(sid: str, left: str, right: str, labels: str, n: int = 8) -> dict:
    """Server time of a slider release: the second part of ``on_ratio`` (top-5 of the full and
    both pruned models, GFLOPs, latency timing), for ``n`` ratios after a warm-up."""
    from app import state as S
    rng, times = random.Random(1), []
    for i in range(n + 1):
        r = round(rng.uniform(0.1, 0.9), 2)
        S.draw(sid, heat=False, view=S.View(r, left, right, labels, False), top5=False)
        t = time.perf_counter()
        S.draw(sid, panels=False)
        if i:
            times.append(time.perf_counter() - t)
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3), "n": n}


def cached_example(m, image: str, mode: str, sid: str, left: str, right: str) -> dict:
    """An example whose golden order the background thread put on disk: the analysis finds it
    (seconds to first overlays + golden, golden from the disk)."""
    from app import example_cache, handlers as H, inputs
    x = m.preprocess(inputs.load_image(image)[0]).unsqueeze(0)
    if example_cache.lookup(m, x, mode) is None:
        from app import engine
        example_cache.save(m, x, mode, engine.golden_order(m, x, mode))
    H.ANALYSES.clear()
    t = time.perf_counter()
    H.analyze_views(image, mode, 0.5, left, right, session=sid)
    return {"overlays_and_golden_s": round(time.perf_counter() - t, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=str(REPO / "assets" / "examples" / "cat-chelsea.jpg"))
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--golden-mode", default=None, choices=["exact", "fast"],
                    help="default: the app's choice for the model (fast for large models on CPU)")
    ap.add_argument("--model", default="bundled",
                    help="bundled, or an open_clip architecture in random init, e.g. ViT-B-16")
    a = ap.parse_args()
    out: dict = {"model": a.model}
    if not a.skip_startup:
        out["startup_s"] = round(startup_seconds(), 2)

    import torch
    torch.set_num_threads(2)
    from app import engine, handlers as H
    sid, left, right = "bench", "golden", "attention"
    m = use_model(a.model, sid)
    labels = ", ".join(engine.labels_for(m))
    mode = a.golden_mode or H.default_golden_mode(sid)
    if a.model != "bundled":
        out["golden_per_image"] = golden_per_image(m, a.image)
    out["first_analysis"] = first_analysis(a.image, mode, sid, left, right, labels)
    out["slider_release"] = slider_release(sid, left, right, labels)
    out["slider_rethreshold_ms"] = rethreshold(sid, left, right)
    out["example_from_disk_cache"] = cached_example(m, a.image, mode, sid, left, right)
    out["load_average"] = os.getloadavg()
    print(json.dumps(out, indent=1))


def rethreshold(sid: str, left: str, right: str) -> dict:
    """A drag frame's server time: re-threshold + both masks + agreement, then the JPEG files
    and gradio's postprocessing of them; 60 random ratios after a warm-up, in milliseconds."""
    import gradio as gr
    from gradio import processing_utils
    from app import handlers as H
    from app.outputs import FILES
    post = gr.Image(type="pil", format="jpeg")
    cache = tempfile.mkdtemp(prefix="bench-cache-", dir=os.environ["PATCHRANK_APP_TMP"])
    rng = random.Random(0)
    handler, total = [], []
    for i in range(70):
        r = round(rng.uniform(0.05, 1.0), 2)
        t = time.perf_counter()
        masks = H.threshold(r, left, right, session=sid)
        th = time.perf_counter()
        mask_l, mask_r, _ = FILES.all(masks)          # what the listener returns: JPEG files
        for f in (mask_l, mask_r):                        # gradio: file data + copy into its cache
            processing_utils.save_file_to_cache(post.postprocess(f).path, cache)
        te = time.perf_counter()
        if i >= 10:
            handler.append(1e3 * (th - t))
            total.append(1e3 * (te - t))
    return {"handler_median": round(statistics.median(handler), 2), "handler_min": round(min(handler), 2),
            "with_postprocess_median": round(statistics.median(total), 2),
            "with_postprocess_p95": round(pct(total, 0.95), 2), "n": len(total)}


if __name__ == "__main__":
    main()
