"""A Hugging Face Hub stand-in for tests: a threaded HTTP server on 127.0.0.1 (a free port)
that speaks the part of the Hub protocol ``huggingface_hub.hf_hub_download`` uses, so tests
run the real download code path with ``HF_ENDPOINT`` pointed here, never a mock.

What ``hf_hub_download`` needs (huggingface_hub's ``file_download.py``): ``HEAD`` then ``GET``
on ``/{org}/{repo}/resolve/{revision}/{filename}``; the HEAD answer carries ``X-Repo-Commit``
(40 hex digits: the snapshot folder in the cache), ``ETag`` (the blob's name in the cache) and
``Content-Length``; a GET with ``Range: bytes=N-`` (a resumed download) gets 206 and
``Content-Range``. Errors are told apart by ``X-Error-Code``: ``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound`` (with ``X-Repo-Commit``, as the Hub sends it).

Faults a test can inject per file (``fail``): ``"404"`` (a bare 404, no error code), ``"500"``,
and ``"drop"`` (the connection closes halfway through the body, on every try, as a broken
mirror would). Also ``closed_port()`` (nothing listens) and ``silent_endpoint()`` (accepts
connections, never answers). Helpers write random-init open_clip checkpoints in the layout
open_clip's Hub repositories use (``open_clip_config.json`` + ``open_clip_model.safetensors``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

RESOLVE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<file>.+)$")
CHUNK = 1 << 20


class HubStandIn:
    """Serves files put in it with ``add``; ``url`` is the value for ``HF_ENDPOINT``."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, tuple[Path, str]]] = {}   # repo -> file -> (path, etag)
        self.faults: dict[tuple[str, str], str] = {}
        self.requests: list[tuple[str, str]] = []                # (method, path) as received
        self._server: ThreadingHTTPServer | None = None

    # -- content -----------------------------------------------------------------------------
    def add(self, repo: str, filename: str, path: Path) -> None:
        """Serve ``path`` as ``filename`` of ``repo`` (its sha256 is the ETag, as for LFS files)."""
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                h.update(block)
        self.repos.setdefault(repo, {})[filename] = (Path(path), h.hexdigest())

    def add_folder(self, repo: str, folder: Path) -> None:
        for p in sorted(Path(folder).iterdir()):
            if p.is_file():
                self.add(repo, p.name, p)

    def fail(self, repo: str, filename: str, fault: str | None) -> None:
        """Inject ``"404"``, ``"500"`` or ``"drop"`` for one file (None clears it)."""
        if fault is None:
            self.faults.pop((repo, filename), None)
        else:
            assert fault in ("404", "500", "drop"), fault
            self.faults[(repo, filename)] = fault

    def commit(self, repo: str) -> str:
        """The repository's commit: a hash of its files, so changing a file changes it."""
        listing = sorted((f, etag) for f, (_, etag) in self.repos.get(repo, {}).items())
        return hashlib.sha1(json.dumps([repo, listing]).encode()).hexdigest()

    # -- server --------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None, "start() the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> "HubStandIn":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "HubStandIn":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"          # keep-alive, as the Hub: every answer has a length
    hub: HubStandIn

    def log_message(self, *args) -> None:  # quiet: the tests read hub.requests instead
        pass

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _plain(self, status: int, headers: dict[str, str] | None = None) -> None:
        text = json.dumps({"error": f"HTTP {status}"}).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(text)

    def _answer(self, body: bool) -> None:
        self.hub.requests.append((self.command, self.path))
        m = RESOLVE.match(unquote(self.path.split("?")[0]))
        if not m:
            return self._plain(404)
        repo, rev, name = m["repo"], m["rev"], m["file"]
        files = self.hub.repos.get(repo)
        if files is None:
            return self._plain(404, {"X-Error-Code": "RepoNotFound",
                                     "X-Error-Message": "Repository not found"})
        commit = self.hub.commit(repo)
        if rev not in ("main", commit):
            return self._plain(404, {"X-Error-Code": "RevisionNotFound"})
        fault = self.hub.faults.get((repo, name))
        if fault in ("404", "500"):
            return self._plain(int(fault))
        if name not in files:
            return self._plain(404, {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit})
        path, etag = files[name]
        size = path.stat().st_size
        start = _range_start(self.headers.get("Range"))
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", commit)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        if body:
            self._send_file(path, start, size // 2 if fault == "drop" else size)

    def _send_file(self, path: Path, start: int, stop: int) -> None:
        """The bytes [start, stop); short of the file's end means a dropped connection."""
        with open(path, "rb") as f:
            f.seek(start)
            left = max(0, stop - start)
            while left:
                block = f.read(min(CHUNK, left))
                if not block:
                    break
                self.wfile.write(block)
                left -= len(block)
        if stop < path.stat().st_size:
            self.wfile.flush()
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)


def _range_start(header: str | None) -> int:
    m = re.match(r"bytes=(\d+)-", header or "")
    return int(m.group(1)) if m else 0


# -- endpoints that fail ----------------------------------------------------------------------------
def closed_port() -> str:
    """An endpoint URL where nothing listens (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections (the kernel's backlog) and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


# -- checkpoints in open_clip's Hub layout ----------------------------------------------------------
TINY_CFG = {"embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def write_open_clip_repo(folder: Path, model_cfg: dict | None = None, *, name: str | None = None,
                         seed: int = 0, half: bool = False) -> dict:
    """Write a random-init checkpoint as open_clip's Hub repositories hold one: the weights in
    ``open_clip_model.safetensors`` and ``open_clip_config.json`` (``model_cfg`` +
    ``preprocess_cfg``). ``name``: a built-in architecture (its config); ``half``: float16 on
    disk (half the bytes; open_clip casts to the model's dtype on load). Returns the state dict."""
    import open_clip
    import torch
    from safetensors.torch import save_file
    cfg = dict(open_clip.get_model_config(name) if name else model_cfg)
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**cfg)
    sd = {k: (v.half() if half and v.is_floating_point() else v).contiguous()
          for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "open_clip_model.safetensors"))
    pre = {"mean": list(open_clip.OPENAI_DATASET_MEAN), "std": list(open_clip.OPENAI_DATASET_STD),
           "interpolation": "bicubic", "resize_mode": "shortest"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}))
    return sd
