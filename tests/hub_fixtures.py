"""The stand-in Hub as session fixtures, shared by the tests that load real CLIP through it
(``test_hub.py``, ``test_recipe.py``); registered in conftest.py as a pytest plugin."""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import open_clip
import pytest

import patchrank as pr
from tests.hub_standin import HubStandIn, TINY_CFG, write_open_clip_repo

B32_REPO = open_clip.get_pretrained_cfg("ViT-B-32", "openai")["hf_hub"].rstrip("/")


def point_hub(mp: pytest.MonkeyPatch, endpoint: str, home: Path, offline: bool = False) -> None:
    """What ``HF_ENDPOINT=... HF_HOME=...`` (and ``HF_HUB_OFFLINE`` unset) before starting Python
    gives: the variables for child processes, and huggingface_hub's constants, which it reads
    once at import, for this one. conftest switches the Hub off by default; this undoes it."""
    from huggingface_hub import constants
    mp.setenv("HF_ENDPOINT", endpoint)
    mp.setenv("HF_HOME", str(home))
    mp.delenv("HF_HUB_OFFLINE", raising=False)
    if offline:
        mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(constants, "ENDPOINT", endpoint)
    mp.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    mp.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    mp.setattr(constants, "HF_HUB_OFFLINE", offline)


@pytest.fixture(scope="session")
def files():
    """Repository folders on disk (deleted at the end: ViT-B-32 is 300 MB)."""
    root = Path(tempfile.mkdtemp(prefix="patchrank-hub-files-"))
    sd = write_open_clip_repo(root / "b32", name="ViT-B-32", half=True)
    tiny = write_open_clip_repo(root / "tiny", TINY_CFG, seed=1)
    yield root, {"b32_conv1": sd["visual.conv1.weight"].float(), "tiny_conv1": tiny["visual.conv1.weight"]}
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def hub(files):
    root, _ = files
    with HubStandIn() as h:
        h.add_folder(B32_REPO, root / "b32")
        h.add_folder("org/tiny", root / "tiny")
        yield h


@pytest.fixture(scope="session")
def b32(hub):
    """ViT-B-32 / openai downloaded once through the stand-in; its HF_HOME stays for later tests."""
    home = Path(tempfile.mkdtemp(prefix="patchrank-hf-home-"))
    with pytest.MonkeyPatch.context() as mp:
        point_hub(mp, hub.url, home)
        t = time.perf_counter()
        m = pr.load_model("ViT-B-32", pretrained="openai")
        elapsed = time.perf_counter() - t
    yield m, home, elapsed
    shutil.rmtree(home, ignore_errors=True)


