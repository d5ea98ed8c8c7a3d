"""Progress bars of the long jobs (golden rankings, sweeps, training, embedding), in one place.

Bars go to stderr so that a command's stdout stays the JSON result alone (``cli``). A disabled
bar is a real tqdm object that draws nothing, so callers update and close it without checks.
"""
from __future__ import annotations

import sys
from typing import Any, Callable


def bar(total: int, desc: str, *, enabled: bool = True, initial: int = 0, unit: str = "it",
        leave: bool = True) -> Any:
    """A tqdm bar on stderr (``enabled=False``: one that draws nothing)."""
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=sys.stderr,
                dynamic_ncols=True, disable=not enabled)


def staged(progress: Any) -> Callable[..., None]:
    """A ``report(stage, done, total, info=None)`` callback from a job's ``progress`` argument:
    False/None (silent), True (one bar per stage) or the caller's own callable (the app's)."""
    if callable(progress):
        return progress
    if not progress:
        return lambda *a, **k: None
    bars: dict = {}

    def report(stage: str, done: int, total: int, info: dict | None = None) -> None:
        b = bars.get(stage)
        if b is None:
            b = bars[stage] = bar(total, stage)
        b.n = done
        if info:
            b.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()},
                          refresh=False)
        b.refresh()
        if done >= total:
            b.close()
    return report
