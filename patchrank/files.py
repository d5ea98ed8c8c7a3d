"""Writing files so that a reader, or a rerun after ``kill -9``, never sees half of one.

Every file PatchRank replaces (results JSON and CSV, ranking metadata, checkpoints, predictor and
token files, embeddings, figures, the app's cached orders and panels) goes through
``atomic_path``: the content is written to a hidden temporary file beside the target and renamed
over it, which POSIX and Windows both do in one step on the same file system. Append-only logs
are the other way files grow here (``jsonl``).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import uuid
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` when the block
    ends without error, removed otherwise. Folders are made. The temporary name is hidden, unique
    per process and thread, and keeps the suffix (``np.save`` and ``savefig`` read it)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` at ``path``, replaced atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null (results files and the CLI's stdout alike)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 1) -> Path:
    """``obj`` as JSON at ``path`` (NaN/inf as null), replaced atomically."""
    return write_text(path, json.dumps(finite(obj), indent=indent))
