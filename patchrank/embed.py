"""``embed_images``: pruned CLIP image embeddings for a folder or a list of files, resumable.

What a user with a million photos needs from an embedding job: images decoded in worker processes
while the model runs (a ``DataLoader``), a progress bar in images/s, an interrupted run that
continues where it stopped (rows go straight into a memory-mapped ``.npy``; a small progress file
records how many are done, written after each batch has been flushed), and unreadable files named
and skipped (or the run stopped, by choice) instead of a crash at image 900,000.

Outputs: ``OUT`` (``.npy``, float16 or float32, one row per embedded image, L2-normalised unless
asked otherwise) and ``OUT`` with ``.json`` (paths in row order, the settings, skipped files and
throughput). At keep ratio 1.0 the rows equal open_clip's ``encode_image`` (``prune`` runs the
stock tower when nothing is pruned).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .data.base import IMAGE_EXTENSIONS
from .data.images import load_image
from .dropin import PrunedCLIP, prune
from .errors import PatchRankError
from .files import atomic_path, write_json
from .models import PatchModel
from .progress import bar as progress_bar
from .timing import interleaved

OUT_DTYPES = ("float32", "float16")


def list_images(src: str | os.PathLike) -> list[Path]:
    """Images under a folder (recursively, sorted: a stable row order), or the paths listed in a
    text file, one per line (relative paths are relative to the list's folder)."""
    src = Path(src)
    if src.is_dir():
        paths = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(src).parts))
        if not paths:
            raise PatchRankError(f"{src} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return paths
    if not src.is_file():
        raise PatchRankError(f"--data {src}: no such folder or file list")
    try:
        lines = [ln.strip() for ln in src.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise PatchRankError(f"{src}: not a readable list of image paths ({e})") from None
    paths = [p if p.is_absolute() else src.parent / p for p in map(Path, filter(None, lines))]
    if not paths:
        raise PatchRankError(f"{src} lists no image paths (one per line)")
    return paths


class _Files(torch.utils.data.Dataset):
    """(index, preprocessed image, error) per file; an unreadable file gives its error text and a
    zero tensor, so one bad file never kills a worker or the batch."""

    def __init__(self, paths: Sequence[Path], preprocess, shape: tuple[int, ...]):
        self.paths, self.preprocess, self.shape = list(paths), preprocess, shape

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.preprocess(load_image(self.paths[i])), ""
        except PatchRankError as e:
            return i, torch.zeros(self.shape), str(e)
        except Exception as e:                     # a preprocess failure: still this file's fault
            return i, torch.zeros(self.shape), f"{self.paths[i]}: {type(e).__name__}: {e}"


def _settings(m: PatchModel, fast: PrunedCLIP, paths: Sequence[Path], out_dtype: str,
              normalize: bool) -> dict:
    """What a resumed run must share with the first one, or its rows would not belong together."""
    digest = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:16]
    ranker = fast._plan.ranker
    return {"model_id": m.model_id, "prune_layer": m.prune_layer, "keep_ratio": fast.keep_ratio,
            "ranker": getattr(ranker, "name", type(ranker).__name__),
            "ranker_model_id": getattr(ranker, "model_id", None),
            "tokens": getattr(fast._plan.tokens, "model_id", None), "n_images": len(paths),
            "paths_sha256": digest, "dtype": out_dtype, "normalize": normalize,
            "dim": m.embed_dim}


class _Progress:
    """``OUT.partial.npy`` (rows, memory-mapped) + ``OUT.progress.json`` (rows done, errors)."""

    def __init__(self, out: Path, settings: dict, fresh: bool):
        self.rows_path = out.with_name(out.name + ".partial.npy")
        self.state_path = out.with_name(out.name + ".progress.json")
        if fresh:
            self.discard()
        state = self._read()
        if state is not None and state["settings"] != settings:
            changed = sorted(k for k in settings if state["settings"].get(k) != settings[k])
            raise PatchRankError(f"{self.state_path} is from an unfinished run with other settings "
                                 f"({', '.join(changed)}); rerun that command to finish it, or pass "
                                 "--fresh to start over")
        if state is None or not self.rows_path.is_file():
            state = {"settings": settings, "done": 0, "errors": {}, "seconds": 0.0}
            np.lib.format.open_memmap(self.rows_path, mode="w+", dtype=settings["dtype"],
                                      shape=(settings["n_images"], settings["dim"])).flush()
        self.resumed_from = state["done"]
        self.state = state
        self.rows = np.lib.format.open_memmap(self.rows_path, mode="r+")

    def _read(self) -> dict | None:
        if not self.state_path.is_file():
            return None
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None                            # torn write: start over, nothing trusted

    def commit(self, done: int, errors: dict[int, str], seconds: float) -> None:
        """Rows first, then the count that vouches for them: a kill between the two only redoes
        one batch."""
        self.rows.flush()
        self.state.update(done=done, seconds=seconds)
        self.state["errors"].update({str(i): e for i, e in errors.items()})
        write_json(self.state_path, self.state, indent=None)

    def discard(self) -> None:
        for p in (self.rows_path, self.state_path):
            p.unlink(missing_ok=True)


def embed_images(m: PatchModel, data: str | os.PathLike | Sequence[str | os.PathLike],
                 out: str | os.PathLike, *, keep_ratio: float = 1.0, ranker: Any = "norm",
                 tokens: Any = None, batch: int = 64, workers: int = 2, out_dtype: str = "float32",
                 normalize: bool = True, on_error: str = "skip", fresh: bool = False,
                 compare: bool = True, progress: bool = True) -> dict:
    """Embed every image of ``data`` (a folder, a list file, or a list of paths) into ``out``.

    ``on_error``: "skip" (name the file on stderr, leave it out of the output, count it) or
    "stop" (raise naming it; rerunning resumes once the file is fixed). ``compare``: time the
    pruned and the full image tower on the first batch, interleaved, and report the speed-up
    (model only; the run's images/s also counts decoding). Returns the summary written to the
    index JSON."""
    if out_dtype not in OUT_DTYPES:
        raise PatchRankError(f"out_dtype must be one of {', '.join(OUT_DTYPES)}, got {out_dtype!r}")
    if on_error not in ("skip", "stop"):
        raise PatchRankError(f"on_error must be 'skip' or 'stop', got {on_error!r}")
    if batch < 1 or workers < 0:
        raise PatchRankError("batch must be >= 1 and workers >= 0")
    out = Path(out)
    if out.suffix != ".npy":
        raise PatchRankError(f"--out must end in .npy, got {out}")
    paths = [Path(p) for p in data] if isinstance(data, (list, tuple)) else list_images(data)
    fast = prune(m, keep_ratio, ranker, tokens)
    settings = _settings(m, fast, paths, out_dtype, normalize)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = _Progress(out, settings, fresh)
    first = _run(m, fast, paths, state, batch, workers, on_error, normalize, progress)
    speed = _compare(m, fast, first) if compare and first is not None else None
    return _finish(out, paths, state, speed)


def _run(m: PatchModel, fast: PrunedCLIP, paths: Sequence[Path], state: _Progress, batch: int,
         workers: int, on_error: str, normalize: bool, progress: bool) -> torch.Tensor | None:
    """The loop: batches in file order from ``state.state['done']`` on. Returns the first good
    batch of this run (for ``compare``)."""
    start = state.state["done"]
    ds = _Files(paths, m.preprocess, (3, *m.image_size))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(ds, range(start, len(paths))),
                                         batch_size=batch, num_workers=workers, shuffle=False)
    bar = progress_bar(len(paths), "embed", initial=start, unit="img", enabled=bool(progress))
    t0, seconds, first = time.perf_counter(), state.state["seconds"], None
    with torch.inference_mode():
        for idx, x, errs in loader:
            bad = {int(i): e for i, e in zip(idx, errs) if e}
            if bad and on_error == "stop":
                i, e = next(iter(bad.items()))
                raise PatchRankError(f"{e} (image {i + 1} of {len(paths)}; the rows before it are "
                                     "saved: fix the file and rerun, or rerun with --on-error skip; "
                                     "either resumes)")
            for e in bad.values():
                print(f"skipped: {e}", file=sys.stderr)
            emb = fast.encode_image(x, normalize=normalize).float()
            state.rows[int(idx[0]):int(idx[-1]) + 1] = emb.numpy().astype(state.rows.dtype)
            if first is None and not bad:
                first = x
            state.commit(int(idx[-1]) + 1, bad, seconds + time.perf_counter() - t0)
            bar.update(len(idx))
    bar.close()
    return first


