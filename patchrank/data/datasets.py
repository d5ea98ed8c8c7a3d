"""``open_dataset(spec)``: the image sets the CLI jobs (golden, sweeps, predictor training) read.

Specs (tried in order by the handlers in ``SPEC_HANDLERS``; add a handler to support a layout):
- ``bundled-eval``: the bundled model's shipped evaluation split (test scenes, labels, masks).
- ``bundled-val:N``: N training-generator scenes from ``VAL_OFFSET`` on, which nothing trains on:
  a validation set for choosing hyperparameters (tokens, predictor) off the evaluation split.
- ``bundled-train:N``: the first N scenes of ``SceneGenerator("train", seed=0)``, the generator the
  bundled model trained on. Predictor training ranks scenes from this *train* split only, never
  the evaluation split, so predictor evaluation stays on unseen images. Scenes are rendered on
  demand (about 1 ms each), deterministic by index; ids are ``bundled-train/000123``.
- a folder path: class subfolders of images (labels = sorted folder index, class names = folder
  names, or one name per line in ``classnames.txt`` in the same sorted order), or a flat folder
  of images (unlabelled). Ids are paths relative to the folder, with ``/``.

Every dataset has ``ids``, ``len()``, ``image(i)`` (RGB PIL), ``label(i)``, ``labels`` (int array
or None), ``classnames`` (tuple or None) and ``masks`` (per-patch target coverage [N,P] or None).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import PatchRankError
from ..eval_split import bundled_eval
from .base import IMAGE_EXTENSIONS, Dataset
from .coop import coop_spec
from . import scenes as S
from .images import load_image

TRAIN_SEED = 0
#: ``bundled-val:N`` scenes start here: beyond every scene the bundled CLIP, its predictor or its
#: tokens train on (train-clip reads steps x batch scenes from 0), so hyperparameters can be
#: chosen without touching the evaluation split.
VAL_OFFSET = 10_000_000


class BundledEval(Dataset):
    """The shipped evaluation split (``patchrank.eval_split.bundled_eval``)."""

    def __init__(self, limit: int | None = None):
        self._split = bundled_eval(limit)
        self.spec = "bundled-eval"
        self.ids = list(self._split.ids)
        self.classnames = tuple(self._split.classnames)

    def image(self, i: int) -> Image.Image:
        return self._split.images[i]

    def label(self, i: int) -> int:
        return int(self._split.labels[i])

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self._split.labels)

    @property
    def masks(self) -> np.ndarray:
        return self._split.masks


class BundledTrain(Dataset):
    """The first ``n`` training scenes, rendered on demand (see the module docstring);
    ``name="bundled-val"`` starts at ``VAL_OFFSET`` instead: scenes no training run reaches."""

    def __init__(self, n: int, name: str = "bundled-train"):
        self._gen = S.SceneGenerator("train", seed=TRAIN_SEED)
        self._offset = VAL_OFFSET if name == "bundled-val" else 0
        self.spec = f"{name}:{n}"
        self.ids = [f"{name}/{i:06d}" for i in range(n)]
        self.classnames = tuple(S.CLASSNAMES)
        self._all: tuple[np.ndarray, np.ndarray] | None = None
        self._last = None

    def _scene(self, i: int):
        if not 0 <= i < len(self.ids):
            raise IndexError(i)
        if self._last is None or self._last[0] != i:   # image(i) then label(i) renders once
            self._last = (i, self._gen(self._offset + i))
        return self._last[1]

    def image(self, i: int) -> Image.Image:
        return Image.fromarray(self._scene(i).image)

    def label(self, i: int) -> int:
        return int(self._scene(i).label)

    def _render_all(self) -> tuple[np.ndarray, np.ndarray]:
        if self._all is None:
            sc = [self._gen(self._offset + i) for i in range(len(self.ids))]
            self._all = (np.array([s.label for s in sc], np.int64),
                         np.stack([s.coverage for s in sc]).astype(np.float32))
        return self._all

    @property
    def labels(self) -> np.ndarray:
        return self._render_all()[0]

    @property
    def masks(self) -> np.ndarray:
        return self._render_all()[1]


class ImageFolder(Dataset):
    """Class subfolders of images (labelled) or a flat folder of images (unlabelled)."""

    def __init__(self, root: str | os.PathLike):
        root = Path(root)
        self.root = root
        self.spec = str(root)
        subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
        flat = _images_in(root)
        if subdirs and flat:
            raise PatchRankError(f"{root} mixes images ({flat[0].name}, ...) with class folders "
                                 f"({subdirs[0].name}, ...); use one layout")
        self._paths: list[Path] = []
        self._labels: list[int] | None = None
        if subdirs:
            if len(subdirs) == 1:
                raise PatchRankError(f"{root} has a single class folder ({subdirs[0].name}); "
                                     "zero-shot labels need at least two classes. For unlabelled "
                                     "images, put them directly in the folder")
            self._labels = []
            for c, d in enumerate(subdirs):
                files = _images_in(d)
                if not files:
                    raise PatchRankError(f"class folder {d} holds no images (extensions: "
                                         f"{', '.join(IMAGE_EXTENSIONS)})")
                self._paths += files
                self._labels += [c] * len(files)
            names = [d.name.replace("_", " ") for d in subdirs]
        elif flat:
            self._paths, names = flat, None
        else:
            raise PatchRankError(f"{root} holds no images and no class folders")
        listed = read_classnames(root / "classnames.txt")
        if listed is not None:
            if names is not None and len(listed) != len(names):
                raise PatchRankError(f"{root / 'classnames.txt'} lists {len(listed)} names but "
                                     f"there are {len(names)} class folders")
            names = listed
        self.classnames = tuple(names) if names is not None else None
        self.ids = [p.relative_to(root).as_posix() for p in self._paths]

    def image(self, i: int) -> Image.Image:
        return load_image(self._paths[i])

    def label(self, i: int) -> int | None:
        return None if self._labels is None else self._labels[i]

    @property
    def labels(self) -> np.ndarray | None:
        return None if self._labels is None else np.asarray(self._labels[:len(self.ids)], np.int64)


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_classnames(path: Path) -> list[str] | None:
    """Class names from a ``classnames.txt`` (one per line; None if there is no such file)."""
    if not path.is_file():
        return None
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise PatchRankError(f"cannot read {path}: {e}") from None
    names = [ln for ln in lines if ln]
    if not names:
        raise PatchRankError(f"{path} is empty; write one class name per line")
    return names


# -- spec dispatch ------------------------------------------------------------------------------
def _bundled_spec(spec: str, limit: int | None = None) -> Dataset | None:
    if spec == "bundled-eval":
        return BundledEval(limit)
    if spec.startswith("bundled-eval:"):
        n = _count(spec)
        return BundledEval(n if limit is None else min(n, limit))
    for name in ("bundled-train", "bundled-val"):
        if spec.startswith(name):
            if not spec.startswith(name + ":"):
                raise PatchRankError(f"{name} needs a scene count: {name}:N (e.g. {name}:2000)")
            n = _count(spec)
            return BundledTrain(n if limit is None else min(n, limit), name)
    return None


def _count(spec: str) -> int:
    tail = spec.split(":", 1)[1]
    try:
        n = int(tail)
    except ValueError:
        n = 0
    if n < 1:
        raise PatchRankError(f"{spec!r}: the count after ':' must be a positive integer")
    return n


def _folder_spec(spec: str, limit: int | None = None) -> Dataset | None:
    p = Path(spec).expanduser()
    if p.is_dir():
        return ImageFolder(p)
    return None


#: Handlers tried in order: ``handler(spec, limit)`` returns a Dataset, None (not mine), or
#: raises PatchRankError. ``limit`` is a hint (load no more than that many items); open_dataset
#: truncates ``ids`` itself, so handlers may ignore it.
Handler = Callable[[str, "int | None"], "Dataset | None"]
SPEC_HANDLERS: list[Handler] = [_bundled_spec, coop_spec, _folder_spec]


def register_spec(handler: Handler, first: bool = True) -> None:
    """Add a spec handler (e.g. a split-file layout); ``first`` lets it see specs before folders."""
    if handler not in SPEC_HANDLERS:
        SPEC_HANDLERS.insert(0 if first else len(SPEC_HANDLERS), handler)


def open_dataset(spec: str, limit: int | None = None) -> Dataset:
    """A Dataset from a spec (module docstring); ``limit`` keeps the first N items only."""
    spec = str(spec).strip()
    if not spec:
        raise PatchRankError("empty dataset spec: give bundled-eval, bundled-train:N or a folder")
    if limit is not None and (isinstance(limit, bool) or int(limit) < 1):
        raise PatchRankError(f"limit must be a positive number of images, got {limit!r}")
    for handler in SPEC_HANDLERS:
        ds = handler(spec, limit)
        if ds is not None:
            if limit is not None and len(ds.ids) > limit:
                ds.ids = ds.ids[:int(limit)]
            return ds
    raise PatchRankError(f"dataset {spec!r} not found: give bundled-eval, bundled-train:N, or a "
                         "folder of images (class subfolders for labels)")

