"""Many processes, one job: what the per-image jobs share when launched with ``torchrun``.

The jobs that split work (``golden`` over a dataset, ``sweep``/``reproduce``, ``train-predictor``)
never start a process group themselves: the command line does (``launched``), from the variables
``torchrun`` sets (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT), with gloo on the CPU and NCCL
on GPUs, one GPU per local rank. Library code asks ``group()`` and runs as one process when there
is none, so the same function serves a notebook and a 64-GPU job.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator

from .errors import PatchRankError


def group():
    """``torch.distributed`` when a process group of more than one process is up, else None."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist
    return None


def rank_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) without a group."""
    dist = group()
    return (dist.get_rank(), dist.get_world_size()) if dist else (0, 1)


def barrier() -> None:
    dist = group()
    if dist:
        dist.barrier()


def on_rank0(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only (e.g. create or wipe an output file) and give every rank its
    result, or raise its error on every rank, so no process goes on alone after a failure."""
    dist = group()
    result, err = None, None
    if dist is None or dist.get_rank() == 0:
        try:
            result = fn()
        except PatchRankError as e:
            err = str(e)
    if dist:
        box = [result, err]
        dist.broadcast_object_list(box, src=0)
        result, err = box
    if err:
        raise PatchRankError(err)
    return result


def gather(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank (small things: metrics, scores)."""
    dist = group()
    if dist is None:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def launched_world() -> int:
    """How many processes ``torchrun`` started (1 when run plainly)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


@contextlib.contextmanager
def launched(device: str = "cpu") -> Iterator[str]:
    """The process group ``torchrun`` asks for, for the duration of one command; yields the
    device this rank uses (``cuda:LOCAL_RANK`` for a CUDA device, else ``device``)."""
    world = launched_world()
    if world <= 1:
        yield device
        return
    import torch
    import torch.distributed as dist
    if device != "cpu":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    dist.init_process_group(backend="gloo" if device == "cpu" else "nccl")
    try:
        yield device
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