def _compare(m: PatchModel, fast: PrunedCLIP, x: torch.Tensor) -> dict:
    """Pruned vs full image tower on the same batch, interleaved repeats (``timing.interleaved``)."""
    with torch.inference_mode():
        t = interleaved({"pruned": lambda: fast.encode_image(x), "full": lambda: m.clip.encode_image(x)},
                        repeats=5, warmup=1)
    return {"batch": len(x), "pruned_ms": round(t["pruned"]["median_ms"], 2),
            "full_ms": round(t["full"]["median_ms"], 2),
            "speedup_vs_full": round(t["full"]["median_ms"] / t["pruned"]["median_ms"], 3),
            "gflops": round(fast.gflops(), 4), "full_gflops": round(fast.gflops(1.0), 4)}


def _finish(out: Path, paths: Sequence[Path], state: _Progress, speed: dict | None) -> dict:
    """Keep the good rows, write ``out`` and its index atomically, drop the partial files."""
    errors = {int(i): e for i, e in state.state["errors"].items()}
    good = [i for i in range(len(paths)) if i not in errors]
    rows = np.asarray(state.rows[good] if errors else state.rows)
    with atomic_path(out) as tmp:
        np.save(tmp, rows)
    seconds = state.state["seconds"]
    summary = {"out": str(out), "index": str(out.with_suffix(".json")), "rows": len(good),
               "skipped": len(errors), "resumed_from": state.resumed_from, **state.state["settings"],
               "seconds": round(seconds, 2),
               "images_per_s": round(len(paths) / seconds, 1) if seconds > 0 else None,
               "compare": speed}
    index = {**summary, "paths": [str(paths[i]) for i in good],
             "skipped_files": [{"path": str(paths[i]), "error": errors[i]} for i in sorted(errors)]}
    write_json(out.with_suffix(".json"), index)
    del state.rows
    state.discard()
    return summary
