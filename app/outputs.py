"""Handler results as gradio outputs: ``{key: value}`` dicts packed into the tuples an event
returns, drawn panels served as files, and the session id of a request.

``app.state`` returns results by output key so it never needs the UI; this module is the one
place that turns them into what gradio expects, so every listener does it the same way.
"""
from __future__ import annotations

import threading
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from patchrank.files import atomic_path

from .paths import app_tmp
from .state import RESULT_KEYS, SKIP, VIEW_KEYS, Out

#: Outputs of an image (re)analysis, in the order ``app.ui`` lists their components.
IMAGE_KEYS = RESULT_KEYS + ("right", "image")
#: Outputs of a model switch that come before the image's.
MODEL_KEYS = ("model_status", "labels", "model", "local_box", "golden_mode", "pred_menu", "layer")
#: Outputs of the ranker menus: what depends on the view, and the slider's minimum-keep line.
RANKER_KEYS = VIEW_KEYS + ("minkeep",)
#: What a re-analysis after a setting change redraws (the image input itself stays).
REANALYSIS_KEYS = RESULT_KEYS + ("right",)
#: Outputs of the opacity control: the two rankings.
OPACITY_KEYS = ("heat_l", "heat_r")


class PanelFiles:
    """Writes drawn panels as JPEG files for gradio to serve, under unique names and atomically.

    Handing gradio a PIL image makes it write ``<cache>/<content hash>/image.jpeg`` in place,
    truncating a file another user may be downloading when two users get the same picture (same
    image, same ratio); a path is instead copied into its cache atomically. Only the most recent
    ``keep`` files are kept here (gradio has its own copy by then)."""

    def __init__(self, keep: int = 256, quality: int = 90):
        self.keep, self.quality = keep, quality
        self._recent: deque[Path] = deque()
        self._lock = threading.Lock()

    def __call__(self, value):
        if not isinstance(value, Image.Image):
            return value
        path = app_tmp() / "panels" / f"{uuid.uuid4().hex}.jpg"
        with atomic_path(path) as tmp:
            value.convert("RGB").save(tmp, "JPEG", quality=self.quality)
        with self._lock:
            self._recent.append(path)
            old = [self._recent.popleft() for _ in range(max(0, len(self._recent) - self.keep))]
        for f in old:
            f.unlink(missing_ok=True)
        return path

    def all(self, values: tuple) -> tuple:
        return tuple(self(v) for v in values)


#: The one writer every listener serves panels through.
FILES = PanelFiles()


def pack(results: dict[str, Any], keys: tuple[str, ...], labels: bool = True) -> tuple:
    """``{key: value}`` -> one value per key, in order: missing or ``SKIP`` keys are left as they
    are, ``Out`` values also set their panel's label (``labels=False`` for the API: plain values),
    images become served files."""
    out = []
    for key in keys:
        v = results.get(key, SKIP)
        if v is SKIP:
            out.append(gr.skip())
        elif isinstance(v, Out):
            labelled = labels and v.label
            out.append(gr.update(value=FILES(v.value), label=v.label) if labelled else FILES(v.value))
        elif key.endswith("_box"):                 # a group shown or hidden
            out.append(gr.update(visible=bool(v)))
        else:
            out.append(FILES(v))
    return tuple(out)


def sid(request: gr.Request | None) -> str | None:
    """The session id of a request (gradio's session hash); None outside a request."""
    return getattr(request, "session_hash", None) if request is not None else None
