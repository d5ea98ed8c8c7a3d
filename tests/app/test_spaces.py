"""A Hugging Face Spaces push that works, checked as far as it can be without a network: the
README's front matter against the pins and open_clip, and the set of files a push uploads
against .gitattributes (the Hub refuses binaries not stored with LFS/Xet)."""
import os
import subprocess
from pathlib import Path

import open_clip
import pytest
import yaml

from tests.test_readme import pin

ROOT = Path(__file__).resolve().parents[2]
#: The files open_clip 3.3.0 reads from a Hub repo: the weights (open_clip_model.safetensors,
#: preferred over the .bin) and the config that `hf-hub:` names read.
OPEN_CLIP_FILES = {open_clip.constants.HF_SAFE_WEIGHTS_NAME, open_clip.constants.HF_CONFIG_NAME}
LIMIT = 10 * 2**20                      # the Hub's limit for a file outside LFS/Xet


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "README.md must open with the Spaces YAML front matter"
    return yaml.safe_load(text.split("---\n")[1])


def needs_git() -> None:
    """Skip outside a git checkout (a tarball), except in CI, which must run on one."""
    if not (ROOT / ".git").exists():
        if os.environ.get("CI"):
            pytest.fail("CI must run on a git checkout")
        pytest.skip("not a git checkout")


def git(*args: str) -> list[str]:
    needs_git()
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [line for line in out.split("\0" if "-z" in args else "\n") if line]


def lfs_tracked(paths: list[str]) -> dict[str, bool]:
    """``git check-attr filter`` for each path: True where .gitattributes says filter=lfs."""
    out = subprocess.run(["git", "check-attr", "-z", "filter", "--", *paths], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split("\0")
    return {out[i]: out[i + 2] == "lfs" for i in range(0, len(out) - 2, 3)}


def is_binary(path: Path) -> bool:
    """Git's test (a NUL byte in the first 8000 bytes), plus anything that is not UTF-8 text."""
    data = path.read_bytes()
    if b"\0" in data[:8000]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_front_matter_matches_pins():
    fm = front_matter()
    assert fm["sdk"] == "gradio"
    assert fm["sdk_version"] == pin("gradio")
    assert fm["python_version"] == "3.11"
    assert fm["app_file"] == "app.py"


def test_preload_names_open_clips_repos_and_only_the_files_it_reads():
    from tests.app import app_support  # noqa: F401  (the app's temp folder, before gradio loads)
    from app import engine
    want = {open_clip.get_pretrained_cfg(kw["name"], kw["pretrained"])["hf_hub"].rstrip("/")
            for _, kw in engine.MODEL_CHOICES.values() if kw.get("pretrained")}
    got = {}
    for entry in front_matter()["preload_from_hub"]:
        repo, files = entry.split()
        got[repo] = set(files.split(","))
    assert set(got) == want, "each preloaded repo must be open_clip's hf_hub id for a menu model"
    assert all(files == OPEN_CLIP_FILES for files in got.values()), got
    assert engine.SPACES_DEFAULT in engine.MODEL_CHOICES


def test_assets_are_lfs_tracked_and_small():
    files = git("ls-files", "-z", "--", "assets", "patchrank/assets")
    assert any(f.startswith("patchrank/assets/bundled/") for f in files)
    tracked = lfs_tracked(files)
    assert [f for f in files if not tracked[f]] == [], "assets not LFS-tracked by .gitattributes"
    big = [f for f in files if (ROOT / f).stat().st_size >= LIMIT]
    assert not big, f"assets of 10 MB or more: {big}"


def test_the_upload_set():
    """What a push sends (README: git archive + hf upload, or an orphan commit with git-lfs):
    the tracked files. Nothing .gitignore excludes is among them, the Space's entry files are,
    every binary is LFS-tracked and nothing outside LFS reaches 10 MB."""
    files = [f for f in git("ls-files", "-z") if (ROOT / f).is_file()]
    assert {"app.py", "requirements.txt", "README.md", ".gitattributes"} <= set(files)
    assert git("ls-files", "-z", "--cached", "--ignored", "--exclude-standard") == []
    tracked = lfs_tracked(files)
    binaries = [f for f in files if (ROOT / f).stat().st_size and is_binary(ROOT / f)]
    assert binaries and [f for f in binaries if not tracked[f]] == []
    too_big = [f for f in files if not tracked[f] and (ROOT / f).stat().st_size >= LIMIT]
    assert not too_big, too_big
