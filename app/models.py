"""Switching the session's model and its label set.

Models are shared by all sessions (``engine.REGISTRY``); a session only records which one it
uses. A load that fails for any reason keeps the current model and says why in the user's
words (``app.messages``), and a successful one points the examples' background golden search
at the new model (``app.example_cache``).
"""
from __future__ import annotations

import os
import threading
import time

import app.engine as engine
import app.example_cache as example_cache
import app.messages as messages
import app.precision as precision
from .analysis import default_golden_mode, fail, model_for, predictor_for
from .examples import example_files
from .inputs import InputError, check_choice
from .progress import Progress, downloaded_mb, downloads_shown, reporter
from .sessions import session as get_session


def load_model(choice: str, arch: str = "", path: str = "", *, session: str | None = None,
               progress: Progress = None) -> tuple[str, str | None, str]:
    """Switch the session's model. Returns (status markdown, labels text or None when unchanged,
    the selector value to show). A failed load keeps the current model and says why."""
    sess = get_session(session)
    report = reporter(progress)
    if choice not in engine.MODEL_CHOICES:
        return (f"**Unknown model** {choice!r}; choose one of {', '.join(engine.MODEL_CHOICES)}. "
                "The current model is kept.", None, sess.model_key)
    report(0.05, f"loading {choice}")
    t = time.perf_counter()
    try:
        with downloads_shown(report, choice) as seen:     # size in MB and time left on the bar
            key, m = engine.REGISTRY.load(choice, arch, path)
            precision.inference_model(m)            # its bf16 copy, where the CPU runs bf16 fast
    except Exception as e:  # any reason a load fails is told to the user; the app carries on
        prev = sess.model_key
        msg = messages.model_load_failure(choice, arch, path, e, prev)
        # a failed local load keeps the menu on "local" (and its fields shown) to fix a typo
        return msg, None, "local" if choice == "local" or prev not in engine.MODEL_CHOICES else prev
    dt = time.perf_counter() - t
    report(1.0, "loaded")
    sess.model_key = key
    sess.analysis, sess.layer = None, None          # the new model prunes at its own default
    pred, why = predictor_for(sess, m)
    got = f", {downloaded_mb(seen):.0f} MB downloaded" if seen else ""
    msg = f"**Loaded** {engine.describe(m)} ({dt:.1f} s{got})."
    example_cache.WARMER.follow(key, m, default_golden_mode(session), example_files())
    if pred is None:
        msg += (f"  \n**No predictor for this model**: {why}."
                + ("" if "train-predictor" in why else f" {messages.TRAIN_HINT}"))
    return msg, ", ".join(engine.labels_for(m, sess.label_preset)), choice


def label_preset(preset: str, *, session: str | None = None) -> str:
    """Switch the session's label set for real CLIP (``engine.LABEL_PRESETS``); returns the
    labels text (a model with its own classes keeps them). The choice is kept when the model
    changes. The first use of ImageNet on a real CLIP encodes 998 prompts (minutes on 2 CPU
    cores for ViT-B; cached on the model afterwards)."""
    try:
        preset = check_choice(preset, list(engine.LABEL_PRESETS), "label set")
    except InputError as e:
        raise fail(e) from None
    sess = get_session(session)
    sess.label_preset = preset
    _, m = model_for(sess)
    return ", ".join(engine.labels_for(m, preset))


def preload_on_spaces() -> None:
    """On Spaces, load the default real-CLIP model in the background (the bundled one is ready)."""
    if engine.ON_SPACES and os.environ.get("PATCHRANK_PRELOAD", "1") != "0":
        def work():
            try:
                precision.inference_model(engine.REGISTRY.load(engine.SPACES_DEFAULT)[1])
            except Exception as e:  # the app still works with the bundled model
                print(f"[patchrank] preload of {engine.SPACES_DEFAULT} failed: {e}")
        threading.Thread(target=work, daemon=True, name="preload").start()
