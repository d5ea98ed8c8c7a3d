"""The front door stays true: Spaces front matter, pins, the CI command, asset sizes."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _front_matter() -> dict:
    text = (ROOT / "README.md").read_text()
    assert text.startswith("---\n"), "README.md must open with the Spaces YAML front matter"
    block = text.split("---\n")[1]
    out = {}
    for line in block.splitlines():
        m = re.match(r"^([a-z_]+):\s*(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip().strip('"')
    return out


def _pin(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}==([\w.]+)", line.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned with == in requirements.txt")


def test_front_matter_matches_pins():
    fm = _front_matter()
    assert fm["sdk"] == "gradio"
    assert fm["sdk_version"] == _pin("gradio")
    assert fm["python_version"] == "3.11"
    assert fm["app_file"] == "app.py"


def test_torch_pair_pinned_together():
    assert _pin("torch") == "2.14.1" and _pin("torchvision") == "0.29.1"
    assert _pin("open_clip_torch") == "3.3.0"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = next(line.strip() for line in ci.splitlines() if "pytest" in line and line.startswith("python3"))
    assert cmd in readme, f"README must show the CI test command verbatim: {cmd}"


def test_assets_under_10_mb():
    big = [str(p) for p in (ROOT / "assets").rglob("*") if p.is_file() and p.stat().st_size >= 10 * 2**20]
    assert not big, f"assets over 10 MB (the Hub rejects them without LFS): {big}"
