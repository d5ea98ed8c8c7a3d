"""The real-CLIP recipe of the README, run end to end as written: an image folder to golden
rankings, a predictor, learnable tokens and a sweep, with ViT-B-32 / openai from the stand-in Hub
(random-init weights in the real repository's layout) and the per-image steps in 2 processes.

Tiny scale (12 images, 2 epochs) so it fits CI; what it proves is that the steps chain, that the
distributed ones give the same answers as one process, and that a rerun resumes instead of
recomputing."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

#: The README's recipe, verbatim ("photos/" and "runs/" are replaced by the test's folders).
RECIPE = (
    "torchrun --nproc_per_node=2 -m patchrank golden --model ViT-B-32 --pretrained openai --data photos/ --out runs/golden",
    "torchrun --nproc_per_node=2 -m patchrank train-predictor --model ViT-B-32 --pretrained openai --rankings runs/golden --out runs/predictor.safetensors --epochs 2",
    "python -m patchrank tune-tokens --model ViT-B-32 --pretrained openai --ranker runs/predictor.safetensors --data photos/ --shots 2 --epochs 1 --out runs/tokens.safetensors",
    "torchrun --nproc_per_node=2 -m patchrank sweep --model ViT-B-32 --pretrained openai --data photos/ --methods predictor,predictor+tokens,attention --predictor runs/predictor.safetensors --tokens runs/tokens.safetensors --ratios 1,0.6,0.4 --latency-batches none --out runs/sweep.json",
    "torchrun --nproc_per_node=2 -m patchrank reproduce --model ViT-B-32 --pretrained openai --root coop/ --datasets caltech101,oxford_pets --methods predictor,attention --predictor runs/predictor.safetensors --out runs/paper",
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, eval_split):
    """An ImageFolder: 3 classes x 4 images (evaluation scenes; class folder = its label)."""
    root = tmp_path_factory.mktemp("photos")
    count: dict[int, int] = {}
    for im, label in zip(eval_split.images, eval_split.labels):
        c = int(label)
        if c < 3 and count.get(c, 0) < 4:
            d = root / eval_split.classnames[c].replace(" ", "_")
            d.mkdir(exist_ok=True)
            im.resize((224, 224)).save(d / f"{count.get(c, 0)}.jpg")
            count[c] = count.get(c, 0) + 1
    return root


def _run(cmd: str, photos: Path, runs: Path, env: dict, coop: Path | None = None) -> dict:
    argv = shlex.split(cmd.replace("photos/", f"{photos}/").replace("runs/", f"{runs}/")
                       .replace("coop/", f"{coop}/"))
    if argv[0] == "torchrun":
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", *argv[1:]]
    else:
        argv = [sys.executable, *argv[1:]]
    res = subprocess.run(argv + ["--no-progress"], env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, f"{cmd}\n{res.stderr[-3000:]}"
    out = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    assert len(out) == 1, f"one JSON line expected from rank 0 only: {res.stdout[-2000:]}"
    return json.loads(out[0])


def test_readme_shows_the_recipe():
    readme = (ROOT / "README.md").read_text()
    for cmd in RECIPE:
        assert cmd in readme, cmd


def test_recipe_end_to_end(b32, hub, photos, tmp_path):
    _, home, _ = b32
    runs = tmp_path / "runs"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    golden = _run(RECIPE[0], photos, runs, env)
    assert golden["images"] == 12 and golden["computed"] == 12 and golden["world_size"] == 2
    again = _run(RECIPE[0], photos, runs, env)                 # resumes: nothing left to do
    assert again["already_done"] == 12 and again["computed"] == 0
    pred = _run(RECIPE[1], photos, runs, env)
    assert pred["num_train"] + pred["num_val"] == 12 and (runs / "predictor.safetensors").is_file()
    tok = _run(RECIPE[2], photos, runs, env)
    assert tok["num_visual"] > 0 and (runs / "tokens.safetensors").is_file()
    sweep = _run(RECIPE[3], photos, runs, env)
    assert sweep["n_images"] == 12 and sweep["skipped"] == {}
    res = json.loads((runs / "sweep.json").read_text())
    methods = {(r["method"], r["ratio"]) for r in res["rows"]}
    assert {("predictor", 0.6), ("predictor+tokens", 0.4), ("attention", 0.4)} <= methods
    g = {r["method"]: r["gflops"] for r in res["rows"] if r["ratio"] == 0.4}
    full = next(r["gflops"] for r in res["rows"] if r["ratio"] == 1.0)
    assert all(v < full for v in g.values())
    # the distributed sweep's cells: two shards, every batch once
    shards = sorted(runs.glob("sweep.cells.rank*.jsonl"))
    assert len(shards) == 2
    # one process over the same cells finds them all done and writes the same accuracies
    one = _run(RECIPE[3].replace("torchrun --nproc_per_node=2", "python"), photos, runs, env)
    res1 = json.loads((runs / "sweep.json").read_text())
    assert one["runtime"]["accuracy_s_this_run"] < 5
    assert [r["accuracy"] for r in res1["rows"]] == [r["accuracy"] for r in res["rows"]]
    assert np.isfinite([r["gflops"] for r in res1["rows"]]).all()
    # the paper's table on CoOp-layout datasets, split across the 2 processes
    from tests.patchrank.test_sweep import coop_root
    coop = coop_root(tmp_path / "coop")
    rep = _run(RECIPE[4], photos, runs, env, coop)
    assert set(rep["tables"]) == {"0.6"} and "| Ours (predictor) |" in rep["tables"]["0.6"]
    assert {r["dataset"] for r in rep["rows"]} == {"caltech101", "oxford_pets"}
    assert len(list((runs / "paper").glob("caltech101.cells.rank*.jsonl"))) == 2
