"""The sweep's results files: one schema, one writer, one reader.

``patchrank.sweep`` writes them, ``patchrank.figures`` and the app's trade-off tab read them
(``assets/results`` ships one), and the tests recompute shipped rows image by image from
``hits``. Reading needs neither torch nor a model, so the app and the figures can draw a
results file on any machine.

Results JSON (``FORMAT``)::

    {"format": "patchrank-sweep/1",
     "meta": {model, model_id, pretrained, data, n_images, num_patches, prune_layer, classnames,
              templates, methods, ratios, batch, latency_batches, repeats, device, threads, torch,
              settings_hash, created, full: {accuracy, gflops, latency_ms_b1, latency_ms_bN},
              skipped: {method: why}, notes: {...}, runtime: {...}, command},
     "rows": [{method, ratio, kept, extra_tokens, n, correct, accuracy, ci_low, ci_high,
               gflops, encoder_gflops, ranker_gflops, gflops_ratio, latency_ms, latency_ms_b1,
               latency_ms_b1_min, latency_ms_bN, latency_ms_bN_min, ms_per_image_bN, batch_N,
               speedup_b1, speedup_bN, precomputed, model, hits}, ...]}

``hits``: which images the row got right (``pack_hits``); ``accuracy``/``ci_low``/``ci_high`` are
fractions in [0, 1] (``ci_*``: Wilson 95 %, ``patchrank.stats``); ``latency_ms_b1``/
``latency_ms_bN`` are median milliseconds per call at batch 1 / batch ``batch_N``
(``latency_ms`` = ``latency_ms_b1``); fields that were not measured are null. A CSV with the
same rows (``ROW_FIELDS``, without ``hits``) is written beside the JSON for spreadsheets.
"""
from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PatchRankError
from .files import atomic_path, write_json

FORMAT = "patchrank-sweep/1"
ROW_FIELDS = ("method", "ratio", "kept", "extra_tokens", "n", "correct", "accuracy", "ci_low",
              "ci_high", "gflops", "encoder_gflops", "ranker_gflops", "gflops_ratio", "latency_ms",
              "latency_ms_b1", "latency_ms_b1_min", "latency_ms_bN", "latency_ms_bN_min",
              "ms_per_image_bN", "batch_N", "speedup_b1", "speedup_bN", "precomputed", "model")
#: What a row needs to be drawn; the numeric fields are checked to be finite numbers when present.
REQUIRED = ("method", "ratio", "accuracy", "gflops")
NUMERIC = ("ratio", "kept", "accuracy", "ci_low", "ci_high", "gflops", "encoder_gflops",
           "ranker_gflops", "gflops_ratio", "latency_ms", "latency_ms_b1", "latency_ms_b1_min",
           "latency_ms_bN", "latency_ms_bN_min", "ms_per_image_bN", "speedup_b1", "speedup_bN")


# -- per-image correctness -----------------------------------------------------------------------
def pack_hits(correct: np.ndarray) -> str:
    """Per-image correctness as hex (image i = bit i, most significant first; ``np.packbits``):
    the row's ``hits``. A few hundred characters let anyone recompute any subset's accuracy or
    a paired test from the results file, and the tests check shipped rows image by image."""
    return np.packbits(np.asarray(correct, bool)).tobytes().hex()


def unpack_hits(hits: str, n: int) -> np.ndarray:
    """The inverse of ``pack_hits``: a bool array [n]."""
    return np.unpackbits(np.frombuffer(bytes.fromhex(hits), np.uint8))[:n].astype(bool)


# -- writing --------------------------------------------------------------------------------------
def write_results(results: dict, out: str | os.PathLike) -> tuple[Path, Path]:
    """Write the results JSON at ``out`` and the rows as CSV beside it (same stem, ``.csv``)."""
    out = write_json(out, results)
    csv_path = out.with_suffix(".csv")
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(ROW_FIELDS), extrasaction="ignore")
        w.writeheader()
        for row in results["rows"]:
            w.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in ROW_FIELDS})
    return out, csv_path


# -- reading --------------------------------------------------------------------------------------
@dataclass
class SweepResults:
    """Rows and meta of one sweep. ``accuracy``/``ci_*`` are fractions in [0, 1]."""
    meta: dict
    rows: list[dict]
    path: str | None = None

    def methods(self) -> list[str]:
        """Methods in the sweep's order (meta), then any others in row order."""
        out = [m for m in self.meta.get("methods", []) if any(r["method"] == m for r in self.rows)]
        for r in self.rows:
            if r["method"] not in out:
                out.append(r["method"])
        return out

    def series(self, method: str) -> list[dict]:
        """Rows of ``method``, highest keep ratio first."""
        return sorted((r for r in self.rows if r["method"] == method), key=lambda r: -r["ratio"])

    def row(self, method: str, ratio: float) -> dict | None:
        """The row of ``method`` at keep ``ratio``, or None."""
        return next((r for r in self.rows if r["method"] == method and abs(r["ratio"] - ratio) < 1e-9),
                    None)

    @property
    def batch_n(self) -> int | None:
        return next((r.get("batch_N") for r in self.rows if r.get("batch_N")), None)


def _check_row(row, where: str) -> dict:
    if not isinstance(row, dict):
        raise PatchRankError(f"{where}: a row must be an object, got {type(row).__name__}")
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise PatchRankError(f"{where}: row lacks {', '.join(missing)}")
    out = dict(row)
    out["method"] = str(row["method"])
    for k in NUMERIC:
        v = row.get(k)
        if v is None:
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise PatchRankError(f"{where}: {k} must be a number, got {row[k]!r}") from None
        if not math.isfinite(v):
            raise PatchRankError(f"{where}: {k} is not finite")
        out[k] = v
    if not 0.0 <= out["accuracy"] <= 1.0:
        raise PatchRankError(f"{where}: accuracy must be a fraction in [0, 1], got {out['accuracy']}")
    return out


def parse_results(data, source: str = "results") -> SweepResults:
    """Check a loaded results object (the sweep's dict, or a bare list of rows)."""
    if isinstance(data, list):
        meta, rows = {}, data
    elif isinstance(data, dict):
        fmt = data.get("format")
        if fmt is not None and fmt != FORMAT:
            raise PatchRankError(f"{source}: format {fmt!r} is not {FORMAT!r}")
        meta, rows = data.get("meta") or {}, data.get("rows")
        if not isinstance(rows, list):
            raise PatchRankError(f"{source}: expected a 'rows' list")
    else:
        raise PatchRankError(f"{source}: expected an object with 'meta' and 'rows'")
    return SweepResults(meta, [_check_row(r, f"{source}, row {i}") for i, r in enumerate(rows)], source)


def load_results(path: str | os.PathLike) -> SweepResults:
    """Read one results JSON; errors name the file and the bad row."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PatchRankError(f"cannot read results {path}: {e}") from None
    res = parse_results(data, str(path))
    res.path = str(path)
    return res


def load_results_dir(folder: str | os.PathLike) -> tuple[list[SweepResults], list[str]]:
    """(every readable ``*.json`` results file of ``folder``, sorted by name; one message per
    file that could not be read)."""
    found, problems = [], []
    for p in sorted(Path(folder).glob("*.json")):
        try:
            found.append(load_results(p))
        except PatchRankError as e:
            problems.append(str(e))
    return found, problems


def as_results(results) -> SweepResults:
    """``SweepResults`` from what a caller has: one already, a results dict or row list, or a path."""
    if isinstance(results, SweepResults):
        return results
    if isinstance(results, (str, os.PathLike)):
        return load_results(results)
    return parse_results(results)
