"""PatchRank's Gradio app: layout, event wiring and rendering only; the engine is ``patchrank``.

``build_demo()`` returns the ``gr.Blocks``; ``app.py`` at the repository root launches it.
Everything the app writes (exports, generated example scenes, gradio's upload/output cache) goes
under one temporary folder, ``$PATCHRANK_APP_TMP`` (default ``<system temp>/patchrank-app``).
"""
import os
import tempfile
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
APP_TMP = Path(os.environ.setdefault("PATCHRANK_APP_TMP", str(Path(tempfile.gettempdir()) / "patchrank-app")))
os.environ.setdefault("GRADIO_TEMP_DIR", str(APP_TMP / "gradio"))

from .ui import CSS, THEME, build_demo, launch_kwargs  # noqa: E402

__all__ = ["build_demo", "launch_kwargs", "THEME", "CSS", "APP_TMP"]
