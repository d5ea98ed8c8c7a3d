"""Ranking files (resumable, refuse mixed settings), datasets and image loading, and the golden
job end to end: kill -9 + rerun and a 2-process torchrun both equal one clean run."""
import io
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
from PIL import Image

from patchrank import rankings
from patchrank.data.datasets import open_dataset
from patchrank.data.images import load_image
from patchrank.errors import PatchRankError

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"score": "similarity", "step": 10, "block": 1}


def _order(p=6, seed=0):
    return torch.randperm(p, generator=torch.Generator().manual_seed(seed))


# -- store ----------------------------------------------------------------------------------------
def test_roundtrip_and_done_ids(tmp_path):
    meta = rankings.prepare(tmp_path, "m/1", SETTINGS, grid=(2, 3), data="x")
    assert meta["settings_hash"] == rankings.settings_hash("m/1", SETTINGS)
    with rankings.ShardWriter(tmp_path, rank=0) as w:
        w.append("a", _order(seed=1), torch.tensor([1, 2, 3, 4, 5, 6]))
    with rankings.ShardWriter(tmp_path, rank=3) as w:
        w.append("b", _order(seed=2))
    assert rankings.done_ids(tmp_path) == {"a", "b"}
    meta2, orders = rankings.load_rankings(tmp_path)
    assert meta2 == meta and torch.equal(orders["a"], _order(seed=1))
    _, both = rankings.load_rankings(tmp_path, removed_at=True)
    assert both["a"][1].tolist() == [1, 2, 3, 4, 5, 6]
    assert rankings.prepare(tmp_path, "m/1", dict(SETTINGS), grid=(2, 3)) == meta   # same: accepted


def test_other_settings_or_model_refused(tmp_path):
    rankings.prepare(tmp_path, "m/1", SETTINGS, grid=(2, 3))
    with pytest.raises(PatchRankError, match=r"other settings \(step: 10 -> 1\)"):
        rankings.prepare(tmp_path, "m/1", {**SETTINGS, "step": 1}, grid=(2, 3))
    with pytest.raises(PatchRankError, match="rankings of model m/1, not m/2"):
        rankings.prepare(tmp_path, "m/2", SETTINGS, grid=(2, 3))
    (tmp_path / "meta.json").unlink()
    rankings.ShardWriter(tmp_path).close()
    with pytest.raises(PatchRankError, match="no meta.json"):
        rankings.prepare(tmp_path, "m/1", SETTINGS, grid=(2, 3))
    with pytest.raises(PatchRankError, match="holds no rankings"):
        rankings.load_rankings(tmp_path)


def test_partial_tail_is_skipped_then_repaired(tmp_path):
    rankings.prepare(tmp_path, "m/1", SETTINGS, grid=(2, 3))
    with rankings.ShardWriter(tmp_path) as w:
        w.append("a", _order(seed=1))
    shard = tmp_path / "shard-00000.jsonl"
    with open(shard, "ab") as f:                      # a write cut by kill -9
        f.write(b'{"id":"b","order":[0,1')
    assert rankings.done_ids(tmp_path) == {"a"}
    with rankings.ShardWriter(tmp_path) as w:            # reopening truncates the partial line
        w.append("b", _order(seed=2))
    assert rankings.done_ids(tmp_path) == {"a", "b"}
    assert shard.read_bytes().count(b"\n") == 2
    with open(shard, "ab") as f:
        f.write(b"garbage\n" + json.dumps({"id": "c", "order": list(range(6))}).encode() + b"\n")
    with pytest.raises(PatchRankError, match="line 3: damaged record"):
        rankings.done_ids(tmp_path)


def test_bad_records_and_concurrent_writer(tmp_path):
    rankings.prepare(tmp_path, "m/1", SETTINGS, grid=(2, 3))
    w = rankings.ShardWriter(tmp_path)
    with pytest.raises(PatchRankError, match="being written by another process"):
        rankings.ShardWriter(tmp_path)
    w.append("a", torch.tensor([0, 1, 2]))
    w.close()
    with pytest.raises(PatchRankError, match="not an order of 6 patches"):
        rankings.load_rankings(tmp_path)


# -- images ---------------------------------------------------------------------------------------
def _png(im, **kw):
    buf = io.BytesIO()
    im.save(buf, "PNG", **kw)
    return buf.getvalue()


