"""The sweep's accuracy pass: per-batch evaluation and the resumable store of its cells.

Per batch the prefix (blocks before ``m.prune_layer``) runs once (``m.prefix``), the unpruned
embedding (``forward.run_suffix`` on all tokens) serves every method's ratio-1.0 cell, each
ranker orders the patches once and that order serves every ratio, and every pruned embedding
goes through ``rankers.reduce`` -> ``forward.run_suffix``: the same composition as
``m.encode_image(x, keep_ratio=r, ranker=..., tokens=...)`` (a test checks they agree), without
repeating the shared work per ratio.

Finished (batch, method) predictions go to ``<out>.cells.jsonl`` as they complete (one fsynced
line each, with the settings in a header line), so a killed sweep loses at most the cell in
flight: a rerun with the same settings skips what is done, one with other settings is refused,
naming what differs. Under torchrun each rank appends to its own shard and every rank's shards
are read back, so a run resumes whatever the number of processes before and after.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from . import distributed, forward, rankers
from .data.datasets import open_dataset
from .errors import PatchRankError
from .jsonl import AppendLog, read_records
from .progress import bar as progress_bar
from .sweep_methods import Method, digest

CELLS_FORMAT = "patchrank-sweep-cells/1"


# -- embeddings -----------------------------------------------------------------------------------
def method_embeddings(m, method: Method, x: torch.Tensor, h: torch.Tensor, ids: Sequence[str],
                      ratios: Sequence[float], full: torch.Tensor | None = None) -> dict[float, torch.Tensor]:
    """Embeddings [B,E] per ratio for one method, from the prefix ``h`` computed once: the
    method's order (golden orders of ``ids``, or its ranker's; none for a merger) is taken once
    and serves every ratio. Ratio 1.0 without tokens is the unpruned embedding ``full`` when
    given."""
    prune_layer = m.prune_layer
    extra = method.extra()
    order = None
    out = {}
    for r in ratios:
        n_keep = m.keep_count(r)
        if n_keep == m.num_patches:
            if extra is None and full is not None:
                out[r] = full
            else:
                out[r] = forward.run_suffix(m.visual, h, prune_layer, extra)
            continue
        if order is None and not method.merges:
            order = (torch.stack([method.orders[i] for i in ids]) if method.orders is not None
                     else rankers.order(method.ranker, m, x, h))
        reduced = rankers.reduce(method.ranker, m, x, h, n_keep, order)
        out[r] = forward.run_suffix(m.visual, reduced, prune_layer, extra)
    return out


# -- the data -------------------------------------------------------------------------------------
def open_data(dataset, limit: int | None):
    """A dataset from a spec string (``data.datasets.open_dataset``) or as given, cut to its
    first ``limit`` images."""
    if isinstance(dataset, (str, os.PathLike)):
        return open_dataset(str(dataset), limit=limit)
    if limit is not None and len(dataset.ids) > limit:
        dataset.ids = list(dataset.ids)[:limit]
    return dataset


def image(ds, i: int):
    """Image ``i`` of a Dataset (``image(i)``) or of the bundled evaluation split (``images``)."""
    return ds.image(i) if hasattr(ds, "image") else ds.images[i]


def preprocessed(m, ds, indices: Sequence[int]) -> torch.Tensor:
    """The images at ``indices`` as one preprocessed batch [N,3,H,W]."""
    return torch.stack([m.preprocess(image(ds, i)) for i in indices])


# -- resumable cell store -------------------------------------------------------------------------
class CellStore:
    """Append-only JSONL of finished (batch, method) predictions; first line = settings header.

    Each record is written whole, flushed and fsynced; a partial last line (a killed writer) is
    dropped on reopen. Opening with other settings raises, naming what differs. Under torchrun
    each rank appends to its own shard (``<cells>.rank<R>.jsonl``) and reads every shard.
    ``path=None`` keeps the cells in memory only."""

    def __init__(self, path: str | os.PathLike | None, settings: dict, fresh: bool = False,
                 shard: int | None = None):
        self.path = None if path is None else Path(path)
        self.settings = settings
        self.hash = digest(settings)
        self.fingerprints: dict[str, str] = {}
        self.done: dict[tuple[int, str], dict] = {}
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._log = None
        if self.path is None:
            return
        if fresh:
            distributed.on_rank0(lambda: [f.unlink() for f in self.files()])
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.reload()
        own = self.path if shard is None else self.path.with_name(
            self.path.name.replace(".jsonl", f".rank{shard}.jsonl"))
        new = not own.exists() or own.stat().st_size == 0
        self._log = AppendLog(own)
        if new:
            self._write({"type": "header", "format": CELLS_FORMAT, "settings_hash": self.hash,
                         "settings": settings})

    def files(self) -> list[Path]:
        """The main cell file and every rank's shard that exist."""
        if self.path is None:
            return []
        shards = sorted(self.path.parent.glob(self.path.name.replace(".jsonl", ".rank*.jsonl")))
        return [f for f in [self.path, *shards] if f.exists()]

    def reload(self) -> None:
        """Read every cell file (after the other ranks finished: their cells too)."""
        self.fingerprints, self.done, self.seconds, self.cpu = {}, {}, {}, {}
        for f in self.files():
            if f.stat().st_size:
                self._read(f)

    def _read(self, path: Path) -> None:
        for no, rec in read_records(path, "delete the file (or rerun with --fresh) to start over"):
            kind = rec.get("type")
            if no == 1 and kind != "header":
                raise PatchRankError(f"{path} is not a sweep cell file; use another --out")
            if kind == "header":
                self._check_header(path, rec)
            elif kind == "method":
                self.fingerprints[rec["method"]] = rec["fingerprint"]
            elif kind == "cell":
                self._count(rec["start"], rec["method"], rec["preds"], rec.get("seconds", 0.0),
                            rec.get("cpu", 0.0))

    def _check_header(self, path: Path, rec: dict) -> None:
        if rec.get("settings_hash") != self.hash:
            old = rec.get("settings", {})
            diff = "; ".join(f"{k}: {_short(old.get(k))} -> {_short(self.settings.get(k))}"
                             for k in sorted(set(old) | set(self.settings))
                             if old.get(k) != self.settings.get(k))
            raise PatchRankError(f"{path} holds a sweep with other settings ({diff}); "
                                 "use another --out, or --fresh to discard it")

    def _count(self, start: int, method: str, preds: dict, seconds: float, cpu: float) -> None:
        self.done[(start, method)] = preds
        self.seconds[method] = self.seconds.get(method, 0.0) + seconds
        self.cpu[method] = self.cpu.get(method, 0.0) + cpu

    def _write(self, rec: dict) -> None:
        if self._log is not None:
            self._log.write(rec)

    def check_method(self, name: str, fingerprint: str) -> None:
        old = self.fingerprints.get(name)
        if old is None:
            self.fingerprints[name] = fingerprint
            self._write({"type": "method", "method": name, "fingerprint": fingerprint})
        elif old != fingerprint:
            raise PatchRankError(f"{self.path}: method {name!r} was computed with other weights or "
                                 f"settings (fingerprint {old} -> {fingerprint}); use another --out, "
                                 "or --fresh to discard the old cells")

    def put(self, start: int, method: str, preds: dict, seconds: float, cpu: float = 0.0) -> None:
        self._count(start, method, preds, seconds, cpu)
        self._write({"type": "cell", "start": start, "method": method, "preds": preds,
                     "seconds": round(seconds, 4), "cpu": round(cpu, 4)})

    def close(self) -> None:
        if self._log is not None:
            self._log.close()


