"""Throughput of ``patchrank embed`` vs stock open_clip, and of the exported ONNX encoder vs PyTorch.

    python benchmarks/embed_speed.py [--model ViT-B-16] [--images 48] [--repeats 3] [--json out.json]

Part 1, a folder of ``--images`` JPEG scenes embedded end to end (decode in one worker process,
preprocess, encode, write): stock open_clip (the same DataLoader feeding ``clip.encode_image``)
and ``embed_images`` at keep 1.0 / 0.6 / 0.4 with a predictor (random init for an open_clip name:
its cost is what is measured). Every configuration runs once per round, rounds interleaved; the
table gives images/s from the median round and the speed-up over stock open_clip in the same run.

Part 2, the image encoder alone at batch 1 and 8: PyTorch eager (``prune(...).encode_image``) vs
onnxruntime (CPU provider, as many intra-op threads as torch uses) on the graph ``export_onnx``
writes, at keep 1.0 and 0.6 with the predictor inside the graph.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import patchrank as pr  # noqa: E402
from patchrank.embed import embed_images, _Files, list_images  # noqa: E402
from patchrank.export import export_onnx  # noqa: E402
from patchrank.predictor import Predictor, load_predictor  # noqa: E402
from patchrank.timing import interleaved  # noqa: E402

RATIOS = (1.0, 0.6, 0.4)


def write_folder(n: int, dest: Path) -> Path:
    ev = pr.bundled_eval(limit=n)
    for i, im in enumerate(ev.images):
        im.resize((224, 224)).save(dest / f"{i:04d}.jpg", quality=90)
    return dest


def stock_open_clip(m, folder: Path, batch: int) -> np.ndarray:
    """What a user's own loop does: the same files, DataLoader and batch, open_clip's encoder."""
    ds = _Files(list_images(folder), m.preprocess, (3, *m.image_size))
    out = []
    with torch.inference_mode():
        for _, x, _ in torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=1):
            out.append(m.clip.encode_image(x, normalize=True).numpy())
    return np.concatenate(out)


def bench_embed(m, ranker, folder: Path, work: Path, batch: int, repeats: int) -> list[dict]:
    n = len(list_images(folder))
    fns = {"open_clip": lambda: stock_open_clip(m, folder, batch)}
    for r in RATIOS:
        fns[f"embed keep {r}"] = lambda r=r: embed_images(
            m, folder, work / f"e{r}.npy", keep_ratio=r, ranker=ranker, batch=batch, workers=1,
            fresh=True, compare=False, progress=False)
    t = interleaved(fns, repeats=repeats, warmup=1)
    base = t["open_clip"]["median_ms"]
    return [{"config": k, "images": n, "batch": batch, "median_s": round(v["median_ms"] / 1e3, 3),
             "images_per_s": round(n / v["median_ms"] * 1e3, 2),
             "speedup_vs_open_clip": round(base / v["median_ms"], 3)} for k, v in t.items()]


def bench_onnx(m, ranker, work: Path, repeats: int) -> list[dict]:
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    rows = []
    for r in (1.0, 0.6):
        fast = pr.prune(m, r, ranker)
        path = work / f"enc{r}.onnx"
        export_onnx(fast, path)
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        for b in (1, 8):
            x = torch.randn(b, 3, *m.image_size, generator=torch.Generator().manual_seed(b))
            xn = x.numpy()
            with torch.inference_mode():
                t = interleaved({"pytorch": lambda: fast.encode_image(x),
                                 "onnxruntime": lambda: sess.run(None, {"image": xn})}, repeats=repeats)
            rows.append({"keep": r, "batch": b, "pytorch_ms": round(t["pytorch"]["median_ms"], 2),
                         "onnxruntime_ms": round(t["onnxruntime"]["median_ms"], 2),
                         "pytorch_min_ms": round(t["pytorch"]["min_ms"], 2),
                         "onnxruntime_min_ms": round(t["onnxruntime"]["min_ms"], 2),
                         "onnxruntime_speedup": round(t["pytorch"]["median_ms"] / t["onnxruntime"]["median_ms"], 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16", help="'bundled' or an open_clip name (random init)")
    ap.add_argument("--images", type=int, default=48)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--onnx-repeats", type=int, default=7)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    m = pr.load_model(a.model)
    ranker = load_predictor(model=m) if a.model == "bundled" else Predictor.for_model(m)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_folder(a.images, Path(tmp))
        work = Path(tmp) / "work"
        work.mkdir()
        embed_rows = bench_embed(m, ranker, folder, work, a.batch, a.repeats)
        onnx_rows = bench_onnx(m, ranker, work, a.onnx_repeats)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    res = {"model": m.model_id, "threads": torch.get_num_threads(), "cpu": cpu,
           "command": " ".join(["python", *sys.argv]), "embed": embed_rows, "onnx": onnx_rows}
    print("| config | images/s | speed-up vs open_clip |\n|---|---|---|")
    for r in embed_rows:
        print(f"| {r['config']} | {r['images_per_s']} | {r['speedup_vs_open_clip']:.2f}x |")
    print("\n| keep | batch | PyTorch ms | onnxruntime ms | onnxruntime speed-up |\n|---|---|---|---|---|")
    for r in onnx_rows:
        print(f"| {r['keep']} | {r['batch']} | {r['pytorch_ms']} | {r['onnxruntime_ms']} | {r['onnxruntime_speedup']:.2f}x |")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
