"""A real package: the wheel installs and works outside the checkout, with its bundled model;
nothing on an import path of the library or the app is POSIX-only."""
import pytest
import ast
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.app.test_spaces import needs_git

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

#: Standard-library modules that exist on POSIX systems only (Windows has none of them).
POSIX_ONLY = {"fcntl", "termios", "tty", "pty", "pwd", "grp", "resource", "posix", "syslog",
              "crypt", "spwd", "nis"}


def test_wheel_installs_and_runs_outside_the_checkout():
    """.ci/wheel-check: build, install into a fresh venv elsewhere, run `patchrank --version`,
    `patchrank eval-bundled --limit 50` and `pr.load_model()` from another folder."""
    needs_git()
    t = time.perf_counter()
    res = subprocess.run(["bash", str(ROOT / ".ci" / "wheel-check"), sys.executable],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "PYTHONPATH": ""})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "all satisfied" in out
    assert f"patchrank {__import__('patchrank').__version__}" in out
    assert '"images": 50' in out and "load_model: bundled/" in out and "wheel-check: ok" in out
    print(f"wheel-check took {time.perf_counter() - t:.1f} s")


def test_wheel_metadata_pins_equal_requirements():
    """pyproject reads its dependencies from requirements.txt: one list of pins."""
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dependencies = {file = ["requirements.txt"]}' in text
    assert 'patchrank = "patchrank.cli:main"' in text


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_posix_only_imports():
    """Windows users can import the library and run the app (file locks come from filelock)."""
    files = [*(ROOT / "patchrank").rglob("*.py"), *(ROOT / "app").rglob("*.py"), ROOT / "app.py"]
    bad = {str(p.relative_to(ROOT)): sorted(_imports(p) & POSIX_ONLY) for p in files}
    assert not {k: v for k, v in bad.items() if v}
