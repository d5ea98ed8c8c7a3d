"""Append-only JSON-lines files that survive ``kill -9``: one writer path, one reader path.

Used by the golden ranking shards (``rankings``) and the sweep's cell file (``sweep``). A record is
one line, written whole, flushed and fsynced before the next; a killed writer leaves at most a
partial last line, which readers skip and the next writer truncates before appending.

One writer per file is enforced with ``filelock`` (flock on POSIX, ``msvcrt`` locking on Windows)
on a hidden ``.<name>.lock`` beside the file: a separate file because the lock library may
create or truncate its lock path, and hidden so that globs of the data (``shard-*``) never see it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from filelock import FileLock, Timeout

from .errors import PatchRankError


def read_records(path: str | os.PathLike, damaged_hint: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) of every complete line; a damaged line that is not the last one
    raises, naming the file and line, followed by ``damaged_hint`` (what the user should do)."""
    path = Path(path)
    lines = path.read_bytes().split(b"\n")
    for no, line in enumerate(lines[:-1], 1):    # the last piece has no newline: partial or empty
        if not line.strip():
            continue
        try:
            yield no, json.loads(line)
        except json.JSONDecodeError:
            raise PatchRankError(f"{path}, line {no}: damaged record; {damaged_hint}") from None


class AppendLog:
    """An open append-only JSONL file; ``lock=True`` takes an exclusive lock (one writer)."""

    def __init__(self, path: str | os.PathLike, lock: bool = False):
        self.path = Path(path)
        self._lock = None
        if lock:
            self._lock = FileLock(self.path.with_name(f".{self.path.name}.lock"))
            try:
                self._lock.acquire(timeout=0)
            except Timeout:
                raise PatchRankError(f"{self.path} is being written by another process; wait for "
                                     "it or use another output folder") from None
        try:
            self._f = open(self.path, "ab+")
        except OSError:
            self._release()
            raise
        self._repair_tail()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _repair_tail(self) -> None:
        """Drop a partial last line left by a killed writer, so appends start on a fresh line."""
        f = self._f
        size = f.seek(0, os.SEEK_END)
        pos, keep = size, 0
        while pos > 0:
            step = min(65536, pos)
            pos -= step
            f.seek(pos)
            nl = f.read(step).rfind(b"\n")
            if nl >= 0:
                keep = pos + nl + 1
                break
        if keep != size:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())
        f.seek(0, os.SEEK_END)

    def write(self, rec: dict) -> None:
        self._f.write((json.dumps(rec, separators=(",", ":")) + "\n").encode())
        self._f.flush()
        os.fsync(self._f.fileno())

    @property
    def closed(self) -> bool:
        return self._f.closed

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()
        self._release()
