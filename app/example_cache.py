"""The examples' golden rankings, computed once in the background and kept on disk.

On a real CLIP on a CPU the golden search is most of an analysis (ViT-B-16: tens of seconds
per image, ``benchmarks/app_latency.py``), and the examples are what a first-time visitor
clicks. So when a model becomes the current one, a background thread (``Warmer``) ranks every
example with it, in the golden mode the app suggests for it, and writes each order to
``<app temp>/example-cache/`` under a key made of the model id, the golden mode and settings,
and the hash of the preprocessed image (so it is found whatever the file is called, and never
used for another model, setting or image). Any analysis then looks there first
(``golden_order``): an example's golden ranking is instant once the thread has reached it,
and stays so across restarts.

The thread never blocks a request: it holds no lock a request takes, it pauses (between
chunks of its search) while a request's own golden search runs, and it stops when another model
becomes current (or ``stop`` is called). A request that arrives before the thread reached its
image searches itself, as without the cache. Only the examples are written: uploads never are.
Switched off with ``PATCHRANK_EXAMPLE_CACHE=0`` (the test suite does, except its own tests).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from patchrank.files import atomic_path

import app.engine as engine
from .inputs import InputError, load_image
from .paths import app_tmp

ENV = "PATCHRANK_EXAMPLE_CACHE"
_busy = 0                                   # requests' golden searches running now
_busy_lock = threading.Condition()


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def folder() -> Path:
    d = app_tmp() / "example-cache"
    d.mkdir(parents=True, exist_ok=True)
    return d


def key(m, x, mode: str, target: dict | None = None) -> str:
    """Model id and prune layer + golden mode, settings and target (a class-conditioned search)
    + hash of the preprocessed image."""
    settings = json.dumps({**engine.golden_search_kwargs(m, mode), **(target or {}),
                           "prune_layer": m.prune_layer}, sort_keys=True, default=str)
    image = hashlib.sha256(x.detach().cpu().numpy().tobytes()).hexdigest()
    return hashlib.sha256(f"{m.model_id}|{mode}|{settings}|{image}".encode()).hexdigest()[:32]


def lookup(m, x, mode: str, target: dict | None = None) -> np.ndarray | None:
    """A cached order for this model, image, mode and target, if one is on disk and valid."""
    path = folder() / f"{key(m, x, mode, target)}.npy"
    try:
        order = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    ok = order.shape == (m.num_patches,) and np.array_equal(np.sort(order), np.arange(m.num_patches))
    return order.astype(np.int64) if ok else None


def save(m, x, mode: str, order: np.ndarray) -> None:
    """Write atomically (a reader never sees half a file)."""
    with atomic_path(folder() / f"{key(m, x, mode)}.npy") as tmp:
        np.save(tmp, np.asarray(order, dtype=np.int64), allow_pickle=False)


def golden_order(m, x, mode: str, progress: Callable | None = None,
                 target: dict | None = None) -> np.ndarray:
    """What the app's analyses call: the cached order, else the engine's search (during which
    the background thread pauses). ``target``: a class-conditioned search's settings."""
    hit = lookup(m, x, mode, target)
    if hit is not None:
        if progress is not None:
            progress(1.0, "golden ranking: from the examples' cache")
        return hit
    global _busy
    with _busy_lock:
        _busy += 1
    try:
        return engine.golden_order(m, x, mode, progress=progress, target=target)
    finally:
        with _busy_lock:
            _busy -= 1
            _busy_lock.notify_all()


class _Stopped(Exception):
    pass


class Warmer:
    """One background thread at a time, ranking the examples for the current model."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.model_key: str | None = None
        self.done: list[str] = []            # examples ranked (or found) by the current thread

    def follow(self, model_key: str, m: Any, mode: str, examples: Sequence[str]) -> None:
        """Make ``model_key`` the model whose examples are ranked: the thread for another model
        stops; the same model's thread carries on."""
        if not enabled():
            return
        with self._lock:
            if self.model_key == model_key and self._thread is not None and self._thread.is_alive():
                return
            self._halt()
            self.model_key, self.done = model_key, []
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(m, mode, list(examples), self._stop),
                                            daemon=True, name=f"example-cache {model_key}")
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread and wait for it (at most ``timeout`` s: it stops between chunks)."""
        with self._lock:
            t = self._thread
            self._halt()
            self.model_key = None
        if t is not None:
            t.join(timeout)

    def _halt(self) -> None:
        """Tell the thread to stop at its next chunk; not waited for (a model switch must not)."""
        self._stop.set()
        with _busy_lock:
            _busy_lock.notify_all()
        self._thread = None

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the current thread to finish; True if it did (tests)."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return t is None or not t.is_alive()

    def _run(self, m, mode: str, examples: list[str], stop: threading.Event) -> None:
        def pause(*_args) -> None:          # called between chunks of the search
            with _busy_lock:
                while _busy and not stop.is_set():
                    _busy_lock.wait(0.5)
            if stop.is_set():
                raise _Stopped
        for path in examples:
            if stop.is_set():
                return
            try:
                img, _ = load_image(path)
                x = m.preprocess(img).unsqueeze(0)
                if lookup(m, x, mode) is None:
                    pause()
                    save(m, x, mode, engine.golden_order(m, x, mode, progress=pause))
                self.done.append(path)
            except _Stopped:
                return
            except (InputError, OSError, ValueError, RuntimeError) as e:   # one bad example
                print(f"[patchrank] example cache: {Path(path).name} skipped: {e}")


WARMER = Warmer()
