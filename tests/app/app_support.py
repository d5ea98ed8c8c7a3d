"""Helpers for the app tests: odd and broken image files, a fast golden stand-in, a live server.

Importing this module points everything the app writes at a fresh temporary folder (before
gradio is imported), so tests leave nothing behind in the repository.
"""
from __future__ import annotations

import contextlib
import io
import os
import socket
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("PATCHRANK_APP_TMP", tempfile.mkdtemp(prefix="patchrank-app-test-"))
os.environ.setdefault("PATCHRANK_EXAMPLE_CACHE", "0")   # the background ranking: its own tests only

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:      # `import app` must find the app/ package at the repo root
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

EXAMPLE = REPO / "assets" / "examples" / "cat-chelsea.jpg"


def _png_with_size(path: Path, w: int, h: int) -> None:
    """A tiny PNG whose header declares w x h (a decompression bomb by its size)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)          # 1-bit greyscale
    row = b"\x00" + b"\x00" * ((w + 7) // 8)
    comp = zlib.compressobj(9)
    data = b"".join(comp.compress(row) for _ in range(min(h, 64))) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def odd_images(folder: Path) -> dict[str, Path]:
    """Files the app must accept (converted) or refuse (clear message), by name."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    out = {}

    def put(name: str, fn) -> None:
        p = folder / name
        fn(p)
        out[p.stem] = p

    put("rgba.png", lambda p: rgb.convert("RGBA").save(p))
    put("palette.png", lambda p: rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(p, transparency=0))
    put("cmyk.jpg", lambda p: rgb.convert("CMYK").save(p))
    put("gray16.png", lambda p: Image.fromarray((rng.integers(0, 65535, (50, 70))).astype(np.uint16)).save(p))
    put("animated.gif", lambda p: rgb.save(p, save_all=True, append_images=[rgb.rotate(90), rgb.rotate(180)],
                                           duration=100, loop=0))

    def exif_rotated(p: Path) -> None:
        exif = Image.Exif()
        exif[0x0112] = 6                                                 # rotate 90 CW on display
        Image.new("RGB", (80, 40), (200, 30, 30)).save(p, exif=exif.tobytes())
    put("exif_rotated.jpg", exif_rotated)
    put("tiny_1x1.png", lambda p: Image.new("RGB", (1, 1), (1, 2, 3)).save(p))
    put("bomb.png", lambda p: _png_with_size(p, 30000, 30000))
    put("big_header.png", lambda p: _png_with_size(p, 8000, 6000))     # 48 MP: over the app's limit
    put("not_image.jpg", lambda p: p.write_bytes(b"this is plain text, not a JPEG\n" * 10))
    put("empty.png", lambda p: p.write_bytes(b""))

    def truncated(p: Path) -> None:
        buf = io.BytesIO()
        rgb.resize((400, 300)).save(buf, "JPEG")
        p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    put("truncated.jpg", truncated)
    return out


ACCEPTED = ("rgba", "palette", "cmyk", "gray16", "animated", "exif_rotated")
REFUSED = ("tiny_1x1", "bomb", "big_header", "not_image", "empty", "truncated")


def fast_golden(monkeypatch) -> None:
    """Replace the golden search by the token-norm order (tests of wiring, not of golden)."""
    from app import engine
    monkeypatch.setattr(engine, "golden_order",
                        lambda m, x, mode, progress=None, **kw: engine.ranker_order(m, x, "norm"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def app_process(timeout: float = 300.0):
    """``python app.py`` in its own process (own GIL, as deployed) on a free loopback port;
    yields the URL; the process is stopped (by its pid) at the end."""
    import subprocess
    import urllib.request
    port = free_port()
    env = dict(os.environ, GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port))
    log = Path(os.environ["PATCHRANK_APP_TMP"]) / f"app-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"app.py exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("app.py did not answer in time") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@contextlib.contextmanager
def running_app(golden_mode: str = "fast"):
    """Build the demo and serve it on 127.0.0.1; yields the URL; always closes the server."""
    import app
    demo = app.build_demo(golden_mode=golden_mode)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(),
                            quiet=True, **app.launch_kwargs())
    try:
        yield url
    finally:
        demo.close()