def _short(v: Any) -> str:
    s = json.dumps(v, default=str)
    return s if len(s) <= 60 else s[:57] + "..."


def cells_path(out: str | os.PathLike) -> Path:
    """Where a sweep writing ``out`` keeps its finished cells: ``<out minus .json>.cells.jsonl``."""
    out = Path(out)
    return out.with_name((out.name[:-5] if out.name.endswith(".json") else out.name) + ".cells.jsonl")


# -- the accuracy pass ----------------------------------------------------------------------------
def _evaluate_batch(m, ds, ids, start: int, batch: int, meths: Sequence[Method], ratios, clf, clfs,
                    store: CellStore, bar) -> None:
    """The cells of one batch that are not done yet: the unpruned model's, then each method's."""
    need = [meth for meth in meths if (start, meth.name) not in store.done]
    if not need and (start, "full") in store.done:
        return
    t0, c0 = time.perf_counter(), time.process_time()
    bid = ids[start:start + batch]
    x = preprocessed(m, ds, range(start, start + len(bid)))
    h = m.prefix(x)
    full = forward.run_suffix(m.visual, h, m.prune_layer)
    if (start, "full") not in store.done:
        store.put(start, "full", {"1": clf.predict(full).tolist()}, time.perf_counter() - t0,
                  time.process_time() - c0)
        bar.update(1)
    for meth in need:
        t1, c1 = time.perf_counter(), time.process_time()
        bar.set_postfix_str(meth.name)
        embs = method_embeddings(m, meth, x, h, bid, meth.ratios(ratios), full)
        preds = {f"{r:g}": clfs[meth.name].predict(e).tolist() for r, e in embs.items()}
        store.put(start, meth.name, preds, time.perf_counter() - t1, time.process_time() - c1)
        bar.update(1)


def evaluate(m, ds, meths: Sequence[Method], ratios: Sequence[float], clf, store: CellStore,
             batch: int, progress: bool) -> None:
    """Every cell this process owns (batches round-robin across torchrun ranks) into ``store``,
    skipping those already there. ``clf``: the zero-shot classifier of the unpruned model;
    methods whose tokens carry text context build their own."""
    ids = list(ds.ids)
    clfs = {meth.name: (meth.tokens.zero_shot(m, list(ds.classnames))
                        if meth.tokens is not None and getattr(meth.tokens, "n_ctx", 0) else clf)
            for meth in meths}
    rank, world = distributed.rank_world()
    starts = list(range(0, len(ids), batch))[rank::world]
    todo = [(s, name) for s in starts for name in ["full", *(x.name for x in meths)]
            if (s, name) not in store.done]
    bar = progress_bar(len(todo), "sweep" + (f" x{world} procs" if world > 1 else ""),
                       enabled=bool(progress) and rank == 0, leave=False)
    with torch.inference_mode():
        for s in starts:
            _evaluate_batch(m, ds, ids, s, batch, meths, ratios, clf, clfs, store, bar)
    bar.close()
