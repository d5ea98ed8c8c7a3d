"""The bundled model's shipped evaluation split (``assets/bundled/eval.npz``): 1,200 scenes of
Fashion-MNIST *test* items (never used in training), stored as JPEG bytes with labels and the
per-patch coverage of the target object, so the model card's object checks can be rerun.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

from .bundled import BUNDLED_DIR, require_asset

#: The scenes of ``eval.npz`` are ``SceneGenerator("test", seed=EVAL_SEED)``'s first 1,200 (a test
#: regenerates a few and compares).
EVAL_SEED = 1


@dataclass
class EvalSplit:
    """The shipped evaluation split: PIL images, int labels, class names, target coverage [N,P]."""
    images: list
    labels: np.ndarray
    classnames: tuple
    masks: np.ndarray
    ids: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def bundled_eval(limit: int | None = None) -> EvalSplit:
    """The bundled model's evaluation split (test scenes never used in training)."""
    from PIL import Image
    z = np.load(require_asset(BUNDLED_DIR / "eval.npz"), allow_pickle=False)
    n = len(z["labels"]) if limit is None else min(limit, len(z["labels"]))
    jpeg, off = z["jpeg"], z["offsets"]
    images = []
    for i in range(n):
        im = Image.open(io.BytesIO(jpeg[off[i]:off[i + 1]].tobytes()))
        im.load()
        images.append(im.convert("RGB"))
    return EvalSplit(images, z["labels"][:n], tuple(str(c) for c in z["classnames"]),
                     z["coverage"][:n].astype(np.float32), [f"bundled-eval/{i:05d}" for i in range(n)])
