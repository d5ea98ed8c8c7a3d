"""Training checkpoints that make a killed run resumable: the state after each epoch in one file.

Used by the predictor's and the learnable tokens' training loops. A checkpoint is tied to its run
by a key (a hash of the settings, data and model the caller passes): a rerun with the same key
continues where the last finished epoch left off and ends where an uninterrupted run would; a
different key is refused by name rather than silently mixed in. Written atomically by rank 0
(under torchrun every rank holds the same state), read with ``weights_only=True``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from .distributed import barrier, rank_world
from .errors import PatchRankError
from .files import atomic_path


#: Tensors larger than this are keyed by their shape and an evenly strided sample of this many
#: values (a feature cache of 10k ViT-B-16 images is ~6 GB: hashing all of it would cost more
#: than the epoch it protects; any other data differs in the sample too).
SAMPLE = 1_000_000


def run_key(settings: dict, *parts: Any) -> str:
    """A short hash of ``settings`` and any tensors / strings the run depends on."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for p in parts:
        if isinstance(p, torch.Tensor):
            flat = p.detach().reshape(-1)
            flat = flat[::max(1, flat.numel() // SAMPLE)]
            h.update(str(tuple(p.shape)).encode() + flat.float().cpu().numpy().tobytes())
        else:
            h.update(str(p).encode())
    return h.hexdigest()[:16]


def load_state(path: str | os.PathLike | None, key: str) -> dict | None:
    """The saved state of the run ``key``, or None (no checkpoint, or no path given)."""
    if path is None or not Path(path).is_file():
        return None
    state = torch.load(path, weights_only=True)
    if state.get("key") != key:
        raise PatchRankError(f"{path} is the checkpoint of another training (other settings, data "
                             "or model); delete it to start over")
    return state


def save_state(path: str | os.PathLike | None, key: str, state: dict) -> None:
    """Replace the checkpoint with ``state`` (tensors, state dicts, numbers, lists)."""
    if path is None:
        return
    if rank_world()[0] == 0:
        with atomic_path(path) as tmp:
            torch.save({"key": key, **state}, tmp)
    barrier()
