"""CoOp split-file datasets: the layout the paper's benchmarks use (Zhou et al., CoOp, IJCV 2022).

A CoOp data root holds one folder per dataset; each folder holds its images and a split file
``split_zhou_<Name>.json`` = ``{"train": [[path, label, classname], ...], "val": [...], "test": [...]}``
with paths relative to the dataset's image folder (CoOp's DATASETS.md)::

    ROOT/caltech-101/101_ObjectCategories/<class>/<img>.jpg   + split_zhou_Caltech101.json
    ROOT/oxford_pets/images/<img>.jpg                         + split_zhou_OxfordPets.json
    ROOT/oxford_flowers/jpg/<img>.jpg                         + split_zhou_OxfordFlowers.json
    ROOT/food-101/images/<class>/<img>.jpg                    + split_zhou_Food101.json
    ROOT/dtd/images/<class>/<img>.jpg                         + split_zhou_DescribableTextures.json
    ROOT/ucf101/UCF-101-midframes/<class>/<img>.jpg           + split_zhou_UCF101.json
    ROOT/eurosat/2750/<class>/<img>.jpg                       + split_zhou_EuroSAT.json
    ROOT/sun397/SUN397/<path>.jpg                             + split_zhou_SUN397.json
    ROOT/stanford_cars/cars_{train,test}/<img>.jpg            + split_zhou_StanfordCars.json
    ROOT/fgvc_aircraft/images/<id>.jpg + variants.txt + images_variant_{train,val,test}.txt
    ROOT/imagenet/images/{train,val}/<wnid>/<img> + classnames.txt ("<wnid> <name>" per line;
                                                    the test split is val, as in CoOp)

Class names come from the split file (CoOp's own, e.g. "face" for Caltech's "Faces") with "_"
shown as spaces, as CoOp's zero-shot CLIP does. Each dataset carries the one hand-written
prompt CoOp's ``CUSTOM_TEMPLATES`` uses for it (as the paper's code does; docs/paper.md).

Specs for ``open_dataset``: a dataset folder that holds a CoOp split file, optionally with
``@train``, ``@val``, ``@test`` (default) or ``@all`` appended, e.g. ``/data/coop/caltech-101@test``.
``register()`` adds the handler to ``patchrank.data.datasets``; ``open_coop(root, "caltech101")``
opens one by its short key under a data root.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import PatchRankError
from .base import Dataset
from .images import load_image

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CoopInfo:
    """Where a CoOp dataset lives under the root, and its zero-shot prompt."""
    key: str            # our short name (CLI)
    title: str          # column header of the paper's table
    folder: str         # dataset folder under the root
    image_dir: str      # paths in the split file are relative to folder/image_dir
    split_file: str | None   # None: FGVC-Aircraft text lists / ImageNet folders
    template: str


#: CoOp's dataset folders and CUSTOM_TEMPLATES (the prompts the paper's code uses), keyed by our short names.
DATASETS: dict[str, CoopInfo] = {i.key: i for i in (
    CoopInfo("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories",
             "split_zhou_Caltech101.json", "a photo of a {}."),
    CoopInfo("oxford_pets", "OxfordPets", "oxford_pets", "images",
             "split_zhou_OxfordPets.json", "a photo of a {}, a type of pet."),
    CoopInfo("oxford_flowers", "Flowers102", "oxford_flowers", "jpg",
             "split_zhou_OxfordFlowers.json", "a photo of a {}, a type of flower."),
    CoopInfo("food101", "Food101", "food-101", "images",
             "split_zhou_Food101.json", "a photo of {}, a type of food."),
    CoopInfo("fgvc_aircraft", "FGVCAircraft", "fgvc_aircraft", "images", None,
             "a photo of a {}, a type of aircraft."),
    CoopInfo("dtd", "DTD", "dtd", "images", "split_zhou_DescribableTextures.json", "{} texture."),
    CoopInfo("ucf101", "UCF101", "ucf101", "UCF-101-midframes",
             "split_zhou_UCF101.json", "a photo of a person doing {}."),
    CoopInfo("imagenet", "ImageNet", "imagenet", "images", None, "a photo of a {}."),
    CoopInfo("stanford_cars", "StanfordCars", "stanford_cars", "",
             "split_zhou_StanfordCars.json", "a photo of a {}."),
    CoopInfo("sun397", "SUN397", "sun397", "SUN397", "split_zhou_SUN397.json", "a photo of a {}."),
    CoopInfo("eurosat", "EuroSAT", "eurosat", "2750", "split_zhou_EuroSAT.json",
             "a centered satellite photo of {}."),
)}
#: The eight columns of the paper's README table, in its order.
PAPER_DATASETS = ("caltech101", "oxford_pets", "oxford_flowers", "food101", "fgvc_aircraft",
                  "dtd", "ucf101", "imagenet")


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


_ALIASES = {_norm(a): k for k, i in DATASETS.items()
            for a in (k, i.title, i.folder, (i.split_file or "")[len("split_zhou_"):-len(".json")]) if a}
_ALIASES.update({_norm(a): k for a, k in (
    ("caltech", "caltech101"), ("pets", "oxford_pets"), ("flowers", "oxford_flowers"),
    ("aircraft", "fgvc_aircraft"), ("cars", "stanford_cars"), ("sun", "sun397"))})


def dataset_info(name: str) -> CoopInfo:
    """The CoopInfo of a dataset key or alias ("caltech101", "Caltech101", "caltech-101", ...)."""
    key = _ALIASES.get(_norm(name))
    if key is None:
        raise PatchRankError(f"unknown CoOp dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[key]


def detect(folder: Path) -> CoopInfo | None:
    """Which CoOp dataset a folder is, from the split file (or list files) it holds; None if none."""
    if not folder.is_dir():
        return None
    for info in DATASETS.values():
        if info.split_file and (folder / info.split_file).is_file():
            return info
    if (folder / "variants.txt").is_file() and any(
            (folder / f"images_variant_{s}.txt").is_file() for s in SPLITS):
        return DATASETS["fgvc_aircraft"]
    if (folder / "classnames.txt").is_file() and (folder / "images" / "val").is_dir():
        return DATASETS["imagenet"]
    splits = sorted(folder.glob("split_zhou_*.json"))
    if splits:   # a split file of a dataset we have no entry for: read it from the folder itself
        name = splits[0].name[len("split_zhou_"):-len(".json")]
        return CoopInfo(_norm(name), name, folder.name, "", splits[0].name, "a photo of a {}.")
    return None


class CoopDataset(Dataset):
    """One split of a CoOp dataset. ``ids`` are image paths relative to the dataset folder, so a
    golden-ranking folder made from one split serves every split that holds the same image."""

    def __init__(self, folder: str | Path, split: str = "test", info: CoopInfo | None = None,
                 check_files: bool = True):
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise PatchRankError(f"CoOp dataset folder not found: {folder}")
        info = info or detect(folder)
        if info is None:
            raise PatchRankError(f"{folder} holds no CoOp split file (split_zhou_<Name>.json, or "
                                 "FGVC-Aircraft's variants.txt + images_variant_<split>.txt, or "
                                 "ImageNet's classnames.txt + images/val)")
        if split not in SPLITS + ("all",):
            raise PatchRankError(f"split must be one of {', '.join(SPLITS)} or all, got {split!r}")
        self.info, self.folder, self.split = info, folder, split
        self.name = info.key
        self.spec = f"{folder}@{split}"
        self.templates = (info.template,)
        if info.key == "fgvc_aircraft" and info.split_file is None:
            items, names = _read_aircraft(folder, split)
        elif info.key == "imagenet" and info.split_file is None:
            items, names = _read_imagenet(folder, split)
        else:
            items, names = _read_split_file(folder / info.split_file, split)
        if len(names) < 2:
            raise PatchRankError(f"{self._source()} names {len(names)} class(es); zero-shot "
                                 "accuracy needs at least two")
        if not items:
            raise PatchRankError(f"{self._source()} lists no images for split {split!r}")
        base = folder / info.image_dir if info.image_dir else folder
        self._paths = [base / p for p, _ in items]
        self._labels = np.asarray([y for _, y in items], np.int64)
        self.classnames = tuple(n.replace("_", " ").strip() for n in names)
        self.ids = [p.relative_to(folder).as_posix() for p in self._paths]
        if check_files:
            missing = [p for p in self._paths if not p.is_file()]
            if missing:
                raise PatchRankError(f"{missing[0]} is missing ({len(missing)} of {len(self._paths)} "
                                     f"images listed by {self._source()} are); check the CoOp "
                                     f"layout: images go under {base}")

    def _source(self) -> str:
        return str(self.folder / (self.info.split_file or ""))

    def image(self, i: int) -> Image.Image:
        return load_image(self._paths[i])

    def label(self, i: int) -> int:
        return int(self._labels[i])

    @property
    def labels(self) -> np.ndarray:
        return self._labels[:len(self.ids)]


def _read_split_file(path: Path, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """(items of ``split``, class names by label) from a ``split_zhou_*.json``. Class names are
    gathered over all splits, so a split missing a class still gets the right label count."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PatchRankError(f"cannot read split file {path}: {e}") from None
    if not isinstance(data, dict) or not any(s in data for s in SPLITS):
        raise PatchRankError(f"{path} is not a CoOp split file (expected keys {', '.join(SPLITS)})")
    if split != "all" and split not in data:
        raise PatchRankError(f"{path} has no {split!r} split (it has {', '.join(sorted(data))})")
    names: dict[int, str] = {}
    chosen: list[tuple[str, int]] = []
    for s in SPLITS:
        for j, entry in enumerate(data.get(s, [])):
            if (not isinstance(entry, (list, tuple)) or len(entry) != 3 or not isinstance(entry[0], str)
                    or isinstance(entry[1], bool) or not isinstance(entry[1], int)
                    or not isinstance(entry[2], str) or entry[1] < 0):
                raise PatchRankError(f"{path}: {s}[{j}] must be [path, label, classname], got {entry!r}")
            rel, y, cname = entry
            if names.setdefault(y, cname) != cname:
                raise PatchRankError(f"{path}: label {y} is named both {names[y]!r} and {cname!r}")
            if split in (s, "all"):
                chosen.append((rel, y))
    n = max(names) + 1 if names else 0
    gaps = [y for y in range(n) if y not in names]
    if gaps:
        raise PatchRankError(f"{path}: labels must run 0..{n - 1}; no image has label {gaps[0]}")
    return chosen, [names[y] for y in range(n)]


