"""Linear layers on prepacked oneDNN weights: the pruned forward's matmuls at the CPU's full rate.

Why: ``F.linear`` on the CPU re-lays-out (packs) the weight matrix on every call. That cost is
paid per call, not per token, so it weighs most when there are few tokens: at batch 1 after
pruning to 40 % (79 tokens) a ViT-B linear ran at ~115-135 GFLOP/s against ~200 for the same
weights packed once, in fp32 and bf16 alike, on AVX-512 and AMX hosts
(``benchmarks/pruned_speed.py`` measures the whole forward). Pruning leaves fewer tokens per
call, so without this the saving in FLOPs would not show in the clock.

``linear(x, weight, bias)`` is ``F.linear`` with the weight packed once (oneDNN's blocked layout,
``torch.ops.mkldnn._reorder_linear_weight``) and kept in a cache beside the model, not on it:

- the cache entry is checked on every call against the weight's storage, dtype, shape, version
  counter and values at ~256 spread positions, so an optimiser step, ``load_state_dict``,
  ``.to(dtype)`` or a write through ``.data`` repacks instead of running stale weights; a weak
  reference drops the entry when the weight itself is freed, and an entry holds nothing of the
  weight but that sample;
- it is used only where it is exact and differentiability is not needed: CPU, float32 or
  bfloat16, no autograd through it, not under CPU autocast (which chooses each op's dtype), not
  while ``torch.compile``, ``torch.export`` or ``torch.jit.trace`` trace (their graphs get the
  plain op), and only after a one-time check that this torch build runs it and agrees with
  ``F.linear``; otherwise, or with ``PATCHRANK_PREPACK=0``, plain ``F.linear`` runs.

Results equal ``F.linear``'s to float rounding (a different summation order; tested), which is
the same tolerance the pruned forward keeps against open_clip. Memory: one packed copy of each
linear weight used (ViT-B-16 image tower: ~0.34 GB in fp32), plus the query and key/value rows
of the last block's QKV packed apart for its CLS-only pass; ``clear()`` frees them.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

_DTYPES = (torch.float32, torch.bfloat16)
_CACHE: dict[tuple, "_Entry"] = {}     # (id(weight), rows) -> the packed weight
_LOCK = threading.Lock()
_LOCAL = threading.local()             # .off: prepacking switched off in this thread (``off``)
_WORKS: dict[torch.dtype, bool] = {}   # dtype -> this torch build packs and agrees with F.linear


def enabled() -> bool:
    """Whether prepacking may run at all in this thread (``PATCHRANK_PREPACK=0`` switches it off
    everywhere, ``off()`` for a block)."""
    return (os.environ.get("PATCHRANK_PREPACK", "1") != "0" and not getattr(_LOCAL, "off", False)
            and torch.backends.mkldnn.is_available())


@contextlib.contextmanager
def off() -> Iterator[None]:
    """Plain ``F.linear`` inside the block, in this thread only: to time both paths in one run
    (``benchmarks/pruned_speed.py --plain``)."""
    before = getattr(_LOCAL, "off", False)
    _LOCAL.off = True
    try:
        yield
    finally:
        _LOCAL.off = before


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           rows: slice | None = None) -> torch.Tensor:
    """``F.linear(x, weight[rows], bias[rows])``, on a prepacked copy of the weight where that is
    exact and faster (see the module doc). ``rows`` selects output features (e.g. the key and
    value thirds of a fused QKV projection) and is packed as its own matrix."""
    w = weight if rows is None else weight[rows]
    b = bias if bias is None or rows is None else bias[rows]
    if not _usable(x, weight, bias):
        return F.linear(x, w, b)
    return torch.ops.mkldnn._linear_pointwise(x, _packed(weight, rows, w), b, "none", [], "")


def _usable(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    if x.device.type != "cpu" or weight.device.type != "cpu" or x.dtype not in _DTYPES or weight.dtype != x.dtype:
        return False
    if bias is not None and bias.dtype != x.dtype:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return False                   # the packed op has no backward
    if (torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or not enabled()):
        return False                   # autocast picks the dtype per op; traced graphs get F.linear
    return _works(x.dtype)


def _works(dtype: torch.dtype) -> bool:
    """Once per dtype: pack a small weight, run it, compare with ``F.linear``."""
    if dtype not in _WORKS:
        try:
            g = torch.Generator().manual_seed(0)
            w, x = torch.randn(48, 32, generator=g).to(dtype), torch.randn(5, 32, generator=g).to(dtype)
            packed = torch.ops.mkldnn._reorder_linear_weight(w)
            got = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
            ok = torch.allclose(got.float(), F.linear(x, w).float(), rtol=1e-2, atol=1e-2)
        except (RuntimeError, AttributeError, NotImplementedError) as e:
            warnings.warn(f"prepacked oneDNN linear unavailable for {dtype} ({e}); using F.linear")
            ok = False
        _WORKS[dtype] = ok
    return _WORKS[dtype]


@dataclass(frozen=True)
class _Entry:
    """A packed weight and what it was packed from (``_fresh`` compares it with the weight now)."""
    ref: weakref.ref
    data_ptr: int
    dtype: torch.dtype
    shape: torch.Size
    version: int
    sample: torch.Tensor
    packed: torch.Tensor


def _packed(weight: torch.Tensor, rows: slice | None, w: torch.Tensor) -> torch.Tensor:
    key = (id(weight), None if rows is None else rows.indices(weight.shape[0]))
    entry = _CACHE.get(key)
    if entry is not None and _fresh(entry, weight):
        return entry.packed
    with _LOCK:
        entry = _CACHE.get(key)
        if entry is None or not _fresh(entry, weight):
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous())
            ref = weakref.ref(weight, lambda _, key=key: _CACHE.pop(key, None))
            entry = _Entry(ref, weight.data_ptr(), weight.dtype, weight.shape, _version(weight),
                           _sample(weight).clone(), packed)
            _CACHE[key] = entry
        return entry.packed


def _fresh(entry: _Entry, weight: torch.Tensor) -> bool:
    """Same tensor, storage, dtype, shape and write count, and the same values at ~256 spread
    positions: the sample catches writes the version counter misses (through ``.data``, or to
    weights made under ``inference_mode``, which have no counter) for ~2 us per call."""
    return (entry.ref() is weight and entry.data_ptr == weight.data_ptr() and entry.dtype == weight.dtype
            and entry.shape == weight.shape and entry.version == _version(weight)
            and torch.equal(entry.sample, _sample(weight)))


def _sample(weight: torch.Tensor) -> torch.Tensor:
    flat = weight.detach().reshape(-1)
    return flat[::max(1, flat.numel() // 257)]


def _version(weight: torch.Tensor) -> int:
    """The in-place write counter (-1 for tensors made under ``torch.inference_mode``: they have
    none, and the value sample stands in for it)."""
    try:
        return weight._version
    except RuntimeError:
        return -1


def clear() -> None:
    """Drop every packed weight (they are rebuilt on the next call that needs them)."""
    with _LOCK:
        _CACHE.clear()
