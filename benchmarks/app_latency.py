"""App timings on the bundled model: startup, first full analysis, slider re-threshold.

    python benchmarks/app_latency.py [--image assets/examples/cat-chelsea.jpg] [--skip-startup]

Prints one JSON object. "Server time" of the slider = the ``threshold`` handler (re-threshold of
cached orders + drawing both masks + agreement) plus writing both as JPEG files and gradio's
postprocessing of them (file data + copy into its cache), measured in-process, 60 random ratios, after a warm-up. Timing lives
here, not in tests (docs/design.md); on a shared 2-core machine, read medians.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=str(REPO / "assets" / "examples" / "cat-chelsea.jpg"))
    ap.add_argument("--skip-startup", action="store_true")
    ap.add_argument("--golden-mode", default="exact", choices=["exact", "fast"])
    a = ap.parse_args()
    out: dict = {}
    if not a.skip_startup:
        out["startup_s"] = round(startup_seconds(), 2)

    import torch
    torch.set_num_threads(2)
    import gradio as gr
    from app import curve as C, engine, handlers as H
    engine.REGISTRY.bundled()
    sid, left, right, labels = "bench", "golden", "attention", "top, sandal, bag, sneaker, ankle boot"
    H.ANALYSES.clear()
    t0 = time.perf_counter()
    H.analyze_views(a.image, a.golden_mode, 0.5, left, right, session=sid, golden=False)
    t1 = time.perf_counter()
    H.golden_views(0.5, left, right, session=sid)
    t2 = time.perf_counter()
    H.prune(0.5, left, right, labels, session=sid)
    t3 = time.perf_counter()
    C.curve(labels, session=sid)
    t4 = time.perf_counter()
    out["first_analysis"] = {"golden_mode": a.golden_mode, "first_overlays_s": round(t1 - t0, 3),
                             "golden_s": round(t2 - t1, 3), "prune_s": round(t3 - t2, 3),
                             "curve_s": round(t4 - t3, 3), "total_s": round(t4 - t0, 3)}

    from gradio import processing_utils
    from app import ui
    post = gr.Image(type="pil", format="jpeg")
    cache = tempfile.mkdtemp(prefix="bench-cache-", dir=os.environ["PATCHRANK_APP_TMP"])
    rng = random.Random(0)
    handler, total = [], []
    for i in range(70):
        r = round(rng.uniform(0.05, 1.0), 2)
        t = time.perf_counter()
        masks = H.threshold(r, left, right, session=sid)
        th = time.perf_counter()
        mask_l, mask_r, _ = ui._files.all(masks)         # what the listener returns: JPEG files
        for f in (mask_l, mask_r):                        # gradio: file data + copy into its cache
            processing_utils.save_file_to_cache(post.postprocess(f).path, cache)
        te = time.perf_counter()
        if i >= 10:
            handler.append(1e3 * (th - t))
            total.append(1e3 * (te - t))
    out["slider_rethreshold_ms"] = {
        "handler_median": round(statistics.median(handler), 2), "handler_min": round(min(handler), 2),
        "with_postprocess_median": round(statistics.median(total), 2),
        "with_postprocess_p95": round(pct(total, 0.95), 2), "n": len(total)}
    out["load_average"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