def _read_lines(path: Path) -> list[str]:
    try:
        return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise PatchRankError(f"cannot read {path}: {e}") from None


def _read_aircraft(folder: Path, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """FGVC-Aircraft as CoOp reads it: class names from variants.txt (line order = label), images
    from ``images_variant_<split>.txt`` lines "<image id> <variant>" -> images/<id>.jpg."""
    names = _read_lines(folder / "variants.txt")
    lab = {n: i for i, n in enumerate(names)}
    items = []
    for s in (SPLITS if split == "all" else (split,)):
        path = folder / f"images_variant_{s}.txt"
        if not path.is_file():
            raise PatchRankError(f"{path} is missing (FGVC-Aircraft lists each split's images there)")
        for no, line in enumerate(_read_lines(path), 1):
            parts = line.split(" ", 1)
            if len(parts) != 2 or parts[1] not in lab:
                raise PatchRankError(f"{path}, line {no}: expected '<image id> <variant from "
                                     f"variants.txt>', got {line!r}")
            items.append((parts[0] + ".jpg", lab[parts[1]]))
    return items, names


def _read_imagenet(folder: Path, split: str) -> tuple[list[tuple[str, int]], list[str]]:
    """ImageNet as CoOp reads it: images/<split>/<wnid>/<file>, label = sorted wnid index, names
    from classnames.txt ("<wnid> <name>"); the test split is val (ImageNet has no public test)."""
    pairs = {}
    path = folder / "classnames.txt"
    for no, line in enumerate(_read_lines(path), 1):
        parts = line.split(" ", 1)
        if len(parts) != 2:
            raise PatchRankError(f"{path}, line {no}: expected '<wnid> <class name>', got {line!r}")
        pairs[parts[0]] = parts[1].strip()
    wnids = sorted(pairs)
    items = []
    for s in (("train", "val") if split == "all" else ("val" if split in ("val", "test") else split,)):
        sdir = folder / "images" / s
        if not sdir.is_dir():
            raise PatchRankError(f"{sdir} is missing (ImageNet images go under images/<split>/<wnid>/)")
        for y, w in enumerate(wnids):
            d = sdir / w
            if not d.is_dir():
                raise PatchRankError(f"{d} is missing: classnames.txt lists {w} ({pairs[w]!r})")
            files = sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith("."))
            if not files:
                raise PatchRankError(f"class folder {d} holds no images")
            items += [(f.relative_to(folder / "images").as_posix(), y) for f in files]
    return items, [pairs[w] for w in wnids]


def open_coop(root: str | Path, name: str, split: str = "test") -> CoopDataset:
    """Dataset ``name`` (key or alias) under the CoOp data ``root``; ``root`` may also be the
    dataset's own folder."""
    info = dataset_info(name)
    root = Path(root).expanduser()
    folder = root / info.folder
    if not folder.is_dir() and detect(root) == info:
        folder = root
    if not folder.is_dir():
        raise PatchRankError(f"{folder} not found: CoOp keeps {info.title} in <root>/{info.folder}/")
    return CoopDataset(folder, split, info)


def coop_spec(spec: str, limit: int | None = None) -> CoopDataset | None:
    """``open_dataset`` handler: ``FOLDER`` or ``FOLDER@split`` where FOLDER holds a split file."""
    path, split = spec, "test"
    head, sep, tail = spec.rpartition("@")
    if sep and tail in SPLITS + ("all",):
        path, split = head, tail
    folder = Path(path).expanduser()
    info = detect(folder)
    if info is None:
        if sep and tail in SPLITS + ("all",) and folder.is_dir():
            raise PatchRankError(f"{folder} holds no CoOp split file; '@{tail}' applies to CoOp "
                                 "dataset folders only")
        return None
    return CoopDataset(folder, split, info)

