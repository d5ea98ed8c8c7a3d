"""Scene generator for the bundled model: one tinted Fashion-MNIST item on a cluttered background.

Why this domain: we need a CLIP that can be trained on 2 CPU cores in about two hours *and* whose
evidence lives in known patches, so that "does the ranking keep the object?" is measurable.
Each scene is 112x112 (a 14x14 grid of 8-pixel patches, like ViT-B/16's 14x14 at 224) with
exactly one target item; clutter and an optional distractor shape are never of a target class.

Design choices (measured on earlier versions of the scenes; the model card says more):
- 6 classes. T-shirt, pullover, coat and shirt are merged into "top" (indistinguishable at
  5-9 patches wide); "dress" is left out (its confusion with "top" was the largest error).
- Items 40-72 px, random horizontal flip; 0-4 faint clutter shapes; at most one distractor shape
  in a tint colour drawn *under* the target, so the target mask stays exact.
- Captions name class + colour only (size/position words soaked up the contrastive loss).
- Every scene goes through a JPEG round trip (quality 90) as the last rendering step, so the
  shipped evaluation split (stored as JPEG to fit in a few MB) is exactly what the generator
  makes, and training sees the same distribution.

Deterministic: scene ``i`` of a split with seed ``s`` depends only on ``(s, i)``.
"""
from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 112
PATCH = 8
GRID = SIZE // PATCH

#: Fashion-MNIST label -> our class id (labels absent here are not used).
FMNIST_TO_CLASS = {0: 0, 2: 0, 4: 0, 6: 0, 1: 1, 5: 2, 7: 3, 8: 4, 9: 5}
CLASSNAMES = ("top", "pair of trousers", "sandal", "sneaker", "bag", "ankle boot")

COLOURS = {
    "red": (215, 38, 38),
    "orange": (240, 135, 25),
    "yellow": (235, 212, 35),
    "green": (40, 165, 60),
    "cyan": (35, 195, 205),
    "blue": (40, 75, 220),
    "purple": (135, 55, 200),
    "pink": (240, 105, 180),
}
COLOUR_NAMES = tuple(COLOURS)
_TINTS = np.array(list(COLOURS.values()), dtype=np.float32) / 255.0

#: Caption templates. The first is exactly the zero-shot prompt of the bundled model.
TEMPLATES = (
    "a photo of a {c}.",
    "a photo of a {k} {c}.",
    "a {k} {c}.",
    "a picture of a {k} {c}.",
    "a {c} in {k}.",
    "a photo of the {k} {c}.",
)
ZERO_SHOT_TEMPLATE = "a photo of a {}."

