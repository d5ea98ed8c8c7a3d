"""Which number format the app's forward passes run in, and the bf16 copy of a model they use.

Real CLIP's pruned and full embeddings, the per-image curve and the latency shown run in bf16
on a CPU with bf16 matrix units (AMX, AVX512-BF16: ``patchrank.hardware``), float32 elsewhere:
there bf16 is 2-6x faster and agrees with float32 on the top-1 class (``tests/app``, and the
README's "bf16 inference" table). Everything that orders patches (golden search, predictor,
attention, norm) stays in float32, so the heatmaps do not change with the CPU; the bundled model
is tiny and stays in float32 everywhere. ``PATCHRANK_APP_DTYPE=float32`` or ``bfloat16`` forces
a format (``auto``, the default, follows the CPU).
"""
from __future__ import annotations

import os

import torch

import patchrank as pr
from patchrank import hardware
from patchrank.errors import PatchRankError

from .sessions import LRU

FORMATS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_COPIES: LRU = LRU(2)          # (id(clip), model id, dtype) -> the converted model


def forced_format() -> str:
    """``PATCHRANK_APP_DTYPE``: "auto" (default), "float32" or "bfloat16"."""
    value = os.environ.get("PATCHRANK_APP_DTYPE", "auto").strip().lower() or "auto"
    if value != "auto" and value not in FORMATS:
        raise PatchRankError(f"PATCHRANK_APP_DTYPE must be auto, float32 or bfloat16, got {value!r}")
    return value


def inference_dtype(m: pr.PatchModel, flags: frozenset[str] | None = None) -> torch.dtype:
    """The format the app runs ``m``'s forwards in: bf16 for real CLIP on the CPU when the CPU
    has a bf16 unit (``flags``: as ``hardware.cpu_flags()``, default this CPU's), else ``m``'s
    own; ``PATCHRANK_APP_DTYPE`` overrides."""
    forced = forced_format()
    if forced != "auto":
        return FORMATS[forced]
    if m.name == "bundled" or m.device.type != "cpu" or m.dtype != torch.float32:
        return m.dtype
    return torch.bfloat16 if hardware.bf16_unit(flags) else m.dtype


def inference_model(m: pr.PatchModel) -> pr.PatchModel:
    """``m`` itself, or its copy in the app's inference format (converted once per model and
    shared by every session and prune layer)."""
    dtype = inference_dtype(m)
    if dtype == m.dtype:
        return m
    base = _COPIES.setdefault((id(m.clip), m.model_id, dtype), lambda: m.with_dtype(dtype))
    return base.at_layer(m.prune_layer)


def describe(m: pr.PatchModel) -> str:
    """For the status line: the format forwards run in, and why."""
    dtype = inference_dtype(m)
    name = str(dtype).replace("torch.", "")
    if forced_format() != "auto":
        return f"forwards in {name} (set by PATCHRANK_APP_DTYPE)"
    if dtype == torch.bfloat16:
        return (f"forwards in bfloat16 (this CPU has {hardware.bf16_unit()}); "
                "patch rankings in float32")
    if m.name == "bundled" or m.device.type != "cpu":
        return f"forwards in {name}"
    return f"forwards in {name} (this CPU has no AMX or AVX512-BF16 unit; bf16 would be slower)"
