"""Sweeps (accuracy / GFLOPs / latency per method per ratio), their resumable cell file, the CoOp
split-file layout, reproduce and bench — all on a tiny random-init ViT (16 patches) and tiny
generated image folders, so the file runs in seconds."""
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from patchrank import cli, reproduce, results, rankings, sweep, sweep_cells, sweep_latency, sweep_methods
from patchrank.cli import measure
from patchrank.data import coop
from patchrank.data.datasets import open_dataset
from patchrank.errors import ModelMismatch, PatchRankError
from patchrank.predictor import Predictor
from patchrank.tokens import LearnableTokens
from tests.conftest import tiny_vit

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def m():
    return tiny_vit(prune_layer=1)


def _png(path, rgb, size=(40, 36), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.zeros((size[1], size[0], 3), np.uint8) + np.array(rgb, np.uint8)
    rng = np.random.default_rng(seed)
    y, x = rng.integers(0, size[1] - 10), rng.integers(0, size[0] - 10)
    a[y:y + 10, x:x + 10] = 255 - a[y:y + 10, x:x + 10]     # a square so images differ
    Image.fromarray(a).save(path)


def image_folder(root, per_class=2):
    for c, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(per_class):
            _png(root / name / f"{i}.png", rgb, seed=10 * c + i)
    return root


def coop_root(root):
    """caltech-101 and oxford_pets in CoOp's layout, 3 classes, 2 train + 2 test images each."""
    cal = root / "caltech-101"
    split = {"train": [], "val": [], "test": []}
    for y, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(4):
            rel = f"{name}/image_{i:04d}.jpg"
            _png(cal / "101_ObjectCategories" / rel, rgb, seed=y * 7 + i)
            split["train" if i < 2 else "test"].append([rel, y, name + "_thing"])
    (cal / "split_zhou_Caltech101.json").write_text(json.dumps(split))
    pets = root / "oxford_pets"
    split = {"train": [], "val": [], "test": []}
    for y, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(3):
            rel = f"{name}_{i}.jpg"
            _png(pets / "images" / rel, rgb, seed=y * 5 + i)
            split["test" if i else "val"].append([rel, y, name])
    (pets / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return root


def preprocess_all(m, ds):
    return torch.stack([m.preprocess(ds.image(i)) for i in range(len(ds.ids))])


# -- the composition equals the public pruned forward ---------------------------------------------
def test_method_embeddings_match_encode_image(m, tmp_path):
    ds = open_dataset(str(image_folder(tmp_path / "f")))
    x = preprocess_all(m, ds)
    torch.manual_seed(0)
    p = Predictor.for_model(m).eval()
    t = LearnableTokens.for_model(m, num_visual=2).eval()
    meths, skipped = sweep_methods.build_methods(m, ["random", "norm", "attention", "tome", "predictor",
                                             "predictor+tokens", "attention+fuse"], ds.ids,
                                         predictor=p, tokens=t)
    assert not skipped and len(meths) == 7
    with torch.inference_mode():
        h = m.prefix(x)
        full = m.encode_image(x)
        for meth in meths:
            embs = sweep_cells.method_embeddings(m, meth, x, h, ds.ids, [1.0, 0.5, 0.25], full=full)
            for r in (0.5, 0.25):
                want = m.encode_image(x, keep_ratio=r, ranker=meth.ranker, tokens=meth.tokens)
                torch.testing.assert_close(embs[r], want, msg=f"{meth.name} at {r}")
            want1 = full if meth.tokens is None else m.encode_image(x, tokens=meth.tokens)
            torch.testing.assert_close(embs[1.0], want1)


# -- run_sweep ------------------------------------------------------------------------------------
def test_sweep_rows_csv_latency_and_full_sharing(m, tmp_path):
    folder = image_folder(tmp_path / "f")
    out = tmp_path / "res" / "r.json"
    settings = sweep.SweepSettings(methods=["random", "norm", "tome", "golden"], ratios=[0.5, 1.0, 0.25],
                                   batch=4, latency_batches=(1, 2), repeats=1, warmup=0,
                                   templates="a photo of the colour {}.", progress=False)
    res = sweep.run_sweep(m, str(folder), settings, out)
    rows = res["rows"]
    assert [r["ratio"] for r in rows[:3]] == [1.0, 0.5, 0.25] and len(rows) == 12
    meta = res["meta"]
    assert meta["n_images"] == 6 and meta["templates"] == ["a photo of the colour {}."]
    full = [r for r in rows if r["ratio"] == 1.0]
    assert {r["correct"] for r in full} == {meta["full"]["correct"]}
    assert all(r["speedup_b1"] == pytest.approx(1.0) for r in full)
    for r in rows:
        assert r["ci_low"] <= r["accuracy"] <= r["ci_high"]
        assert r["kept"] == m.keep_count(r["ratio"])
        assert r["gflops"] == pytest.approx(r["encoder_gflops"] + r["ranker_gflops"])
        assert r["latency_ms_b1"] > 0 and r["latency_ms_bN"] > 0 and r["batch_N"] == 2
        assert r["latency_ms"] == r["latency_ms_b1"]
    g = [r for r in rows if r["method"] == "golden"]
    from patchrank.golden import golden_settings, search_gflops
    assert all(r["precomputed"] for r in g)               # searched per image: its cost is counted
    assert g[1]["ranker_gflops"] == pytest.approx(search_gflops(m, golden_settings(m, mode="oneshot")))
    assert g[1]["gflops"] > 10 * g[1]["encoder_gflops"] and g[0]["ranker_gflops"] == 0
    tome = [r for r in rows if r["method"] == "tome"]
    assert tome[0]["gflops"] > tome[1]["gflops"] > tome[2]["gflops"] and tome[1]["ranker_gflops"] > 0
    csv_lines = (tmp_path / "res" / "r.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,ratio,kept") and len(csv_lines) == 13
    assert json.loads(out.read_text())["format"] == results.FORMAT


def test_sweep_resumes_after_kill_and_refuses_other_settings(m, tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "f", per_class=3)
    out = tmp_path / "r.json"
    kw = dict(batch=3, latency_batches=(), progress=False)
    ref = sweep.run_sweep(m, str(folder), methods=["random", "norm"], ratios=[1.0, 0.5], out=out, **kw)
    cells = sweep_cells.cells_path(out)
    lines = cells.read_bytes().split(b"\n")
    # keep header, 2 method lines and 3 cells; then a torn write, as kill -9 leaves it
    cells.write_bytes(b"\n".join(lines[:6]) + b"\n" + lines[6][:17])
    calls = []
    real = sweep_cells.method_embeddings
    monkeypatch.setattr(sweep_cells, "method_embeddings", lambda *a, **k: calls.append(a[1].name) or real(*a, **k))
    again = sweep.run_sweep(m, str(folder), methods=["random", "norm"], ratios=[1.0, 0.5], out=out, **kw)
    assert [r["correct"] for r in again["rows"]] == [r["correct"] for r in ref["rows"]]
    assert 0 < len(calls) < 2 * 3          # 3 batches x 2 methods; only the missing ones rerun
    with pytest.raises(PatchRankError, match="ratios"):
        sweep.run_sweep(m, str(folder), methods=["random"], ratios=[1.0, 0.4], out=out, **kw)
    p1 = Predictor.for_model(m)
    sweep.run_sweep(m, str(folder), methods=["predictor"], ratios=[1.0, 0.5], out=out, predictor=p1, **kw)
    torch.manual_seed(1)
    with pytest.raises(PatchRankError, match="'predictor' was computed with other weights"):
        sweep.run_sweep(m, str(folder), methods=["predictor"], ratios=[1.0, 0.5], out=out,
                        predictor=Predictor.for_model(m), **kw)
    res = sweep.run_sweep(m, str(folder), methods=["predictor"], ratios=[1.0, 0.5], out=out, predictor=Predictor.for_model(m),
                          fresh=True, **kw)
    assert res["meta"]["methods"] == ["predictor"]


def test_golden_from_ranking_folder(m, tmp_path):
    ds = open_dataset(str(image_folder(tmp_path / "f")))
    rk = tmp_path / "rank"
    rankings.prepare(rk, m.model_id, {"score": "similarity", "prune_layer": m.prune_layer}, grid=m.grid)
    g = torch.Generator().manual_seed(3)
    orders = {i: torch.randperm(m.num_patches, generator=g) for i in ds.ids}
    with rankings.ShardWriter(rk) as w:
        for i, o in orders.items():
            w.append(i, o)
    res = sweep.run_sweep(m, ds, methods=["golden"], ratios=[0.5], out=None, latency_batches=(1,), repeats=1, warmup=0,
                          rankings=rk, progress=False)
    x = preprocess_all(m, ds)
    keep = torch.stack([orders[i][:8] for i in ds.ids]).sort(dim=1).values
    with torch.inference_mode():
        pred = m.zero_shot(list(ds.classnames)).predict(m.encode_image(x, keep=keep))
    assert res["rows"][0]["correct"] == int((pred.numpy() == ds.labels).sum())
    assert "golden orders read from" in res["meta"]["notes"]["method:golden"]
    # a folder short of images, or made for another model, is refused clearly
    ds2 = open_dataset(str(image_folder(tmp_path / "f2", per_class=3)))
    with pytest.raises(PatchRankError, match="rankings for 6 of the 9 images .first missing: .blue/2.png"):
        sweep.run_sweep(m, ds2, methods=["golden"], ratios=[0.5], out=None, latency_batches=(), rankings=rk, progress=False)
    with pytest.raises(ModelMismatch):
        sweep.run_sweep(m, ds, methods=["golden"], ratios=[0.5], out=None, latency_batches=(),
                        rankings=({"model_id": "other/1"}, orders), progress=False)


def test_missing_bundled_weights_are_skipped_named_ones_raise(m, tmp_path, capsys, monkeypatch):
    import patchrank.predictor
    import patchrank.tokens
    monkeypatch.setattr(patchrank.predictor, "default_path", lambda: tmp_path / "no-predictor.safetensors")
    monkeypatch.setattr(patchrank.tokens, "default_path", lambda: tmp_path / "no-tokens.safetensors")
    folder = image_folder(tmp_path / "f")
    res = sweep.run_sweep(m, str(folder), methods=["predictor", "predictor+tokens", "random"], ratios=[1.0, 0.5], out=None,
                          latency_batches=(), progress=False)
    assert res["meta"]["methods"] == ["random"]
    assert "bundled predictor is missing" in res["meta"]["skipped"]["predictor"]
    assert "skipping predictor" in capsys.readouterr().err
    res = sweep.run_sweep(m, str(folder), methods=["predictor+tokens"], ratios=[0.5], out=None, latency_batches=(),
                          predictor=Predictor.for_model(m), progress=False)
    assert "learnable tokens are missing" in res["meta"]["skipped"]["predictor+tokens"]
    with pytest.raises(PatchRankError, match="predictor file not found"):
        sweep.run_sweep(m, str(folder), methods=["predictor"], ratios=[0.5], out=None, latency_batches=(),
                        predictor=tmp_path / "none.safetensors", progress=False)


@pytest.mark.parametrize("make,match", [
    (lambda r: (image_folder(r), (r / "blue" / "0.png").write_bytes(b"not a png")), "0.png"),
    (lambda r: (image_folder(r), [p.unlink() for p in (r / "green").iterdir()]), "green holds no images"),
    (lambda r: _png(r / "only" / "a.png", (1, 2, 3)), "single class folder"),
])
def test_bad_folders_name_the_file(m, tmp_path, make, match):
    root = tmp_path / "bad"
    make(root)
    with pytest.raises(PatchRankError, match=match):
        sweep.run_sweep(m, str(root), methods=["random"], ratios=[0.5], out=None, latency_batches=(), progress=False)


# -- CoOp layout ----------------------------------------------------------------------------------
def test_coop_split_files(tmp_path):
    root = coop_root(tmp_path)
    ds = open_dataset(str(root / "caltech-101"))
    assert ds.split == "test" and len(ds) == 6 and ds.templates == ("a photo of a {}.",)
    assert ds.classnames == ("red thing", "green thing", "blue thing")
    assert ds.ids[0] == "101_ObjectCategories/red/image_0002.jpg" and list(ds.labels) == [0, 0, 1, 1, 2, 2]
    assert ds.image(0).mode == "RGB"
    tr = open_dataset(f"{root / 'caltech-101'}@train", limit=4)
    assert len(tr.ids) == 4 and tr.spec.endswith("@train")
    pets = coop.open_coop(root, "OxfordPets")
    assert pets.templates == ("a photo of a {}, a type of pet.",) and len(pets) == 6
    assert coop.open_coop(root / "oxford_pets", "pets").ids == pets.ids
    assert coop.dataset_info("flowers102").folder == "oxford_flowers"


def test_coop_errors_name_the_file(tmp_path):
    root = coop_root(tmp_path)
    (root / "oxford_pets" / "images" / "green_1.jpg").unlink()
    with pytest.raises(PatchRankError, match="green_1.jpg is missing"):
        coop.open_coop(root, "oxford_pets")
    split = root / "caltech-101" / "split_zhou_Caltech101.json"
    split.write_text(json.dumps({"train": [], "test": [["a.jpg", 0, "x"], ["b.jpg", "1", "y"]]}))
    with pytest.raises(PatchRankError, match=r"split_zhou_Caltech101.json: test\[1\]"):
        open_dataset(str(root / "caltech-101"))
    split.write_text(json.dumps({"test": [["red/image_0002.jpg", 0, "red"]]}))
    with pytest.raises(PatchRankError, match="1 class"):
        open_dataset(str(root / "caltech-101"))
    split.write_text("{not json")
    with pytest.raises(PatchRankError, match="cannot read split file .*split_zhou_Caltech101.json"):
        open_dataset(str(root / "caltech-101"))
    with pytest.raises(PatchRankError, match="unknown CoOp dataset"):
        coop.open_coop(root, "mnist")


def test_coop_aircraft_and_imagenet_layouts(tmp_path):
    air = tmp_path / "fgvc_aircraft"
    (air / "variants.txt").parent.mkdir(parents=True)
    (air / "variants.txt").write_text("707-320\nA300B4\n")
    (air / "images_variant_test.txt").write_text("0001 707-320\n0002 A300B4\n0003 A300B4\n")
    for i, c in ((1, "red"), (2, "blue"), (3, "blue")):
        _png(air / "images" / f"000{i}.jpg", COLOURS[c])
    ds = coop.open_coop(tmp_path, "fgvc_aircraft")
    assert list(ds.labels) == [0, 1, 1] and ds.classnames == ("707-320", "A300B4")
    assert ds.templates == ("a photo of a {}, a type of aircraft.",)
    inet = tmp_path / "imagenet"
    (inet / "images" / "val").mkdir(parents=True)
    (inet / "classnames.txt").write_text("n02 goldfish\nn01 tench\n")
    _png(inet / "images" / "val" / "n01" / "a.JPEG", COLOURS["red"])
    _png(inet / "images" / "val" / "n02" / "b.JPEG", COLOURS["blue"])
    ds = open_dataset(str(inet))
    assert ds.classnames == ("tench", "goldfish") and list(ds.labels) == [0, 1]
    assert ds.ids == ["images/val/n01/a.JPEG", "images/val/n02/b.JPEG"]


# -- reproduce, bench, CLI ------------------------------------------------------------------------
def test_reproduce_table(m, tmp_path, monkeypatch, capsys):
    root = coop_root(tmp_path / "data")
    settings = replace(reproduce.REPRODUCE, methods=["tome", "random", "predictor"], ratios=[0.5],
                       progress=False)
    rep = reproduce.reproduce(m, root, ["caltech101", "oxford_pets"], settings, out_dir=tmp_path / "out")
    table = rep["tables"]["0.5"]
    assert "| Method | Caltech101 | OxfordPets | Avg. | Avg. GFLOPs |" in table
    assert "| CLIP (unpruned) |" in table and "| ToMe |" in table
    assert "| Ours (predictor) | — | — | — | — |" in table and "skipped" in table
    assert (tmp_path / "out" / "caltech101.json").is_file()
    monkeypatch.setattr(measure, "load", lambda a: m)
    capsys.readouterr()
    assert cli.main(["reproduce", "--root", str(root), "--datasets", "caltech101", "--methods", "random",
                     "--ratio", "0.5", "--no-progress"]) == 0          # --ratio: the old spelling
    out = capsys.readouterr()
    assert "| random |" in out.err and "| random |" in json.loads(out.out)["tables"]["0.5"]
    assert cli.main(["reproduce", "--root", str(root), "--datasets", "caltech101", "--methods", "random",
                     "--ratios", "0.5", "--no-progress", "--format", "md"]) == 0
    assert capsys.readouterr().out.startswith("Zero-shot top-1 (%) at keep ratio 0.5")


def test_bench_and_cli(m, tmp_path, monkeypatch, capsys):
    res = sweep_latency.bench(m, ["fixed-ids", "random", "tome"], [1.0, 0.5], [1, 2], repeats=1, warmup=0,
                      progress=False)
    rows = res["rows"]
    assert {(r["method"], r["batch"]) for r in rows} >= {("full", 1), ("fixed-ids", 2), ("tome", 1)}
    assert all(r["median_ms"] > 0 for r in rows)
    assert [r["speedup"] for r in rows if r["method"] == "full"] == [1.0, 1.0]
    monkeypatch.setattr(measure, "load", lambda a: m)
    assert cli.main(["bench", "--methods", "fixed-ids", "--ratios", "0.5", "--batches", "1",   # old spelling
                     "--repeats", "1", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "patchrank-bench/1"
    folder = image_folder(tmp_path / "f")
    out = tmp_path / "cli.json"
    assert cli.main(["sweep", "--data", str(folder), "--methods", "random,norm", "--ratios", "1,0.5",
                     "--out", str(out), "--latency-batches", "1", "--repeats", "1", "--no-progress",
                     "--png", str(tmp_path / "t.png")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 4 and (tmp_path / "t.png").stat().st_size > 1000
    assert cli.main(["sweep", "--data", str(tmp_path / "nowhere"), "--out", str(out), "--no-progress"]) == 1
    assert "not found" in capsys.readouterr().err


def test_tokens_run_only_at_the_keep_ratios_they_were_trained_for(m, tmp_path):
    folder = image_folder(tmp_path / "f")
    t = LearnableTokens.for_model(m, num_visual=2)
    t.meta["train"] = {"ratios": [0.25, 0.5]}
    res = sweep.run_sweep(m, str(folder), methods=["random", "random+tokens"], ratios=[1.0, 0.5, 0.25], out=None,
                          latency_batches=(1,), repeats=1, warmup=0, tokens=t, progress=False)
    ratios = {r["method"]: [] for r in res["rows"]}
    for r in res["rows"]:
        ratios[r["method"]].append(r["ratio"])
    assert ratios == {"random": [1.0, 0.5, 0.25], "random+tokens": [0.5, 0.25]}
