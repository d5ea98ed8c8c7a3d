"""Does an image look like the scenes the bundled model was trained on?

The bundled model knows one thing: a single tinted clothing item (6 classes) on a blurred,
greyish, cluttered background, 112x112 pixels (``patchrank.data.scenes``). Shown a photo, it
still answers with one of its 6 classes, often confidently: on the 11 real photos in
``assets/examples`` its top-1 probability ranges from 0.48 to 0.98 (the rocket 0.98, the
cameraman 0.95), while its evaluation scenes go as low as 0.46. So the model's own confidence
cannot tell a photo from a scene, and nearest-neighbour similarity of embeddings to the
evaluation scenes does not either (the rocket photo scores 0.96, above 95% of the scenes).

What does separate them is plain image statistics at the model's input size, because the scenes
are made by one generator: a photo has far more texture (few "flat" pixels), and a different
saturation or contrast. ``check`` measures three numbers on the model's view of the image
(resized to 112x112):

- ``flat``: share of pixels whose 4-neighbour Laplacian of the grey level is below 0.02
  (scenes: mostly smooth background; photos: edges and texture everywhere);
- ``saturation``: median HSV saturation (scenes: greyish background, one tinted item);
- ``contrast``: standard deviation of all pixel values in [0, 1].

An image is a scene when all three lie inside the range the shipped evaluation split
(1,200 scenes no training used) spans, widened by 10% of that range on each side. By
construction every evaluation scene passes; all 11 example photos fail on at least one number
(most on ``flat``: 0.30-0.70 for the photos vs 0.66-0.95 for the scenes; the dahlia and the
rocket on saturation). The ranges are computed from the shipped split at first use (about 1 s)
and kept, so they follow the split if the bundled model is retrained.

This says "outside what the model was trained on", not "what the model will get wrong": the
app uses it only to say plainly what the bundled model knows and to offer a real CLIP.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .eval_split import bundled_eval

#: The bundled scenes' size (``patchrank.data.scenes.SIZE``): statistics are taken at it.
SIZE = 112
#: Laplacian magnitude below which a pixel counts as flat (grey levels in [0, 1]).
FLAT_BELOW = 0.02
#: How far outside the evaluation split's range a statistic may fall, as a share of the range.
MARGIN = 0.10
NAMES = {"flat": "smooth (untextured) pixels", "saturation": "colour saturation",
         "contrast": "contrast"}


@dataclass(frozen=True)
class SceneCheck:
    """The verdict and why: ``stats`` of the image, ``ranges`` of the scenes, the stats outside."""
    is_scene: bool
    stats: dict[str, float]
    ranges: dict[str, tuple[float, float]]
    outside: tuple[str, ...]

    def reason(self) -> str:
        """One clause naming what is unlike the scenes, e.g. "its smooth (untextured) pixels
        (31%; the scenes have 66-95%)"."""
        parts = []
        for k in self.outside:
            lo, hi = self.ranges[k]
            parts.append(f"{NAMES[k]} ({self.stats[k]:.0%}; the scenes have {lo:.0%}-{hi:.0%})"
                         if k == "flat" else
                         f"{NAMES[k]} ({self.stats[k]:.2f}; the scenes have {lo:.2f}-{hi:.2f})")
        return "its " + " and ".join(parts) if parts else "nothing"


def image_stats(image: Image.Image | np.ndarray) -> dict[str, float]:
    """The three statistics of ``image`` (PIL image or HxWx3 uint8 array) at 112x112."""
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    im = im.convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
    a = np.asarray(im, dtype=np.float32) / 255.0
    g = a.mean(axis=2)
    lap = np.abs(4 * g[1:-1, 1:-1] - g[:-2, 1:-1] - g[2:, 1:-1] - g[1:-1, :-2] - g[1:-1, 2:])
    sat = np.asarray(im.convert("HSV"), dtype=np.float32)[..., 1] / 255.0
    return {"flat": float((lap < FLAT_BELOW).mean()), "saturation": float(np.median(sat)),
            "contrast": float(a.std())}


@functools.lru_cache(maxsize=1)
def scene_ranges() -> dict[str, tuple[float, float]]:
    """Each statistic's (low, high) over the shipped evaluation split, widened by ``MARGIN``."""
    stats = [image_stats(im) for im in bundled_eval().images]
    out = {}
    for k in NAMES:
        v = np.array([s[k] for s in stats])
        lo, hi = float(v.min()), float(v.max())
        pad = MARGIN * (hi - lo)
        out[k] = (max(0.0, lo - pad), min(1.0, hi + pad))
    return out


def check(image: Image.Image | np.ndarray) -> SceneCheck:
    """Whether ``image`` looks like a bundled-model scene (see the module docstring)."""
    stats, ranges = image_stats(image), scene_ranges()
    outside = tuple(k for k in NAMES if not ranges[k][0] <= stats[k] <= ranges[k][1])
    return SceneCheck(not outside, stats, ranges, outside)