FMNIST_DIR = Path(os.environ.get("PATCHRANK_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
JPEG_QUALITY = 90


@dataclass
class Scene:
    image: np.ndarray      # [112,112,3] uint8 (after the JPEG round trip)
    jpeg: bytes            # the encoded scene
    label: int             # class id into CLASSNAMES
    colour: int            # index into COLOUR_NAMES
    caption: str
    mask: np.ndarray       # [112,112] bool, target pixels (alpha > 0.5)
    coverage: np.ndarray   # [196] float32, fraction of each patch covered by the target
    names_colour: bool     # the caption names the colour ("a red bag.") or not ("a photo of a bag.")


def load_items(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST items of the used classes: (images [N,28,28] uint8, class ids [N])."""
    prefix = {"train": "train", "test": "t10k"}[split]
    img_path = FMNIST_DIR / f"{prefix}-images-idx3-ubyte.gz"
    lab_path = FMNIST_DIR / f"{prefix}-labels-idx1-ubyte.gz"
    if not img_path.exists():
        raise FileNotFoundError(
            f"Fashion-MNIST not found at {FMNIST_DIR}. Install it with "
            "`apt-get install dataset-fashion-mnist` (Debian, MIT licence) or set "
            "PATCHRANK_FMNIST_DIR to a folder holding the four *-ubyte.gz files.")
    with gzip.open(img_path, "rb") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(lab_path, "rb") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    keep = np.isin(labels, list(FMNIST_TO_CLASS))
    classes = np.array([FMNIST_TO_CLASS[int(v)] for v in labels[keep]], dtype=np.int64)
    return images[keep], classes


class SceneGenerator:
    """Renders scenes from one Fashion-MNIST split; class-balanced, deterministic by (seed, index)."""

    def __init__(self, split: str = "train", seed: int = 0, items=None):
        self.split, self.seed = split, seed
        self.images, self.classes = items if items is not None else load_items(split)
        self.pools = [np.flatnonzero(self.classes == c) for c in range(len(CLASSNAMES))]
        if any(len(p) == 0 for p in self.pools):
            raise ValueError("every class needs at least one item")
        yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
        self._yy, self._xx = yy, xx

    def __call__(self, index: int) -> Scene:
        rng = np.random.default_rng([self.seed, index, 7])
        label = int(rng.integers(len(CLASSNAMES)))
        item = self.images[self.pools[label][rng.integers(len(self.pools[label]))]]
        return self._render(rng, item, label)

    def batch(self, indices) -> list[Scene]:
        return [self(int(i)) for i in indices]

    # -- rendering ---------------------------------------------------------------------------
    def _background(self, rng) -> np.ndarray:
        kind = rng.integers(3)
        if kind == 0:      # low-resolution colour noise, upsampled
            g = int(rng.integers(2, 7))
            low = (rng.random((g, g, 3)) * 255).astype(np.uint8)
            bg = np.asarray(Image.fromarray(low).resize((SIZE, SIZE), Image.BILINEAR), np.float32) / 255
        elif kind == 1:    # two-colour linear gradient at a random angle
            a, b = rng.random(3), rng.random(3)
            t = rng.uniform(0, 2 * np.pi)
            proj = (np.cos(t) * self._xx + np.sin(t) * self._yy) / SIZE
            proj = (proj - proj.min()) / (np.ptp(proj) + 1e-6)
            bg = a * (1 - proj[..., None]) + b * proj[..., None]
        else:              # flat colour with mild pixel noise
            bg = rng.random(3) + rng.normal(0, 0.03, (SIZE, SIZE, 3))
        bg = np.clip(bg, 0, 1).astype(np.float32)
        gray = bg.mean(-1, keepdims=True)
        bg = 0.4 * bg + 0.6 * gray                 # desaturate 60 %: tints must stand out
        return 0.3 + 0.4 * bg                      # compress to [0.3, 0.7]

    def _shape(self, rng, r_lo: float, r_hi: float) -> np.ndarray:
        cx, cy = rng.uniform(0, SIZE, 2)
        r = rng.uniform(r_lo, r_hi)
        dx, dy = self._xx - cx, self._yy - cy
        kind = rng.integers(4)
        if kind == 0:
            m = dx * dx + dy * dy <= r * r
        elif kind == 1:
            m = (np.abs(dx) <= r) & (np.abs(dy) <= r * rng.uniform(0.3, 1.0))
        elif kind == 2:
            m = (dy <= r * 0.6) & (dy >= -r) & (np.abs(dx) <= (dy + r) * 0.6)
        else:
            d2 = dx * dx + dy * dy
            m = (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
        return m

    def _render(self, rng, item: np.ndarray, label: int) -> Scene:
        img = self._background(rng)
        for _ in range(int(rng.integers(0, 5))):                 # faint clutter
            m = self._shape(rng, 2.5, 7.0)
            img[m] = 0.6 * img[m] + 0.4 * rng.random(3).astype(np.float32)
        if rng.random() < 0.5:                                   # one distractor shape, under the target
            m = self._shape(rng, 6.0, 15.0)
            img[m] = _TINTS[rng.integers(len(_TINTS))]
        size = int(rng.integers(40, 73))
        it = Image.fromarray(item).resize((size, size), Image.BILINEAR)
        g = np.asarray(it, np.float32) / 255
        if rng.random() < 0.5:
            g = g[:, ::-1]
        alpha = np.clip((g - 0.03) / 0.12, 0, 1)
        colour = int(rng.integers(len(_TINTS)))
        shade = _TINTS[colour] * (0.35 + 0.65 * g[..., None])
        y0, x0 = (int(v) for v in rng.integers(0, SIZE - size + 1, 2))
        region = img[y0:y0 + size, x0:x0 + size]
        a = alpha[..., None]
        img[y0:y0 + size, x0:x0 + size] = region * (1 - a) + shade * a
        mask = np.zeros((SIZE, SIZE), bool)
        mask[y0:y0 + size, x0:x0 + size] = alpha > 0.5
        raw = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(raw).save(buf, "JPEG", quality=JPEG_QUALITY)
        jpeg = buf.getvalue()
        image = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
        template = TEMPLATES[int(rng.integers(len(TEMPLATES)))]
        caption = template.format(c=CLASSNAMES[label], k=COLOUR_NAMES[colour])
        coverage = mask.reshape(GRID, PATCH, GRID, PATCH).mean((1, 3)).reshape(-1).astype(np.float32)
        return Scene(image, jpeg, label, colour, caption, mask, coverage, "{k}" in template)
