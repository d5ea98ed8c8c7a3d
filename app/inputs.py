"""Input checking for the app: images, class labels and values that arrive through the API.

Every refusal raises :class:`InputError` with a sentence a person can act on; the UI layer turns
it into a ``gr.Error``. Image decoding is the engine's ``patchrank.data.images.load_image``; this
module adds the app's limits (size, labels, values sent through the API) and plain wording.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

from PIL import Image, UnidentifiedImageError

from patchrank.data.images import load_image as engine_load_image

#: Largest image accepted, in pixels (about 6300 x 6300). Checked from the header, before decoding.
MAX_PIXELS = 40_000_000
#: Smallest side accepted, in pixels.
MIN_SIDE = 8
#: Most labels accepted in the class-labels box (the engine allows more, the page stays readable);
#: a preset the app offers (ImageNet's 1,000 classes) is accepted whole.
MAX_LABELS = 100
MAX_LABEL_CHARS = 80
#: Keep-ratio bounds of the slider and of the API, and where the slider starts (and resets to).
MIN_RATIO, MAX_RATIO = 0.02, 1.0
DEFAULT_RATIO = 0.5


class InputError(ValueError):
    """A bad input; the message says what was wrong and what to do."""


def _file_path(src: Any) -> str:
    if src is None:
        raise InputError("No image: upload or paste an image first.")
    if isinstance(src, dict):          # gradio FileData sent as a plain dict
        src = src.get("path") or src.get("name")
    path = os.fspath(src) if isinstance(src, (str, os.PathLike)) else None
    if not path or not os.path.isfile(path):
        raise InputError("The uploaded image could not be found on the server; upload it again.")
    if os.path.getsize(path) == 0:
        raise InputError("The uploaded file is empty (0 bytes).")
    return path


def load_image(src: Any) -> tuple[Image.Image, list[str]]:
    """Open an uploaded image as PIL RGB; returns (image, notes about conversions made).

    Accepts a path (or a gradio file dict) or a PIL image. Refuses non-images, corrupt files,
    decompression bombs (> MAX_PIXELS) and images smaller than MIN_SIDE px per side. Decoding
    and mode conversion are the engine's (``patchrank.data.images.load_image``)."""
    if isinstance(src, Image.Image):
        _check_size(src.size)
        return src.convert("RGB"), []
    path = _file_path(src)
    with _peek(path) as head:            # header only: size and format checked before decoding
        _check_size(head.size)
        notes = _notes(head)
    try:
        im = engine_load_image(path)
    except (ValueError, OSError) as e:   # the engine's words name the server path: not shown
        raise InputError(_decode_failure(str(e))) from None
    return im, notes


def _decode_failure(reason: str) -> str:
    """One line for a file whose header reads but whose pixels do not."""
    if "truncated" in reason.lower():
        return ("This image file is cut short (truncated), so it cannot be decoded. Upload the "
                "complete file.")
    return ("This image file is damaged or in a variant this app cannot decode. Save it again as "
            "JPEG or PNG and upload that.")


def _notes(head: Image.Image) -> list[str]:
    notes = []
    if getattr(head, "n_frames", 1) > 1:
        notes.append(f"animated image ({head.n_frames} frames): the first frame is used")
    if head.mode in ("RGBA", "LA", "PA") or "transparency" in head.info:
        notes.append("transparency flattened onto white")
    if head.mode.startswith("I") or head.mode == "F":
        notes.append(f"{head.mode} (16-bit or float) image scaled to 8 bits")
    if head.mode == "CMYK":
        notes.append("CMYK converted to RGB")
    try:
        if head.getexif().get(0x0112, 1) not in (0, 1):
            notes.append("EXIF orientation applied")
    except Exception:
        pass
    return notes


def _peek(path: str) -> Image.Image:
    """Open lazily (header only) and check the declared size before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(path)
    except Image.DecompressionBombError:
        raise InputError(f"This image is too large to decode safely (over {MAX_PIXELS / 1e6:.0f} "
                         "megapixels). Downscale it and try again.") from None
    except UnidentifiedImageError:
        raise InputError("This file is not an image this app can read. Use a common format "
                         "such as JPEG, PNG, WebP, GIF, BMP or TIFF.") from None
    except OSError as e:
        raise InputError(f"This image file could not be opened ({e}).") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise InputError(f"This image is {w}x{h} = {w * h / 1e6:.0f} megapixels, above the limit of "
                         f"{MAX_PIXELS / 1e6:.0f}. Downscale it and try again.")
    return im


def _check_size(size: tuple[int, int]) -> None:
    w, h = size
    if min(w, h) < MIN_SIDE:
        raise InputError(f"This image is only {w}x{h} pixels; it needs at least {MIN_SIDE} pixels "
                         "per side to be cut into patches.")
    if w * h > MAX_PIXELS:
        raise InputError(f"This image is {w}x{h}, above the limit of {MAX_PIXELS / 1e6:.0f} megapixels.")


_SPLIT = re.compile(r"[\n,;]+")


def parse_labels(text: Any, presets: Iterable[Sequence[str]] = ()) -> list[str]:
    """Class labels from a comma/semicolon/newline separated string (or a list).

    Blank entries are dropped and repeats removed (first kept); refuses none, more than
    MAX_LABELS unless they are exactly one of ``presets``, or labels longer than MAX_LABEL_CHARS."""
    if text is None:
        text = ""
    if isinstance(text, (list, tuple)):
        items = [str(t) for t in text]
    elif isinstance(text, str):
        items = _SPLIT.split(text)
    else:
        raise InputError("Class labels must be text: names separated by commas or new lines.")
    out, seen = [], set()
    for item in items:
        name = " ".join(item.split())
        if name and name.casefold() not in seen:
            seen.add(name.casefold())
            out.append(name)
    if not out:
        raise InputError("Enter at least one class label (names separated by commas or new lines).")
    if len(out) > MAX_LABELS and not any(out == list(p) for p in presets):
        raise InputError(f"{len(out)} class labels given; this app accepts at most {MAX_LABELS}. "
                         "Keep the ones you want to compare.")
    long = [n for n in out if len(n) > MAX_LABEL_CHARS]
    if long:
        raise InputError(f"Class label too long ({len(long[0])} characters, at most "
                         f"{MAX_LABEL_CHARS}): {long[0][:40]!r}...")
    return out


def check_ratio(ratio: Any) -> float:
    """A keep ratio in [MIN_RATIO, MAX_RATIO]; refuses NaN, text and out-of-range values."""
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise InputError(f"Keep ratio must be a number between {MIN_RATIO} and {MAX_RATIO}, "
                         f"got {ratio!r}.") from None
    if not math.isfinite(r) or not MIN_RATIO - 1e-9 <= r <= MAX_RATIO + 1e-9:
        raise InputError(f"Keep ratio must be between {MIN_RATIO} and {MAX_RATIO}, got {ratio!r}.")
    return min(max(r, MIN_RATIO), MAX_RATIO)


def check_choice(value: Any, choices: list[str], what: str) -> str:
    if value not in choices:
        raise InputError(f"Unknown {what} {value!r}; choose one of: {', '.join(choices)}.")
    return value


def file_path(src: Any, what: str = "file") -> Path:
    """The server path of an uploaded file (gradio passes a path or a FileData dict)."""
    try:
        return Path(_file_path(src))
    except InputError:
        raise InputError(f"No {what} received; upload it again.") from None
