"""What a person reads when something they asked for could not be done, in their words.

The engine's messages are written for a Python user (``load_model('ViT-B-32', pretrained=...)``,
``HF_HUB_OFFLINE``); on the page the same failure must say what happened and what to do with the
controls in front of them, in one short paragraph that fits a toast.
"""
from __future__ import annotations

from patchrank.errors import PatchRankError, WeightsUnavailable

import app.engine as engine

#: What to do about a model without a predictor (status line, panel, model switch).
TRAIN_HINT = ("Train one with `python -m patchrank train-predictor` for this model (a GPU is "
              "advised: golden rankings for a few thousand images come first), then upload the "
              "`.safetensors` file below.")


def local_route(arch: str = "") -> str:
    """How to load weights the app cannot download: the menu's local-checkpoint entry."""
    return ("choose **local checkpoint** in this menu and give the architecture"
            + (f" ({arch})" if arch else "")
            + " and the path of a weights file on the server (or `local-dir:/folder`)")


def model_load_failure(choice: str, arch: str, path: str, err: BaseException, current: str) -> str:
    """One paragraph: which model failed, why, what to do next; the current model stays."""
    keep = f"The current model ({current}) stays in use."
    if choice == "local":
        if isinstance(err, PatchRankError):
            why = str(err).rstrip(".")
        else:                                   # torch / safetensors errors: not weights it reads
            why = (f"{path.strip() or 'the file'} could not be read as "
                   f"{arch.strip() or 'open_clip'} weights ({type(err).__name__})")
        return (f"**Could not load the local checkpoint**: {why}. Fix the architecture or the "
                f"path above and press **Load model** again. {keep}")
    label = engine.MODEL_CHOICES.get(choice, (choice,))[0].split(" (")[0]
    if isinstance(err, WeightsUnavailable):
        arch_name = engine.MODEL_CHOICES.get(choice, ("", {}))[1].get("name", "")
        return (f"**Could not load {label}**: {err.problem.rstrip('.')}. Make the Hugging Face Hub "
                "reachable from this server (or start the app with HF_ENDPOINT set to a mirror) "
                f"and choose it again, or {local_route(arch_name)}. {keep}")
    return f"**Could not load {label}**: {str(err).strip() or type(err).__name__}. {keep}"
