"""What every dataset PatchRank reads looks like (``datasets.open_dataset`` makes them)."""
from __future__ import annotations

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class Dataset:
    """Base: subclasses set ``ids``, ``classnames`` and implement ``image``/``label``."""

    spec: str = ""
    ids: list[str]
    classnames: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, i: int) -> Image.Image:
        raise NotImplementedError

    def label(self, i: int) -> int | None:
        return None

    @property
    def labels(self) -> np.ndarray | None:
        return None

    @property
    def masks(self) -> np.ndarray | None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, n={len(self)})"
