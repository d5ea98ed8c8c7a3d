"""Drawing: patch rankings and keep masks over the image, with legends. numpy + PIL only.

Everything here maps already-computed values (patch orders, keep masks, merge groups) to pixels;
no model is run. Images are uint8 arrays [H, W, 3] whose size is a whole number of patch cells,
so a patch id ``p`` (row-major on the model's grid) covers cell ``(p // cols, p % cols)``.
"""
from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Longest side of the drawn image, in pixels (rounded down to whole patch cells).
DISPLAY = 448
CMAP = "viridis"
HEAT_ALPHA = 0.6
PRUNED_RGB = np.array([38, 38, 46], np.float32)
STRIP_H = 52


@functools.lru_cache(maxsize=4)
def _lut(name: str = CMAP) -> np.ndarray:
    """256 x 3 uint8 colour table of a matplotlib colormap (0 = least, 1 = most important)."""
    import matplotlib
    cmap = matplotlib.colormaps[name]
    return (np.asarray(cmap(np.linspace(0, 1, 256)))[:, :3] * 255).round().astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _font(size: int = 15) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):   # Pillow without FreeType: bitmap font
        return ImageFont.load_default()


def cell_size(grid: tuple[int, int], display: int = DISPLAY) -> int:
    return max(1, display // max(grid))


def model_view(img: Image.Image, image_size: tuple[int, int], grid: tuple[int, int],
               display: int = DISPLAY) -> np.ndarray:
    """The part of ``img`` the model sees (centre crop to the model's aspect, as open_clip's
    shortest-side resize + centre crop does), resized to whole patch cells: uint8 [H, W, 3]."""
    th, tw = image_size
    w, h = img.size
    scale = min(w / tw, h / th)
    cw, ch = tw * scale, th * scale
    left, top = (w - cw) / 2, (h - ch) / 2
    c = cell_size(grid, display)
    out = img.convert("RGB").resize((grid[1] * c, grid[0] * c), Image.Resampling.BICUBIC,
                                    box=(left, top, left + cw, top + ch))
    return np.asarray(out, dtype=np.uint8)


def _upsample(cells: np.ndarray, c: int) -> np.ndarray:
    """[rows, cols, ...] per-cell values -> [rows*c, cols*c, ...] (nearest)."""
    return np.repeat(np.repeat(cells, c, axis=0), c, axis=1)


def rank_of(order: np.ndarray) -> np.ndarray:
    """Inverse permutation: ``rank_of(order)[p]`` = position of patch ``p`` (0 = most important)."""
    order = np.asarray(order, dtype=np.int64)
    r = np.empty_like(order)
    r[order] = np.arange(order.size)
    return r


def keep_mask(order: np.ndarray, k: int) -> np.ndarray:
    """Boolean [P]: True for the ``k`` first patches of ``order``."""
    m = np.zeros(len(order), dtype=bool)
    m[np.asarray(order[:k], dtype=np.int64)] = True
    return m


def _grid_lines(img: np.ndarray, c: int, strength: float = 0.82) -> np.ndarray:
    if c < 6:
        return img
    out = img.copy()
    out[::c, :, :] = (out[::c, :, :] * strength).astype(np.uint8)
    out[:, ::c, :] = (out[:, ::c, :] * strength).astype(np.uint8)
    return out


def _with_strip(img: np.ndarray, strip: np.ndarray) -> Image.Image:
    return Image.fromarray(np.concatenate([img, strip], axis=0))


@functools.lru_cache(maxsize=1024)
def _text_strip_cached(width: int, lines: tuple[str, ...]) -> np.ndarray:
    strip = Image.new("RGB", (width, STRIP_H), (250, 250, 250))
    d = ImageDraw.Draw(strip)
    for i, line in enumerate(lines[:2]):
        d.text((6, 5 + 22 * i), line, fill=(20, 20, 20), font=_font())
    out = np.asarray(strip)
    out.flags.writeable = False
    return out


def _text_strip(width: int, lines: list[str]) -> np.ndarray:
    return _text_strip_cached(width, tuple(lines))


@functools.lru_cache(maxsize=32)
def _legend_strip(width: int, num_patches: int, title: str, cmap: str = CMAP) -> np.ndarray:
    """Title line plus a colour bar from rank 1 (most important) to rank P (least)."""
    strip = Image.new("RGB", (width, STRIP_H), (250, 250, 250))
    d = ImageDraw.Draw(strip)
    d.text((6, 3), title, fill=(20, 20, 20), font=_font())
    left = "rank 1 (kept first)"
    right = f"rank {num_patches} (pruned first)"
    lw = int(d.textlength(left, font=_font(14)))
    rw = int(d.textlength(right, font=_font(14)))
    x0, x1 = 10 + lw, width - 10 - rw
    if x1 - x0 > 20:
        bar = _lut(cmap)[np.linspace(255, 0, x1 - x0).round().astype(int)]
        arr = np.asarray(strip).copy()
        arr[30:46, x0:x1] = bar[None, :, :]
        strip = Image.fromarray(arr)
        d = ImageDraw.Draw(strip)
    d.text((6, 30), left, fill=(40, 40, 40), font=_font(14))
    d.text((width - 6 - rw, 30), right, fill=(40, 40, 40), font=_font(14))
    return np.asarray(strip)


def heatmap(view: np.ndarray, order: np.ndarray, grid: tuple[int, int], title: str,
            alpha: float = HEAT_ALPHA, cmap: str = CMAP) -> Image.Image:
    """Patch ranks as colours over the image (bright = important), with a colour-bar legend."""
    rows, cols = grid
    p = rows * cols
    order = np.asarray(order)
    if order.shape != (p,):
        raise ValueError(f"order must have {p} patch ids for a {rows}x{cols} grid, got {order.shape}")
    c = view.shape[0] // rows
    value = 1.0 - rank_of(order) / max(1, p - 1)                       # 1 = most important
    colours = _lut(cmap)[(value * 255).round().astype(int)].reshape(rows, cols, 3)
    over = _upsample(colours, c).astype(np.float32)
    img = (view.astype(np.float32) * (1 - alpha) + over * alpha).astype(np.uint8)
    return _with_strip(_grid_lines(img, c), _legend_strip(view.shape[1], p, title, cmap))


def dimmed(view: np.ndarray) -> np.ndarray:
    """How pruned patches are drawn: the image darkened towards slate grey."""
    return (view.astype(np.float32) * 0.22 + PRUNED_RGB * 0.78).astype(np.uint8)


def mask_bases(view: np.ndarray, grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(kept look, pruned look) of the whole image with grid lines, for ``mask_overlay``."""
    c = view.shape[0] // grid[0]
    return _grid_lines(view, c, 0.9), _grid_lines(dimmed(view), c, 0.9)


def mask_overlay(view: np.ndarray, keep: np.ndarray, grid: tuple[int, int], title: str,
                 bases: tuple[np.ndarray, np.ndarray] | None = None) -> Image.Image:
    """Kept patches as they are, pruned patches dimmed; caption with the kept count.
    ``bases``: ``mask_bases(view, grid)`` if already computed (the slider redraws this often)."""
    rows, cols = grid
    c = view.shape[0] // rows
    kept_look, pruned_look = mask_bases(view, grid) if bases is None else bases
    keep = np.asarray(keep, dtype=bool).reshape(rows, cols)
    m = _upsample(keep, c)[:, :, None]
    img = np.where(m, kept_look, pruned_look)
    k, p = int(keep.sum()), keep.size
    caption = f"kept {k} of {p} patches ({100 * k / p:.0f}%), pruned {p - k} (dimmed)"
    return _with_strip(img, _text_strip(view.shape[1], [title, caption]))


def _group_colours(n: int) -> np.ndarray:
    """``n`` well-separated colours: golden-ratio hue steps, alternating brightness."""
    import colorsys
    out = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75 if i % 2 else 0.55, 0.95 if i % 3 else 0.75)
           for i in range(n)]
    return (np.array(out, np.float32) * 255).reshape(n, 3)


def groups_overlay(view: np.ndarray, groups: np.ndarray, grid: tuple[int, int], title: str) -> Image.Image:
    """ToMe-style merge groups: each merged token's patches share a colour and are outlined;
    patches left alone stay plain."""
    rows, cols = grid
    c = view.shape[0] // rows
    groups = np.asarray(groups, dtype=np.int64).reshape(-1)
    ids, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    merged = counts[inverse] > 1
    colour = _group_colours(len(ids))[inverse]
    colour[~merged] = np.nan
    over = _upsample(colour.reshape(rows, cols, 3), c)
    base = view.astype(np.float32)
    img = np.where(np.isnan(over), base, base * 0.4 + np.nan_to_num(over) * 0.6).astype(np.uint8)
    g = inverse.reshape(rows, cols)
    for r in range(rows):                 # outline each group: lines between different groups
        for q in range(cols):
            if q + 1 < cols and g[r, q] != g[r, q + 1]:
                img[r * c:(r + 1) * c, (q + 1) * c - 1:(q + 1) * c + 1] = 255
            if r + 1 < rows and g[r, q] != g[r + 1, q]:
                img[(r + 1) * c - 1:(r + 1) * c + 1, q * c:(q + 1) * c] = 255
    caption = f"{len(ids)} tokens after merging {rows * cols} patches; outlined = merged into one token"
    return _with_strip(img, _text_strip(view.shape[1], [title, caption]))


def placeholder(view: np.ndarray | None, message: str, size: int = DISPLAY) -> Image.Image:
    """The image greyed out with a message (or a blank canvas) for panels with nothing to show."""
    if view is None:
        img = Image.new("RGB", (size, size), (236, 236, 238))
    else:
        img = Image.fromarray((view.astype(np.float32) * 0.3 + 170).clip(0, 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    words, lines, line = message.split(), [], ""
    for w in words:
        if d.textlength(line + " " + w, font=_font(14)) > img.width - 40 and line:
            lines.append(line)
            line = w
        else:
            line = (line + " " + w).strip()
    lines.append(line)
    y = img.height // 2 - 10 * len(lines)
    for ln in lines:
        d.text((20, y), ln, fill=(25, 25, 25), font=_font(14))
        y += 20
    return img
