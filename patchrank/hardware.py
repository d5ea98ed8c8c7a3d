"""Which number format this CPU runs fastest: bf16 where it has bf16 matrix instructions.

Why it matters: the same ViT-B-16 forward costs very different time by format and CPU. Intel
Xeons with AMX run bf16 matmuls ~6x faster than fp32; AMD EPYCs with ``avx512_bf16`` ~2x
faster (measured by ``benchmarks/pruned_speed.py``: 117 vs 239 ms per image at batch 1); CPUs
with neither (AVX2 only) emulate bf16, ~100x *slower* than fp32. So bf16 is chosen only where
the CPU says it has the instructions, never by default.

The flags come from torch's own CPU probe (``torch.cpu._is_amx_tile_supported`` and
``_is_avx512_bf16_supported``, the checks its kernels dispatch on); where a torch build lacks
them, ``/proc/cpuinfo`` on Linux; elsewhere none (float32).
"""
from __future__ import annotations

from pathlib import Path

import torch

#: Flag -> what it is called in messages, most capable first.
BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16"}


def cpu_flags() -> frozenset[str]:
    """This CPU's bf16-related flags (a subset of ``BF16_FLAGS``)."""
    probes = {"amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", None),
              "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", None)}
    if all(probes.values()):
        return frozenset(flag for flag, probe in probes.items() if probe())
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(flag for flag in BF16_FLAGS if flag in text.split())


def bf16_unit(flags: frozenset[str] | set[str] | None = None) -> str | None:
    """The CPU unit that makes bf16 fast ("AMX", "AVX512-BF16"), or None when bf16 would be slow.
    ``flags``: as ``cpu_flags()`` (default: this CPU's)."""
    flags = cpu_flags() if flags is None else flags
    return next((name for flag, name in BF16_FLAGS.items() if flag in flags), None)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``; the platform's processor string elsewhere), for
    benchmark records: the same code runs at different speeds on different CPUs."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine() or "unknown"
