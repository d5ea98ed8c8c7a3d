"""Where the app writes: one temporary folder for everything, set before gradio is imported.

Exports, generated example scenes, drawn panels, the examples' golden cache and gradio's own
upload/output cache all go under ``$PATCHRANK_APP_TMP`` (default ``<system temp>/patchrank-app``),
so a server (or the test suite) leaves nothing in the repository and one folder can be wiped.
Gradio reads ``GRADIO_TEMP_DIR`` when it is imported, which is why the package imports this
module before anything that imports gradio.
"""
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
APP_TMP = Path(os.environ.setdefault("PATCHRANK_APP_TMP", str(Path(tempfile.gettempdir()) / "patchrank-app")))
os.environ.setdefault("GRADIO_TEMP_DIR", str(APP_TMP / "gradio"))


def app_tmp() -> Path:
    """The app's own files folder (created on use); read from the environment on every call so
    a test that points ``PATCHRANK_APP_TMP`` elsewhere gets its own folder."""
    root = Path(os.environ.get("PATCHRANK_APP_TMP") or Path(tempfile.gettempdir()) / "patchrank-app")
    root = root / "files"
    root.mkdir(parents=True, exist_ok=True)
    return root
