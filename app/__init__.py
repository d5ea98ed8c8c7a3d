"""PatchRank's Gradio app: layout, event wiring and rendering only; the engine is ``patchrank``.

``build_demo()`` returns the ``gr.Blocks``; ``app.py`` at the repository root launches it.
Everything the app writes goes under one temporary folder (``app.paths``), whose environment is
set here first, before any module imports gradio.
"""
from .paths import APP_TMP  # noqa: I001  (first: sets GRADIO_TEMP_DIR before gradio loads)
from .ui import CSS, THEME, build_demo, launch_kwargs

__all__ = ["build_demo", "launch_kwargs", "THEME", "CSS", "APP_TMP"]
