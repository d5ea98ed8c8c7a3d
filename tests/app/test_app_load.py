"""Load: 20 concurrent gradio_client users for 60 s on loopback, no errors; reports p50/p95.

Each user analyses the same photo once (the shared analysis cache computes it once), then loops
(bounded) over slider drags (``/threshold``, no model run) with a release (``/prune``, one pruned
and one full forward plus timing) every fourth step. ``PATCHRANK_LOAD_SECONDS`` shortens it.
"""
import json
import os
import random
import statistics
import threading
import time

from tests.app import app_support as S  # noqa: F401  (sets the app temp folder before gradio loads)
import pytest
from gradio_client import Client, handle_file

pytestmark = pytest.mark.load

USERS = 20
SECONDS = float(os.environ.get("PATCHRANK_LOAD_SECONDS", "60"))
MAX_STEPS = 400                    # per user: the loop is bounded even if the server is very fast
TIMEOUT_S = 120                    # per HTTP call (gradio_client's default of 5 s is for idle hosts)
LABELS = "top, pair of trousers, sandal, sneaker, bag, ankle boot"


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


@pytest.mark.timeout(600)
def test_twenty_users_one_minute(tmp_path):
    timings: dict[str, list[float]] = {"analyze": [], "threshold": [], "prune": []}
    errors: list[str] = []
    lock = threading.Lock()

    def user(i: int, c: Client, stop_at: list[float]) -> None:
        rng = random.Random(i)
        try:
            def call(name, *args):
                t = time.perf_counter()
                out = c.predict(*args, api_name=f"/{name}")
                with lock:
                    timings[name].append(time.perf_counter() - t)
                return out
            right = rng.choice(["attention", "norm", "random"])
            call("analyze", handle_file(str(S.EXAMPLE)), "fast", 0.5, "golden", right)
            for step in range(MAX_STEPS):
                if time.perf_counter() > stop_at[0]:
                    break
                r = round(rng.uniform(0.05, 1.0), 2)
                out = call("threshold", r, "golden", right)
                assert f"{max(1, round(r * 196))} of 196" in out[2]
                if step % 4 == 3:
                    call("prune", r, "golden", right, LABELS)
        except Exception as e:  # collected and reported below; one failure fails the test
            with lock:
                errors.append(f"user {i}: {type(e).__name__}: {e}")

    with S.app_process() as url:                   # the server in its own process, as deployed
        clients = [Client(url, verbose=False, analytics_enabled=False, httpx_kwargs={"timeout": TIMEOUT_S},
                          download_files=str(tmp_path / f"u{i}"))
                   for i in range(USERS)]          # connected first, so the clock measures use only
        stop_at = [time.perf_counter() + SECONDS]
        threads = [threading.Thread(target=user, args=(i, c, stop_at), daemon=True)
                   for i, c in enumerate(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=SECONDS + 300)
        assert not any(t.is_alive() for t in threads), "some users never finished"
        for c in clients:
            c.close()
    report = {name: {"n": len(v), "p50_ms": 1e3 * statistics.median(v), "p95_ms": 1e3 * _pct(v, 0.95)}
              for name, v in timings.items() if v}
    print("\nload test (20 users, %.0f s):\n%s" % (SECONDS, json.dumps(report, indent=1)))
    assert not errors, "\n".join(errors[:5])
    assert len(timings["analyze"]) == USERS
    assert len(timings["threshold"]) >= USERS
