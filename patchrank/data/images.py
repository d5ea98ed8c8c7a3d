"""``load_image``: one safe way to turn a user's file into an RGB PIL image.

Used by the image-folder datasets and by the app's upload box, so every path sees the same
rules: EXIF orientation applied (phone photos), the first frame of animated files, transparency
composited on white (a transparent background would otherwise turn black and fool the model),
palette / CMYK / 16-bit / float modes mapped to 8-bit RGB, and images larger than
``MAX_PIXELS`` refused *before* decoding (decompression bombs).
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import PatchRankError

#: Largest accepted image, in pixels (64 MP: a 8000x8000 photo). Pillow's own bomb check
#: (Image.MAX_IMAGE_PIXELS) still applies on top.
MAX_PIXELS = 64_000_000
BACKGROUND = (255, 255, 255)

PathOrFile = Union[str, os.PathLike, bytes, BinaryIO]


def _name(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return getattr(src, "name", None) or "<uploaded image>"


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB."""
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        hi = float(a.max(initial=0))
        # 16-bit data spans 0..65535 (PNG 16-bit may open as "I"); beyond that, scale by the max.
        top = 65535.0 if im.mode.startswith("I;16") or 255 < hi <= 65535 else max(hi, 255.0)
        a = np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB")   # L, 1, CMYK, YCbCr, LAB, HSV


def load_image(src: PathOrFile, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Open ``src`` (a path, raw bytes, or a binary file object) as an RGB PIL image.

    Raises ``PatchRankError`` naming the file for anything unreadable or too large."""
    name = _name(src)
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    elif isinstance(src, (str, os.PathLike)) and not Path(src).is_file():
        raise PatchRankError(f"image file not found: {name}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise PatchRankError(f"{name}: image is {w}x{h} = {w * h / 1e6:.0f} MP, above the "
                                         f"{max_pixels / 1e6:.0f} MP limit (a decompression bomb "
                                         "guard); downscale it first")
                if getattr(im, "is_animated", False):
                    im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im) or im
                out = _to_rgb(im)
                out.load()
                return out.copy() if out is im else out
    except PatchRankError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise PatchRankError(f"{name}: refused as a possible decompression bomb ({e})") from None
    except UnidentifiedImageError:
        raise PatchRankError(f"{name}: not an image Pillow can read (unknown or corrupt format)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise PatchRankError(f"{name}: could not decode the image ({e})") from None
