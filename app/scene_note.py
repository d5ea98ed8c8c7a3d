"""On the bundled model, a photo that is not one of its scenes gets a plain note and a one-click
switch to a real CLIP.

The bundled model knows six clothing classes in synthetic scenes and answers with one of them
for anything (a person comes out as "top 47 %"). Whether an image is such a scene is the
engine's decision (``patchrank.scene_check``: image statistics against the shipped evaluation
scenes, on the part of the image the model sees); this module words it and offers the switch,
which goes through the normal model-switch path (``events.on_real_clip``); the note and button
are laid out by ``app.ui``.
"""
from __future__ import annotations

from typing import Any

from patchrank import scene_check

import app.engine as engine

#: The real CLIP the button loads: ViT-B-16 on Spaces (preloaded there), else ViT-B-32, the
#: cheapest real CLIP on a CPU (7x7 = 49 patches: a quarter of ViT-B-16's golden search).
REAL_CLIP = engine.SPACES_DEFAULT if engine.ON_SPACES else "ViT-B-32/openai"
#: Size of the weights file the button downloads the first time (OpenAI ViT-B, float32).
REAL_CLIP_MB = 600


def outputs(a: Any) -> dict[str, Any]:
    """``{"scene_note": markdown, "scene_box": shown}`` for an analysis: shown only when the
    model is the bundled one and the image is not like its scenes."""
    if a.model.name != "bundled":
        return {"scene_note": "", "scene_box": False}
    verdict = scene_check.check(a.view)
    if verdict.is_scene:
        return {"scene_note": "", "scene_box": False}
    classes = ", ".join(a.model.classnames or ())
    md = (f"**This image is not like anything the bundled model knows.** It is a small CLIP "
          f"trained only on synthetic scenes: one clothing item ({classes}) on a blurred, greyish "
          f"background. This image differs in {verdict.reason()}, so its top-5 and rankings say "
          f"little about it. For real photos, switch to a real CLIP ({REAL_CLIP}; about "
          f"{REAL_CLIP_MB} MB downloaded the first time).")
    return {"scene_note": md, "scene_box": True}


def status_lines(a: Any) -> list[str]:
    """One line for the status (what ``/analyze`` returns) when the note applies."""
    if a.model.name != "bundled" or scene_check.check(a.view).is_scene:
        return []
    return [f"**Not a scene**: the bundled model knows only {len(a.model.classnames or ())} clothing "
            f"classes in synthetic scenes; for a photo, load a real CLIP ({REAL_CLIP})."]
