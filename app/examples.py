"""The example images: one generated scene per class of the bundled model, then real photos.

The scenes are the bundled evaluation split's images, written once into the app's temporary
folder (a folder named after the split file's size and date, so a new split gets new files);
the photos are repository-only, like the results the trade-off tab reads.
"""
from __future__ import annotations

import threading
from pathlib import Path

import patchrank as pr
from patchrank.bundled import BUNDLED_DIR
from patchrank.errors import PatchRankError

from .paths import app_tmp

#: Example photos (with their credits in ATTRIBUTION.md beside them).
EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
_EXAMPLES_LOCK = threading.Lock()


def example_files(scenes: int = 6) -> list[str]:
    """Example images: one bundled evaluation scene per class (written to the app's temporary
    folder on first use) followed by the real photos in assets/examples."""
    out: list[str] = []
    with _EXAMPLES_LOCK:
        try:
            src = BUNDLED_DIR / "eval.npz"
            d = app_tmp() / f"examples-{src.stat().st_size}-{int(src.stat().st_mtime)}"
            ds = pr.bundled_eval(limit=200)
            d.mkdir(parents=True, exist_ok=True)
            seen = set()
            for img, lab in zip(ds.images, ds.labels):
                if int(lab) in seen:
                    continue
                seen.add(int(lab))
                name = ds.classnames[int(lab)].replace(" ", "-")
                path = d / f"scene-{len(seen):02d}-{name}.png"
                if not path.exists():
                    img.save(path)
                out.append(str(path))
                if len(seen) >= scenes:
                    break
        except (PatchRankError, OSError):
            pass
    out += sorted(str(p) for p in EXAMPLES_DIR.glob("*.jpg"))
    return out
