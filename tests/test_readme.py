"""The front door stays true: pins and the CI command (Spaces: tests/test_spaces.py)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def pin(name: str) -> str:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}==([\w.]+)", line.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned with == in requirements.txt")


def test_torch_pair_pinned_together():
    assert pin("torch") == "2.14.1" and pin("torchvision") == "0.29.1"
    assert pin("open_clip_torch") == "3.3.0"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = next(line.strip() for line in ci.splitlines() if "pytest" in line and line.startswith("python3"))
    assert cmd in readme, f"README must show the CI test command verbatim: {cmd}"
