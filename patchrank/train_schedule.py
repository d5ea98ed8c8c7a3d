"""The training schedule of ``train_clip``: learning-rate cycles and patch dropout per step.

A train config names one cycle at its top level or a list ``cycles`` of them; each warms up
linearly and decays by a cosine to ``lr_floor`` (SGDR-style warm restarts, Loshchilov & Hutter
2017) and drops patch tokens its own way. Everything here is a pure function of (config, step),
which is what lets a resumed run equal an uninterrupted one and an appended cycle continue a
finished run exactly.
"""
from __future__ import annotations

import math

import numpy as np

_CYCLE_KEYS = ("steps", "lr", "warmup", "patch_dropout", "unmasked_tail")


def schedule(cfg: dict) -> list[dict]:
    """The training cycles of a train config, oldest format included.

    A config either names one cycle at its top level (``steps``, ``lr``, ``warmup``, optional
    ``patch_dropout``, ``unmasked_tail``) or a list ``cycles`` of them. Each cycle warms up
    linearly to its peak and decays by a cosine to ``lr_floor`` (SGDR-style warm restarts,
    Loshchilov & Hutter 2017) and drops patches its own way. Appending a cycle leaves every
    earlier step unchanged, so a finished run's checkpoint resumes into the longer schedule
    exactly where a fresh run of it would be."""
    if "cycles" in cfg:
        stray = [k for k in ("patch_dropout", "unmasked_tail") if k in cfg]
        if stray:
            raise ValueError(f"with 'cycles', set {stray} inside each cycle, not at the top level")
        given = cfg["cycles"]
    else:
        given = [{k: cfg[k] for k in _CYCLE_KEYS if k in cfg}]
    cycles = [{"patch_dropout": 0.0, "unmasked_tail": 0, **c} for c in given]
    for c in cycles:
        missing = [k for k in ("steps", "lr", "warmup") if k not in c]
        if missing:
            raise ValueError(f"a training cycle needs {missing}")
        if not 0 <= c["unmasked_tail"] <= c["steps"] or c["steps"] < 1:
            raise ValueError(f"a cycle needs steps >= 1 and 0 <= unmasked_tail <= steps, got {c}")
        rate = c["patch_dropout"]
        lo, hi = rate if isinstance(rate, (list, tuple)) else (rate, rate)
        if not 0 <= lo <= hi < 1:
            raise ValueError(f"patch_dropout must be a rate or a [lo, hi] range in [0, 1), got {rate}")
    return cycles


def _cycle_at(step: int, cfg: dict) -> tuple[dict | None, int]:
    """The cycle that ``step`` falls in and the step's index inside it (None past the end)."""
    for c in schedule(cfg):
        if step < c["steps"]:
            return c, step
        step -= c["steps"]
    return None, step


def total_steps(cfg: dict) -> int:
    return sum(c["steps"] for c in schedule(cfg))


def lr_at(step: int, cfg: dict) -> float:
    """Learning rate at ``step``: its cycle's linear warm-up, then a cosine to ``lr_floor``."""
    floor = cfg["lr_floor"]
    c, step = _cycle_at(step, cfg)
    if c is None:
        return floor
    warm, total, peak = c["warmup"], c["steps"], c["lr"]
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * min(t, 1.0)))


def resumable(saved: dict, cfg: dict, step: int) -> bool:
    """Whether a checkpoint at ``step`` made with ``saved`` settings continues under ``cfg``:
    every setting outside the cycles equal, and every cycle that had begun by ``step`` identical
    (so learning rate and patch dropout agree for all finished steps; later cycles may change)."""
    rest = lambda d: {k: v for k, v in d.items() if k not in ("cycles",) + _CYCLE_KEYS}
    if rest(saved) != rest(cfg):
        return False
    done, new = 0, schedule(cfg)
    for i, c in enumerate(schedule(saved)):
        if done >= step:
            break
        if i >= len(new) or new[i] != c:
            return False
        done += c["steps"]
    return True


def patch_dropout(step: int, cfg: dict) -> float:
    """Fraction of patch tokens dropped at ``step``, from the step's cycle: ``patch_dropout``
    (a number, or ``[lo, hi]`` for a rate drawn uniformly per step, seeded by (seed, step)) until
    the cycle's last ``unmasked_tail`` steps, then 0 (FLIP's unmasked tuning closes the train/test
    gap). A range up to 0.9 teaches the model to decide from a few dozen tokens, which is what a
    pruned forward at low keep ratios gives it."""
    c, i = _cycle_at(step, cfg)
    if c is None or not c["patch_dropout"] or i >= c["steps"] - c["unmasked_tail"]:
        return 0.0
    rate = c["patch_dropout"]
    if isinstance(rate, (list, tuple)):
        lo, hi = rate
        return float(np.random.default_rng([cfg["seed"], step]).uniform(lo, hi))
    return float(rate)
