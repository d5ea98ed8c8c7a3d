"""Small PatchRank files (predictors, learnable tokens): safetensors tensors with a JSON header
in the file's own metadata, so weights and the settings/model id they belong to cannot drift."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import PatchRankError


def save_with_header(module: torch.nn.Module, path: str | os.PathLike, header: dict) -> Path:
    """Atomic write (tmp + rename): an interrupted save never leaves a half file."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(sd, str(tmp), metadata={"patchrank": json.dumps(header)})
    os.replace(tmp, path)
    return path


def read_header(path: str | os.PathLike, fmt: str, what: str) -> dict:
    """The JSON header of a file of format ``fmt`` without loading its tensors."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        md = f.metadata() or {}
    head = json.loads(md.get("patchrank", "{}"))
    if head.get("format") != fmt:
        raise PatchRankError(f"{path} is not a PatchRank {what} file (format {head.get('format')!r})")
    return head
