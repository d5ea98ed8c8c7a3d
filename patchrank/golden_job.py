"""Golden rankings of a dataset into a ranking folder (``python -m patchrank golden``).

The search itself is ``golden``'s; this is the job around it: iterating a dataset, appending each
image's ranking to the folder (``rankings``), resuming, splitting the images across ``torchrun``
processes and the progress bar.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from .data.datasets import read_classnames
from .distributed import group, on_rank0, rank_world
from .errors import PatchRankError
from .golden import SEARCH, golden_ranking, golden_settings
from .progress import bar as progress_bar
from .rankings import ShardWriter, done_ids, prepare, settings_hash


def rank_dataset(m, ds, out, *, score: str = SEARCH.score, step: int = SEARCH.step,
                 block: int = SEARCH.block, stop_at: float | None = SEARCH.stop_at,
                 mode: str = SEARCH.mode, lazy: bool = SEARCH.lazy, dtype: torch.dtype | None = None,
                 limit: int | None = None, batch_budget_mb: float = SEARCH.batch_budget_mb,
                 progress: bool = True) -> dict:
    """Golden rankings of ``ds`` (``data.datasets``) into the ranking folder ``out`` (``rankings``).

    Resumable: ids already in ``out`` are skipped. Under ``torchrun`` (WORLD_SIZE > 1, process
    group already initialised) the remaining ids are split round-robin across ranks; each image's
    ranking depends only on (model, settings, image), so any split gives the same records.
    Returns a summary (the same on every rank)."""
    dist = group()
    rank, world = rank_world()
    classnames = (ds.classnames or m.classnames) if score != "similarity" else None
    search = dict(score=score, step=step, block=block, stop_at=stop_at, mode=mode, lazy=lazy,
                  dtype=dtype, classnames=classnames)
    settings = golden_settings(m, **search)
    ids = list(ds.ids[:limit] if limit is not None else ds.ids)
    if score == "label" and ids and ds.label(0) is None:
        raise PatchRankError(f"score='label' needs labelled data; {ds.spec} has no labels "
                             "(use class subfolders, or score='similarity')")
    on_rank0(lambda: prepare(out, m.model_id, settings, grid=m.grid, data=getattr(ds, "spec", None)))
    writer = ShardWriter(out, rank)
    try:
        done = done_ids(out)
        if dist:
            dist.barrier()          # every rank read the same done set before anyone appends
        todo = [i for i, iid in enumerate(ids) if iid not in done]
        mine = todo[rank::world]
        bar = progress_bar(len(mine), f"golden {score}/{mode} step {step}"
                           + (f" x{world} procs" if world > 1 else ""), unit="img",
                           enabled=bool(progress) and rank == 0)
        t0 = time.perf_counter()
        gflops = _rank_images(m, ds, ids, mine, writer, bar, search, batch_budget_mb)
        bar.close()
        seconds = time.perf_counter() - t0
    finally:
        writer.close()
    computed, gflops, seconds = _totals(m, len(mine), gflops, seconds)
    return {"out": str(out), "data": getattr(ds, "spec", None), "model_id": m.model_id,
            "settings_hash": settings_hash(m.model_id, settings), "settings": settings,
            "images": len(ids), "already_done": len(ids) - len(todo), "computed": computed,
            "world_size": world, "seconds": round(seconds, 3),
            "images_per_min": round(60 * computed / seconds, 2) if seconds > 0 and computed else None,
            "gflops_per_image": round(gflops / computed, 3) if computed else None}


def _rank_images(m, ds, ids: list, positions: list[int], writer: ShardWriter, bar,
                 search: dict, batch_budget_mb: float) -> float:
    """Rank the images at ``positions`` one by one, appending each record as it is done;
    returns the GFLOPs spent."""
    gflops = 0.0
    for i in positions:
        x = m.preprocess(ds.image(i)).unsqueeze(0)
        labels = [ds.label(i)] if search["score"] == "label" else None
        r = golden_ranking(m, x, labels=labels, batch_budget_mb=batch_budget_mb, **search)
        writer.append(ids[i], r.order[0], r.removed_at[0])
        gflops += float(r.gflops[0])
        bar.update(1)
    return gflops


def _totals(m, computed: int, gflops: float, seconds: float) -> tuple[int, float, float]:
    """(images, GFLOPs) summed and seconds maxed over the ranks (this rank's alone without torchrun)."""
    totals = torch.tensor([float(computed), gflops, seconds], dtype=torch.float64)
    dist = group()
    if dist:
        t = totals.to(m.device)
        dist.all_reduce(t[:2])
        mx = t[2:].clone()
        dist.all_reduce(mx, op=dist.ReduceOp.MAX)
        totals = torch.cat([t[:2], mx]).cpu()
    return int(totals[0]), float(totals[1]), float(totals[2])


def read_classnames_file(path: str, current: Sequence[str] | None) -> tuple[str, ...]:
    """Class names from a file (one per line); as many as the dataset's classes when it has any."""
    names = read_classnames(Path(path))
    if names is None:
        raise PatchRankError(f"--classnames {path}: no such file")
    if current and len(names) != len(current):
        raise PatchRankError(f"--classnames {path} lists {len(names)} names but the dataset has "
                             f"{len(current)} classes")
    return tuple(names)
