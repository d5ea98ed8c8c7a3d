"""``patchrank embed``: open_clip's embeddings at keep 1.0, bad files named, a killed run resumed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import patchrank as pr
from patchrank.cli import main
from patchrank.data.images import load_image
from patchrank.embed import embed_images, list_images
from patchrank.errors import PatchRankError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, eval_split):
    """30 evaluation scenes as PNG/JPEG files, some in a subfolder."""
    d = tmp_path_factory.mktemp("imgs")
    (d / "sub").mkdir()
    for i, im in enumerate(eval_split.images[:30]):
        im.save(d / ("sub" if i % 4 == 0 else ".") / f"scene{i:02d}.{'jpg' if i % 3 else 'png'}")
    return d


def _reference(m, paths, batch):
    """open_clip's own normalised encode_image on the same batches, in file order."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(paths), batch):
            x = torch.stack([m.preprocess(load_image(p)) for p in paths[i:i + batch]])
            out.append(m.clip.encode_image(x, normalize=True))
    return torch.cat(out).numpy()


def test_keep_one_equals_open_clip(bundled, folder, tmp_path):
    res = embed_images(bundled, folder, tmp_path / "e.npy", keep_ratio=1.0, batch=8, workers=2,
                       progress=False)
    paths = list_images(folder)
    got = np.load(tmp_path / "e.npy")
    assert res["rows"] == len(paths) == 30 and got.dtype == np.float32
    assert np.array_equal(got, _reference(bundled, paths, 8))
    index = json.loads((tmp_path / "e.json").read_text())
    assert index["paths"] == [str(p) for p in paths] and index["skipped_files"] == []
    assert not list(tmp_path.glob("*.partial.npy")) and not list(tmp_path.glob("*.progress.json"))


def test_pruned_rows_match_the_pruned_forward(bundled, folder, tmp_path):
    pred = pr.load_predictor(model=bundled)
    res = embed_images(bundled, folder, tmp_path / "e.npy", keep_ratio=0.5, ranker="predictor",
                       batch=8, workers=0, out_dtype="float16", normalize=False, progress=False)
    paths = list_images(folder)
    x = torch.stack([bundled.preprocess(load_image(p)) for p in paths[:8]])
    with torch.inference_mode():          # as embed_images runs it (autograd would use plain F.linear)
        want = bundled.encode_image(x, keep_ratio=0.5, ranker=pred).numpy().astype(np.float16)
    got = np.load(tmp_path / "e.npy")
    assert got.dtype == np.float16 and np.array_equal(got[:8], want)
    cmp = res["compare"]
    assert cmp["gflops"] < cmp["full_gflops"] and cmp["speedup_vs_full"] > 0


def test_unreadable_files_skipped_or_stop(bundled, folder, tmp_path, capsys):
    bad = tmp_path / "imgs"
    bad.mkdir()
    for p in list_images(folder)[:10]:
        (bad / p.name).write_bytes(p.read_bytes())
    (bad / "scene06b.png").write_text("not an image")           # sorts between good files
    res = embed_images(bundled, bad, tmp_path / "e.npy", batch=4, workers=0, progress=False)
    assert res["rows"] == 10 and res["skipped"] == 1
    assert "scene06b.png: not an image" in capsys.readouterr().err
    index = json.loads((tmp_path / "e.json").read_text())
    assert [s["path"] for s in index["skipped_files"]] == [str(bad / "scene06b.png")]
    assert str(bad / "scene06b.png") not in index["paths"] and len(np.load(tmp_path / "e.npy")) == 10
    with pytest.raises(PatchRankError, match=r"scene06b.png: not an image.*rerun with --on-error skip"):
        embed_images(bundled, bad, tmp_path / "s.npy", batch=4, workers=0, on_error="stop", progress=False)
    # the stop kept its first batch; the rerun with skip resumes after it
    res = embed_images(bundled, bad, tmp_path / "s.npy", batch=4, workers=0, progress=False)
    assert res["resumed_from"] == 4 and np.array_equal(np.load(tmp_path / "s.npy"), np.load(tmp_path / "e.npy"))


def test_bad_arguments(bundled, folder, tmp_path, capsys):
    with pytest.raises(PatchRankError, match="no such folder"):
        embed_images(bundled, tmp_path / "missing", tmp_path / "e.npy")
    with pytest.raises(PatchRankError, match="must end in .npy"):
        embed_images(bundled, folder, tmp_path / "e.bin")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PatchRankError, match="holds no images"):
        embed_images(bundled, empty, tmp_path / "e.npy")
    assert main(["embed", "--data", str(folder), "--out", str(tmp_path / "e.npy"), "--keep", "1.5"]) == 2
    assert "keep ratios must be in (0, 1]" in capsys.readouterr().err
    assert main(["embed", "--data", str(folder), "--out", str(tmp_path / "e.npy"),
                 "--keep", "0.5", "--ranker", "nope", "--no-progress"]) == 1
    assert "unknown ranker 'nope'" in capsys.readouterr().err


def _slow_model_dir(tmp: Path) -> Path:
    """An open_clip folder (local-dir:) whose tower is slow enough on 2 cores (~20 ms an image)
    for a kill to land mid-run; written once, so both processes load the same weights."""
    import open_clip
    from safetensors.torch import save_file
    cfg = {"embed_dim": 64,
           "vision_cfg": {"image_size": 224, "patch_size": 32, "width": 384, "layers": 4, "head_width": 64},
           "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    torch.manual_seed(0)
    clip = open_clip.model.CLIP(**cfg)
    d = tmp / "slow-model"
    d.mkdir()
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    return d


@pytest.mark.slow
def test_killed_run_resumes(folder, tmp_path):
    """SIGKILL mid-run, rerun the same command: it resumes (not from 0) and the result equals an
    uninterrupted run, row for row."""
    model = _slow_model_dir(tmp_path)
    many = tmp_path / "many"
    many.mkdir()
    srcs = list_images(folder)
    for i in range(120):
        (many / f"{i:03d}{srcs[i % len(srcs)].suffix}").write_bytes(srcs[i % len(srcs)].read_bytes())
    out = tmp_path / "out" / "e.npy"
    def cmd(dest):
        return [sys.executable, "-m", "patchrank", "embed", "--model", f"local-dir:{model}", "--data",
                str(many), "--out", str(dest), "--keep", "0.5", "--ranker", "norm", "--batch", "4",
                "--workers", "1", "--no-progress", "--no-compare"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    state = out.with_name("e.npy.progress.json")
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file():
            try:
                done = json.loads(state.read_text())["done"]
            except (ValueError, KeyError):
                done = 0
            if done >= 8:
                break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert 8 <= done < 120 and not out.exists()
    second = subprocess.run(cmd(out), env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["resumed_from"] >= done and summary["rows"] == 120
    m = pr.load_model(f"local-dir:{model}")
    embed_images(m, many, tmp_path / "f.npy", keep_ratio=0.5, ranker="norm", batch=4, workers=1,
                 compare=False, progress=False)
    assert np.array_equal(np.load(out), np.load(tmp_path / "f.npy"))
