"""Watching Hub downloads: how many bytes of which file, out of how many, as they arrive.

huggingface_hub reports a download's progress to a tqdm-like class (``tqdm_class`` of
``hf_hub_download``) created with the file's size (the Hub's ``Content-Length``) as ``total``.
``patchrank.hub.fetch`` passes it :class:`Bar` while a caller watches, so a program that shows
its own progress (the app's progress bar) learns the size before the first byte and every chunk
after, without reading the console bar and without touching huggingface_hub's settings.

The watcher is held in a context variable, so only downloads started by the watching code (its
thread or task) report to it; another user's download in another thread does not. ``Bar`` is
deliberately not a ``tqdm`` subclass: huggingface_hub creates non-tqdm classes as given (no
console bar) and gradio's ``track_tqdm`` does not mirror it into a second bar.
"""
from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

MB = 1e6


@dataclass
class Transfer:
    """One file being (or having been) downloaded."""
    name: str
    total: int | None
    done: int = 0
    started: float = field(default_factory=time.monotonic)

    def seconds_left(self) -> float | None:
        """Remaining time at the rate so far (None until a rate is known)."""
        dt = time.monotonic() - self.started
        if not self.total or self.done <= 0 or dt < 0.2:
            return None
        return max(0.0, (self.total - self.done) / (self.done / dt))


#: Called with the transfer after each chunk (and once at the start with ``done == 0``).
Watcher = Callable[[Transfer], None]
_WATCHER: contextvars.ContextVar[Watcher | None] = contextvars.ContextVar("patchrank_download_watcher",
                                                                          default=None)


class Bar:
    """The tqdm-like object huggingface_hub updates during one file's download."""

    def __init__(self, *args, desc: str | None = None, total: int | None = None, initial: int = 0,
                 **_ignored) -> None:
        self._watch = _WATCHER.get()
        self._lock = threading.Lock()
        name = str(desc or "file").rsplit("/", 1)[-1]     # huggingface_hub passes a URL's tail
        self.transfer = Transfer(name, int(total) if total else None, int(initial or 0))
        self.n, self.total = self.transfer.done, self.transfer.total
        self._tell()

    def _tell(self) -> None:
        if self._watch is not None:
            try:
                self._watch(self.transfer)
            except Exception:   # a display must never break a download
                pass

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.transfer.done += int(n)
            self.n = self.transfer.done
        self._tell()

    def close(self) -> None:
        pass

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def watch(watcher: Watcher) -> Iterator[list[Transfer]]:
    """Report every Hub download started inside the block to ``watcher``; yields the list of
    transfers seen (their ``total`` summed is what was downloaded)."""
    seen: list[Transfer] = []

    def record(t: Transfer) -> None:
        if all(t is not s for s in seen):
            seen.append(t)
        watcher(t)

    token = _WATCHER.set(record)
    try:
        yield seen
    finally:
        _WATCHER.reset(token)


def bar_class() -> type[Bar] | None:
    """``Bar`` while someone watches (for ``hf_hub_download(tqdm_class=...)``), else None:
    huggingface_hub's own console bar, as it would be without PatchRank."""
    return Bar if _WATCHER.get() is not None else None
