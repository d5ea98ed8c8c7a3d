"""Real CLIP from a Hugging Face Hub, end to end, through the stand-in Hub (tests/hub_standin.py):
huggingface_hub's real download code with ``HF_ENDPOINT`` pointed at it, never a mock.

ViT-B-32 / openai (random-init weights in its real repository's name and layout, stored as
float16) is written and downloaded once per session; the fault tests use a tiny open_clip model
served as an ``hf-hub:`` repository. The CLI runs in a subprocess with the variables set, as a
user's shell would; in this process ``point_hub`` sets what huggingface_hub read at import.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

import patchrank as pr
from patchrank.errors import ModelMismatch, PatchRankError, WeightsUnavailable
from patchrank.weights import canonical_tag
from tests.hub_fixtures import B32_REPO, point_hub
from tests.hub_standin import HubStandIn, closed_port, silent_endpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PRED_REPO = "USER/patchrank-vit-b-32-openai"
FAST = 15.0          # seconds: the longest a load may take to say the weights cannot be had
#: The README's real-CLIP command line, run here verbatim (with HF_ENDPOINT set).
CLI_BENCH = ("python -m patchrank bench --model ViT-B-32 --pretrained openai --methods attention,predictor "
             f"--predictor hf-hub:{PRED_REPO} --ratios 1,0.5 --latency-batches 1 --repeats 1")
#: The README's real-CLIP Python lines, made verbatim by these tests.
PY_LINES = ('m = pr.load_model("ViT-B-32", pretrained="openai")',
            f'p = pr.load_predictor("hf-hub:{PRED_REPO}", model=m)',
            f'pr.write_model_card("runs/predictor.safetensors", repo_id="{PRED_REPO}")',
            'client.predict("ViT-B-32/openai", "", "", api_name="/load_model")')


@pytest.fixture(scope="session")
def published(b32, hub):
    """A predictor for ViT-B-32/openai published on the stand-in as the README says: the file,
    its model card written by ``python -m patchrank publish``, in repository PRED_REPO."""
    from patchrank.cli import main
    m = b32[0]
    runs = Path(tempfile.mkdtemp(prefix="patchrank-publish-")) / "runs"
    p = pr.Predictor.for_model(m)
    p.meta.update(command="patchrank train-predictor --model ViT-B-32 --pretrained openai ...",
                  val_metrics={"kendall_tau": 0.5})
    p.save(runs / "predictor.safetensors")
    with contextlib.redirect_stdout(io.StringIO()) as said:
        assert main(["publish", str(runs / "predictor.safetensors"), PRED_REPO]) == 0
    hub.add(PRED_REPO, "predictor.safetensors", runs / "predictor.safetensors")
    hub.add(PRED_REPO, "README.md", runs / "README.md")
    yield runs, json.loads(said.getvalue().replace(str(runs), "runs"))
    shutil.rmtree(runs.parent, ignore_errors=True)


@pytest.fixture
def fresh_home(tmp_path):
    return tmp_path / "hf-home"


# -- library: names open_clip accepts, through the real download path ---------------------------------
def test_openai_tag_downloads_with_quickgelu(b32, files):
    m, home, elapsed = b32
    assert m.name == "ViT-B-32" and m.pretrained == "openai" and m.model_id.startswith("ViT-B-32/openai/")
    assert torch.allclose(m.clip.visual.conv1.weight, files[1]["b32_conv1"])     # the served weights
    acts = {type(b.mlp.gelu).__name__ for b in m.visual.transformer.resblocks}
    assert acts == {"QuickGELU"}, "OpenAI weights need QuickGELU; open_clip 3.3 only warns"
    snapshot = home / "hub" / f"models--{B32_REPO.replace('/', '--')}" / "snapshots"
    assert any(snapshot.glob("*/open_clip_model.safetensors")), "in the user's HF_HOME cache"
    print(f"ViT-B-32/openai through the stand-in: {elapsed:.1f} s")


def test_tag_spellings_and_names_normalised_as_open_clip_does():
    assert canonical_tag("ViT-B-32", "OpenAI") == "openai"
    assert canonical_tag("ViT-B-32", "laion2b-s34b-b79k") == "laion2b_s34b_b79k"
    assert canonical_tag("ViT-B-32", "no-such-tag") is None
    assert pr.load_model("ViT-S/32").name == "ViT-S-32"             # open_clip reads / as -


def test_cached_weights_load_with_the_hub_gone(b32, monkeypatch):
    """A second load, spelled ``OpenAI``, with nothing listening where the Hub was: from the
    cache, fast, the same model id."""
    m, home, _ = b32
    point_hub(monkeypatch, closed_port(), home)
    t = time.perf_counter()
    again = pr.load_model("ViT-B-32", pretrained="OpenAI")
    assert time.perf_counter() - t < FAST
    assert again.model_id == m.model_id and again.pretrained == "openai"


def test_hf_hub_repo_and_cache_after_the_server_stops(files, fresh_home, monkeypatch):
    root, ref = files
    with HubStandIn() as h:
        h.add_folder("org/tiny", root / "tiny")
        url = h.url
        point_hub(monkeypatch, url, fresh_home)
        m = pr.load_model("hf-hub:org/tiny")
    assert m.model_id.startswith("hf-hub:org/tiny/") and m.grid == (4, 4)
    assert torch.equal(m.clip.visual.conv1.weight, ref["tiny_conv1"])
    assert {type(b.mlp.gelu).__name__ for b in m.visual.transformer.resblocks} == {"GELU"}
    again = pr.load_model("hf-hub:org/tiny")                        # server stopped: the cache
    assert again.model_id == m.model_id
    point_hub(monkeypatch, url, fresh_home, offline=True)           # HF_HUB_OFFLINE=1: the cache
    assert pr.load_model("hf-hub:org/tiny").model_id == m.model_id
    with pytest.raises(PatchRankError, match="drop pretrained"):
        pr.load_model("hf-hub:org/tiny", pretrained="openai")


# -- failures: fast, one message naming repo and file -----------------------------------------------
def _fails(name: str, pretrained: str | None = None) -> str:
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailable) as e:
        pr.load_model(name, pretrained=pretrained)
    assert time.perf_counter() - t < FAST, f"took {time.perf_counter() - t:.1f} s"
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_closed_port_fails_fast_with_how_to_supply(fresh_home, monkeypatch):
    point_hub(monkeypatch, closed_port(), fresh_home)
    msg = _fails("ViT-B-32", "openai")
    assert B32_REPO in msg and "open_clip_model.safetensors" in msg and "could not be reached" in msg
    assert f"hf download {B32_REPO} open_clip_model.safetensors" in msg
    assert "pr.load_model('ViT-B-32', pretrained='/path/to/folder/open_clip_model.safetensors', " \
           "force_quick_gelu=True)" in msg


def test_silent_hub_gives_up_within_the_users_etag_timeout(fresh_home, monkeypatch):
    from huggingface_hub import constants
    with silent_endpoint() as url:
        point_hub(monkeypatch, url, fresh_home)
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 1)    # HF_HUB_ETAG_TIMEOUT=1
        t = time.perf_counter()
        msg = _fails("hf-hub:org/tiny")
        assert time.perf_counter() - t < 5
    assert "did not answer in time" in msg and "open_clip_config.json" in msg


def test_offline_and_not_cached(hub, fresh_home, monkeypatch):
    point_hub(monkeypatch, hub.url, fresh_home, offline=True)
    asked = len(hub.requests)
    msg = _fails("ViT-B-32", "openai")
    assert "HF_HUB_OFFLINE is set" in msg and B32_REPO in msg
    assert len(hub.requests) == asked, "offline means no request at all"


@pytest.mark.parametrize("fault, file, words", [
    ("404", "open_clip_model.safetensors", "has none of the files open_clip_model.safetensors, "
                                           "open_clip_pytorch_model.bin"),
    ("500", "open_clip_model.safetensors", "answered HTTP 500"),
    ("500", "open_clip_config.json", "answered HTTP 500"),
    ("drop", "open_clip_model.safetensors", "connection dropped before the whole file arrived"),
])
def test_hub_faults_give_a_clear_message(hub, files, fresh_home, monkeypatch, fault, file, words):
    repo = f"org/faulty-{fault}-{file.split('.')[0]}"
    hub.add_folder(repo, files[0] / "tiny")
    hub.fail(repo, file, fault)
    point_hub(monkeypatch, hub.url, fresh_home)
    msg = _fails(f"hf-hub:{repo}")
    assert repo in msg and words in msg and "hf download" in msg


def test_repos_without_open_clip_files(hub, files, fresh_home, tmp_path, monkeypatch):
    (tmp_path / "README.md").write_text("# not a model\n")
    hub.add("org/readme-only", "README.md", tmp_path / "README.md")
    hub.add("org/config-only", "open_clip_config.json", files[0] / "tiny" / "open_clip_config.json")
    point_hub(monkeypatch, hub.url, fresh_home)
    assert "not an open_clip model: Hub repository org/readme-only has no open_clip_config.json" \
        in _fails("hf-hub:org/readme-only")
    assert "Hub repository org/config-only at" in (msg := _fails("hf-hub:org/config-only"))
    assert "has none of the files" in msg
    assert "has no repository org/missing" in _fails("hf-hub:org/missing")


# -- the command line and the app -------------------------------------------------------------------
def test_readme_shows_what_these_tests_run(published):
    readme = (ROOT / "README.md").read_text()
    for line in (CLI_BENCH, *PY_LINES):
        assert line in readme, line
    assert published[1]["card"] == "runs/README.md"
    for line in published[1]["upload"]:                 # the two `hf upload` commands
        assert line in readme, line
    assert f"python -m patchrank publish runs/predictor.safetensors {PRED_REPO}" in readme


def test_cli_runs_real_clip_from_the_hub(b32, hub, published):
    _, home, _ = b32
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(home), "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_OFFLINE", None)
    out = subprocess.run(CLI_BENCH.split() + ["--no-progress"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout)
    assert res["meta"]["model"] == "ViT-B-32" and res["meta"]["pretrained"] == "openai"
    assert {r["method"] for r in res["rows"]} >= {"attention", "predictor"} and not res["meta"]["skipped"]


def test_cli_failure_names_flags_not_python(fresh_home, monkeypatch, capsys):
    from patchrank import cli
    point_hub(monkeypatch, closed_port(), fresh_home)
    assert cli.main(["bench", "--model", "ViT-B-32", "--pretrained", "openai", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: cannot get the weights of ViT-B-32/openai")
    assert "--model ViT-B-32-quickgelu --pretrained /path/to/folder/open_clip_model.safetensors" in err
    assert "pr.load_model" not in err


def test_app_switches_to_real_clip_and_keeps_it_on_failure(b32, hub, monkeypatch, tmp_path):
    from tests.app import app_support  # noqa: F401  (the app's temp folder, before gradio loads)
    from app import engine, handlers as H, sessions
    _, home, _ = b32
    monkeypatch.setattr(engine, "REGISTRY", engine.ModelRegistry())   # this test's models only
    sid = "test-hub-switch"
    sessions.session(sid).model_key = "bundled"
    point_hub(monkeypatch, hub.url, home)
    msg, labels, value = H.load_model("ViT-B-32/openai", "", "", session=sid)   # README's /load_model
    assert msg.startswith("**Loaded** ViT-B-32/openai") and value == "ViT-B-32/openai" and "cat" in labels
    point_hub(monkeypatch, closed_port(), tmp_path / "hf-home")      # the Hub gone, nothing cached
    t = time.perf_counter()
    msg, labels, value = H.load_model("ViT-B-16/openai", "", "", session=sid)
    assert time.perf_counter() - t < FAST
    assert "Could not load" in msg and "Make the Hugging Face Hub reachable" in msg and "stays in use" in msg
    assert "timm/vit_base_patch16_clip_224.openai" in msg                 # names the repository
    assert "pr.load_model" not in msg and labels is None and value == "ViT-B-32/openai"
    assert sessions.session(sid).model_key == "ViT-B-32/openai"
    cut = tmp_path / "cut.safetensors"                               # a corrupt upload: refused plainly
    cut.write_bytes(pr.predictor.default_path().read_bytes()[:500])
    import gradio as gr
    with pytest.raises(gr.Error, match="not a usable PatchRank predictor.*not a readable"):
        H.upload_predictor(str(cut), session=sid)
    assert sessions.session(sid).model_key == "ViT-B-32/openai"


# -- predictors that travel -------------------------------------------------------------------------
def test_predictor_from_the_hub_with_its_model_card(b32, hub, published, monkeypatch):
    m, home, _ = b32
    card = (published[0] / "README.md").read_text()
    assert m.model_id in card and "base_model: " + B32_REPO in card and "| kendall_tau | 0.500 |" in card
    assert f"pr.load_predictor('hf-hub:{PRED_REPO}', model=m)" in card and "train-predictor" in card
    point_hub(monkeypatch, hub.url, home)
    p = pr.load_predictor(f"hf-hub:{PRED_REPO}", model=m)
    assert p.model_id == m.model_id and p.prune_layer == m.prune_layer == 3
    assert pr.load_predictor(f"hf-hub:{PRED_REPO}/predictor.safetensors").model_id == m.model_id
    from tests.conftest import tiny_vit
    with pytest.raises(ModelMismatch, match="trained for model"):
        pr.load_predictor(f"hf-hub:{PRED_REPO}", model=tiny_vit())
    with pytest.raises(WeightsUnavailable, match=re.escape("pr.load_predictor('/path/to/folder/other.safetensors')")):
        pr.load_predictor(f"hf-hub:{PRED_REPO}/other.safetensors")


def test_corrupt_predictor_file_is_a_plain_error(tmp_path):
    good = pr.predictor.default_path().read_bytes()
    for name, data in {"cut.safetensors": good[: len(good) // 2], "noise.safetensors": os.urandom(4096)}.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(PatchRankError, match="not a readable PatchRank predictor file"):
            pr.load_predictor(tmp_path / name)


def test_prune_an_open_clip_model_with_a_predictor_from_the_hub(b32, hub, published, monkeypatch):
    """The drop-in on the open_clip model itself (no PatchRank name, only its weights) with an
    hf-hub: predictor: accepted by the weights' fingerprint, prunes, leaves the original as it was."""
    m, home, _ = b32
    point_hub(monkeypatch, hub.url, home)
    x = torch.randn(2, 3, *m.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = m.clip.encode_image(x)
        fast = pr.prune(m.clip, keep_ratio=0.5, ranker=f"hf-hub:{PRED_REPO}")
        p = pr.load_predictor(f"hf-hub:{PRED_REPO}", model=m)
        assert torch.equal(fast.encode_image(x), m.encode_image(x, keep_ratio=0.5, ranker=p))
        assert torch.equal(m.clip.encode_image(x), before)
    assert fast.gflops() < fast.gflops(1.0)