def test_load_image_modes(tmp_path):
    # EXIF orientation 6 (rotate 90° clockwise for display): a 4x2 JPEG shows as 2x4
    exif = Image.Exif()
    exif[0x0112] = 6
    p = tmp_path / "rot.jpg"
    Image.new("RGB", (4, 2), (200, 10, 10)).save(p, exif=exif)
    assert load_image(p).size == (2, 4) and load_image(p).mode == "RGB"
    # RGBA and palette transparency composite on white
    rgba = Image.new("RGBA", (3, 3), (0, 0, 0, 0))
    assert load_image(_png(rgba)).getpixel((1, 1)) == (255, 255, 255)
    pal = Image.new("P", (3, 3), 0)
    pal.putpalette([0, 0, 0] * 256)
    pal.info["transparency"] = 0
    assert load_image(_png(pal, transparency=0)).getpixel((0, 0)) == (255, 255, 255)
    # CMYK, 16-bit grey, animated GIF (first frame)
    buf = io.BytesIO()
    Image.new("CMYK", (3, 3), (0, 255, 255, 0)).save(buf, "JPEG")
    r, g, b = load_image(buf.getvalue()).getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60
    i16 = Image.fromarray(np.full((3, 3), 65535, np.uint16))
    assert load_image(_png(i16)).getpixel((0, 0)) == (255, 255, 255)
    frames = [Image.new("RGB", (3, 3), c) for c in ((250, 0, 0), (0, 0, 250))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    assert load_image(buf.getvalue()).getpixel((1, 1))[0] > 200


def test_load_image_refusals(tmp_path):
    big = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(big)
    with pytest.raises(PatchRankError, match="big.png: image is 100x100.*decompression bomb"):
        load_image(big, max_pixels=5000)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(PatchRankError, match="bad.jpg: not an image"):
        load_image(bad)
    cut = tmp_path / "cut.png"
    cut.write_bytes(_png(Image.new("RGB", (64, 64), (1, 2, 3)))[:60])
    with pytest.raises(PatchRankError, match="cut.png"):
        load_image(cut)
    with pytest.raises(PatchRankError, match="not found"):
        load_image(tmp_path / "missing.png")


# -- datasets -------------------------------------------------------------------------------------
def _folder(root, layout):
    for rel in layout:
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (len(rel) * 9 % 255, 0, 0)).save(f)
    return root


def test_image_folder(tmp_path):
    root = _folder(tmp_path / "ds", ["dog/b.png", "dog/a.jpg", "cat/x.png", "sea_lion/y.png"])
    ds = open_dataset(str(root))
    assert ds.ids == ["cat/x.png", "dog/a.jpg", "dog/b.png", "sea_lion/y.png"]
    assert ds.labels.tolist() == [0, 1, 1, 2] and ds.classnames == ("cat", "dog", "sea lion")
    assert ds.image(1).mode == "RGB" and ds.masks is None and len(ds) == 4
    (root / "classnames.txt").write_text("a cat\na dog\na sea lion\n")
    assert open_dataset(str(root)).classnames == ("a cat", "a dog", "a sea lion")
    assert open_dataset(str(root), limit=2).labels.tolist() == [0, 1]
    (root / "classnames.txt").write_text("one\n")
    with pytest.raises(PatchRankError, match="classnames.txt lists 1 names but there are 3"):
        open_dataset(str(root))
    (root / "dog" / "b.png").write_bytes(b"broken")
    (root / "classnames.txt").unlink()
    with pytest.raises(PatchRankError, match="b.png"):
        open_dataset(str(root)).image(2)


def test_image_folder_errors(tmp_path):
    with pytest.raises(PatchRankError, match="single class folder"):
        open_dataset(str(_folder(tmp_path / "one", ["cat/a.png"])))
    two = _folder(tmp_path / "two", ["cat/a.png"])
    (two / "dog").mkdir()
    with pytest.raises(PatchRankError, match="dog holds no images"):
        open_dataset(str(two))
    with pytest.raises(PatchRankError, match="mixes images"):
        open_dataset(str(_folder(tmp_path / "mix", ["a.png", "cat/b.png", "dog/c.png"])))
    flat = open_dataset(str(_folder(tmp_path / "flat", ["b.png", "a.png"])))
    assert flat.ids == ["a.png", "b.png"] and flat.labels is None and flat.classnames is None
    for spec, msg in [("/no/such/dir", "not found"), ("bundled-train", "scene count"),
                      ("bundled-train:x", "positive integer"), ("", "empty")]:
        with pytest.raises(PatchRankError, match=msg):
            open_dataset(spec)


def test_bundled_specs():
    from patchrank.data.scenes import SceneGenerator
    tr = open_dataset("bundled-train:3")
    assert tr.ids == ["bundled-train/000000", "bundled-train/000001", "bundled-train/000002"]
    scene = SceneGenerator("train", seed=0)(2)
    assert np.array_equal(np.asarray(tr.image(2)), scene.image) and tr.label(2) == scene.label
    assert tr.masks.shape == (3, 196) and tr.labels.shape == (3,)
    ev = open_dataset("bundled-eval", limit=2)
    assert ev.ids == ["bundled-eval/00000", "bundled-eval/00001"] and ev.masks.shape == (2, 196)
    assert ev.image(0).size == (112, 112) and ev.classnames == tr.classnames


