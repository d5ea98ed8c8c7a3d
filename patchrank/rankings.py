"""Ranking files: one output folder per (model, settings), append-only, safe to kill at any time.

Layout of ``DIR``:
- ``meta.json``: format version, ``model_id``, ``settings``, ``settings_hash`` (sha256 of both,
  canonical JSON), patch grid, the data spec of the first run. Written once (atomic rename);
  a later run with another model or other settings is refused instead of mixing rankings.
- ``shard-RRRRR.jsonl``: one JSON object per line ``{"id", "order", "removed_at"}``, one file per
  writing process rank. Each line is written whole, flushed and fsynced before the next image
  starts, so ``kill -9`` loses at most the line being written. Readers skip a trailing partial
  line; a writer truncates its own shard's partial tail before appending. Records are pure
  functions of (model, settings, image), so a resumed run's files hold what an uninterrupted
  run's hold (line order aside).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

import torch

from .errors import PatchRankError
from .files import write_json
from .jsonl import AppendLog, read_records

FORMAT = "patchrank-golden/1"
META = "meta.json"


def settings_hash(model_id: str, settings: dict) -> str:
    blob = json.dumps({"model_id": model_id, "settings": settings}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _shards(out: Path) -> list[Path]:
    return sorted(out.glob("shard-*.jsonl"))


def read_meta(out: str | os.PathLike) -> dict:
    path = Path(out) / META
    if not path.is_file():
        raise PatchRankError(f"{out} holds no rankings ({META} missing); make them with "
                             "`python -m patchrank golden --out {out} ...`")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PatchRankError(f"cannot read {path}: {e}") from None
    if meta.get("format") != FORMAT:
        raise PatchRankError(f"{path}: unknown format {meta.get('format')!r} (this PatchRank reads {FORMAT})")
    return meta


def _diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}"
             for k in keys if old.get(k) != new.get(k)]
    return "; ".join(parts)


def prepare(out: str | os.PathLike, model_id: str, settings: dict, *, grid: tuple[int, int],
            data: str | None = None) -> dict:
    """Create ``out`` with its meta.json, or check that an existing one matches; returns meta.
    Call from one process only (rank 0), before any shard is opened."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    want = {"format": FORMAT, "model_id": model_id, "settings": settings,
            "settings_hash": settings_hash(model_id, settings), "grid": list(grid), "data": data}
    if (out / META).exists():
        meta = read_meta(out)
        if meta["model_id"] != model_id:
            raise PatchRankError(f"{out} holds rankings of model {meta['model_id']}, not {model_id}; "
                                 "use another --out folder (or delete this one)")
        if meta["settings_hash"] != want["settings_hash"] or meta["settings"] != settings:
            raise PatchRankError(f"{out} holds rankings made with other settings "
                                 f"({_diff(meta['settings'], settings)}); use another --out folder "
                                 "(or delete this one) instead of mixing them")
        return meta
    if _shards(out):
        raise PatchRankError(f"{out} has shard files but no {META}; it was not made by this "
                             "command or was damaged. Use another --out folder")
    write_json(out / META, want)
    return want


def _records(path: Path) -> Iterator[dict]:
    """Complete records of one shard; a trailing partial line (an interrupted write) is skipped."""
    for _, rec in read_records(path, "(not a write interrupted at the end) remove that line and "
                                     "rerun to recompute it"):
        yield rec


def done_ids(out: str | os.PathLike) -> set[str]:
    """Ids with a complete record in any shard of ``out``."""
    return {rec["id"] for p in _shards(Path(out)) for rec in _records(p)}


class ShardWriter:
    """Appends records to ``shard-{rank}.jsonl`` with an exclusive lock (one writer per shard)."""

    def __init__(self, out: str | os.PathLike, rank: int = 0):
        self.path = Path(out) / f"shard-{rank:05d}.jsonl"
        self._log = AppendLog(self.path, lock=True)

    def append(self, image_id: str, order: torch.Tensor, removed_at: torch.Tensor | None = None) -> None:
        rec = {"id": image_id, "order": [int(v) for v in order.tolist()]}
        if removed_at is not None:
            rec["removed_at"] = [int(v) for v in removed_at.tolist()]
        self._log.write(rec)

    def close(self) -> None:
        self._log.close()

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_rankings(out: str | os.PathLike, removed_at: bool = False) -> tuple[dict, dict]:
    """(meta, {id: order LongTensor [P]}) from ``out``; with ``removed_at=True`` the values are
    (order, removed_at) pairs. Orders are checked to be permutations of the grid's patches."""
    out = Path(out)
    meta = read_meta(out)
    p = int(meta["grid"][0]) * int(meta["grid"][1])
    found: dict = {}
    for path in _shards(out):
        for rec in _records(path):
            order = torch.tensor(rec["order"], dtype=torch.long)
            if order.numel() != p or not torch.equal(order.sort().values, torch.arange(p)):
                raise PatchRankError(f"{path}: record {rec['id']!r} is not an order of {p} patches")
            value = order
            if removed_at:
                value = (order, torch.tensor(rec.get("removed_at", []), dtype=torch.long))
            prev = found.get(rec["id"])
            if prev is not None:
                same = torch.equal(prev[0] if removed_at else prev, order)
                if not same:
                    raise PatchRankError(f"{out}: image {rec['id']!r} has two different rankings")
                continue
            found[rec["id"]] = value
    return meta, found
