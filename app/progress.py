"""Progress a person can plan with: the time left on the golden search and the size of a download.

Gradio's progress bar shows a fraction and a text; its own time estimate comes from how long the
event took before, which says nothing on a model's first search. So the text carries the time
left, from the rate so far (``Eta``), and a model download shows its size in MB from the Hub's
``Content-Length`` (``patchrank.downloads``) before its first byte arrives.
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

from patchrank import downloads

Report = Callable[[float | None, str], None]
#: What handlers accept as ``progress``: gradio's ``gr.Progress`` (or any callable), or None.
Progress = Callable[..., Any] | None


def reporter(progress: Progress) -> Report:
    """``progress`` as a plain ``report(fraction, text)`` that clamps the fraction, does nothing
    without a bar, and never lets a failing progress bar break the work it reports on."""
    def report(frac: float | None, desc: str = "") -> None:
        if progress is not None:
            try:
                progress(None if frac is None else min(1.0, max(0.0, float(frac))), desc=desc)
            except Exception:   # a progress bar must never break the work
                pass
    return report


def duration(seconds: float) -> str:
    """"about 40 s" / "about 3 min" (rounded: an estimate, not a promise)."""
    if seconds < 1.5:
        return "about 1 s"
    if seconds < 90:
        return f"about {seconds:.0f} s"
    return f"about {seconds / 60:.0f} min"


class Eta:
    """Adds "about N s left" to the text of a progress report, from the rate so far; nothing is
    said until 3% of the work and half a second have gone by (too early to estimate)."""

    def __init__(self, report: Report) -> None:
        self.report = report
        self.start = time.monotonic()

    def left(self, frac: float | None) -> str:
        dt = time.monotonic() - self.start
        if frac is None or frac < 0.03 or dt < 0.5 or frac >= 1.0:
            return ""
        return f"{duration(dt * (1 - frac) / frac)} left"

    def __call__(self, frac: float | None, desc: str = "") -> None:
        left = self.left(frac)
        self.report(frac, f"{desc} · {left}" if left else desc)


def with_eta(report: Report) -> Report:
    """``report`` with the time left appended to each text (see ``Eta``)."""
    return Eta(report)


def describe_transfer(t: downloads.Transfer, what: str) -> str:
    """"Downloading ViT-B-32/openai: open_clip_model.safetensors, 120 of 605 MB · about 20 s left"."""
    size = f"{t.done / downloads.MB:.0f} of {t.total / downloads.MB:.0f} MB" if t.total \
        else f"{t.done / downloads.MB:.0f} MB"
    left = t.seconds_left()
    return (f"Downloading {what}: {t.name}, {size}"
            + (f" · {duration(left)} left" if left is not None and t.done < (t.total or 0) else ""))


@contextlib.contextmanager
def downloads_shown(report: Report, what: str) -> Iterator[list[downloads.Transfer]]:
    """Show every Hub download made inside the block on ``report`` (fraction of the file's
    bytes, size in MB, time left); yields the transfers (for "downloaded N MB" afterwards)."""
    def show(t: downloads.Transfer) -> None:
        report(t.done / t.total if t.total else None, describe_transfer(t, what))
    with downloads.watch(show) as seen:
        yield seen


def downloaded_mb(seen: list[downloads.Transfer]) -> float:
    return sum(t.done for t in seen) / downloads.MB