# -- the golden job end to end ----------------------------------------------------------------------
ARGS = ["--data", "bundled-eval", "--limit", "4", "--prune-layer", "3", "--mode", "greedy", "--step", "10",
        "--stop-at", "0.95", "--no-progress"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _same(a, b):
    meta_a, ra = rankings.load_rankings(a, removed_at=True)
    meta_b, rb = rankings.load_rankings(b, removed_at=True)
    assert meta_a["settings_hash"] == meta_b["settings_hash"] and sorted(ra) == sorted(rb)
    for k in ra:
        assert torch.equal(ra[k][0], rb[k][0]) and torch.equal(ra[k][1], rb[k][1]), k


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    """One uninterrupted single-process run (in-process: same code path as the CLI)."""
    import patchrank as pr
    from patchrank.golden_job import rank_dataset
    out = tmp_path_factory.mktemp("clean")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)         # as OMP_NUM_THREADS=1 in the subprocesses
    try:
        m = pr.load_model(prune_layer=3)
        s = rank_dataset(m, open_dataset("bundled-eval", 4), out, mode="greedy", step=10, stop_at=0.95,
                         progress=False)
    finally:
        torch.set_num_threads(threads)
    assert s["computed"] == 4
    return out


@pytest.mark.slow
def test_kill9_then_resume_equals_clean_run(tmp_path, clean_run, capsys):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "patchrank", "golden", "--out", str(out), *ARGS]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    shard = out / "shard-00000.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if shard.exists() and shard.read_bytes().count(b"\n") >= 1:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    with open(shard, "ab") as f:                       # as if killed in the middle of a write
        f.write(b'{"id":"bundled-eval/00003","order":[5,')
    done = len(rankings.done_ids(out))
    assert 1 <= done < 4
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["already_done"] == done and summary["computed"] == 4 - done
    _same(out, clean_run)
    from patchrank.cli import main
    capsys.readouterr()
    assert main(["golden", "--out", str(out), *[a if a != "0.95" else "0.8" for a in ARGS]]) == 1
    assert "other settings (stop_at: 0.95 -> 0.8)" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path, clean_run):
    out = tmp_path / "dist"
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "patchrank", "golden",
                          "--out", str(out), *ARGS], env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["world_size"] == 2 and summary["computed"] == 4
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    _same(out, clean_run)


@pytest.mark.slow
def test_torchrun_rank_failure_stops_every_process_with_the_file_named(tmp_path):
    """One rank meets an unreadable image: the job ends (no rank left waiting at a collective)
    with a non-zero exit and the file named."""
    from patchrank.eval_split import bundled_eval
    for i, im in enumerate(bundled_eval(limit=4).images):
        (tmp_path / "imgs" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        im.save(tmp_path / "imgs" / "ab"[i % 2] / f"{i}.png")
    (tmp_path / "imgs" / "b" / "9_broken.png").write_bytes(b"not a png")
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "patchrank", "golden",
                          "--data", str(tmp_path / "imgs"), "--out", str(tmp_path / "out"),
                          "--prune-layer", "3", "--no-progress"], env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode != 0
    assert "9_broken.png: not an image" in res.stderr


def test_golden_classnames_file(tmp_path, capsys):
    """--classnames gives an unlabelled folder the names that score='max' needs; a file that
    does not fit the dataset is refused before any search."""
    from patchrank.eval_split import bundled_eval
    from patchrank.cli import main
    (tmp_path / "flat").mkdir()
    bundled_eval(limit=1).images[0].save(tmp_path / "flat" / "one.png")
    names = tmp_path / "names.txt"
    names.write_text("top\nsandal\nbag\n")
    common = ["golden", "--prune-layer", "3", "--no-progress", "--score", "max"]
    assert main([*common, "--data", str(tmp_path / "flat"), "--out", str(tmp_path / "o1"),
                 "--classnames", str(names)]) == 0
    assert main([*common, "--data", "bundled-eval", "--limit", "1", "--out", str(tmp_path / "o2"),
                 "--classnames", str(names)]) == 1
    assert "lists 3 names but the dataset has 6 classes" in capsys.readouterr().err
    assert main([*common, "--data", "bundled-eval", "--out", str(tmp_path / "o3"),
                 "--classnames", str(tmp_path / "missing.txt")]) == 1
    assert "no such file" in capsys.readouterr().err
