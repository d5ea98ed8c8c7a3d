"""Bounded in-memory caches: shared analyses (read-only once built) and per-session state."""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Hashable, TypeVar

V = TypeVar("V")


class LRU(Generic[V]):
    """A thread-safe least-recently-used map holding at most ``capacity`` entries."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._d: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, default: V | None = None) -> V | None:
        with self._lock:
            if key not in self._d:
                return default
            self._d.move_to_end(key)
            return self._d[key]

    def put(self, key: Hashable, value: V) -> V:
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.capacity:
                self._d.popitem(last=False)
        return value

    def setdefault(self, key: Hashable, factory: Callable[[], V]) -> V:
        with self._lock:
            if key in self._d:
                self._d.move_to_end(key)
                return self._d[key]
        return self.put(key, factory())

    def pop(self, key: Hashable) -> V | None:
        with self._lock:
            return self._d.pop(key, None)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._d

    def __len__(self) -> int:
        with self._lock:
            return len(self._d)

    def clear(self) -> None:
        with self._lock:
            self._d.clear()


@dataclass
class Session:
    """What one browser tab (or one API client) has chosen and computed."""
    model_key: str = "bundled"
    analysis: Any = None                                    # the current Analysis, or None
    predictors: dict[str, Any] = field(default_factory=dict)   # model_id -> uploaded predictor
    exports: list[str] = field(default_factory=list)        # this session's export folder(s)
    label_preset: str = "everyday"                          # engine.LABEL_PRESETS key
    view: Any = None                                        # app.state.View: what the user chose
    curve_labels: Any = None                                # labels the shown curve was drawn for
    curve: Any = None                                       # the shown curve's data (min keep ratios)
    layer: int | None = None                                # prune layer chosen (None: the model's)
    golden_target: str = "similarity"                       # engine.GOLDEN_TARGETS or class:<label>
    opacity: float = 0.6                                    # heatmap overlay opacity (0..1)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # app.state's redraws


#: Most sessions remembered at once; the oldest idle one is forgotten first.
MAX_SESSIONS = 64
#: Most uploaded predictors kept per session.
MAX_PREDICTORS_PER_SESSION = 2

SESSIONS: LRU[Session] = LRU(MAX_SESSIONS)


def session(session_id: str | None) -> Session:
    """The session for ``session_id`` (created on first use). None -> a shared anonymous one."""
    return SESSIONS.setdefault(session_id or "anonymous", Session)
