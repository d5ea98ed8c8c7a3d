"""The predictor menu: predictors known for the loaded model, loaded on choice.

The list is ``assets/predictors.json`` (repository-only, like the examples) plus
``$PATCHRANK_PREDICTORS`` (a path to another such file, or the JSON itself); the format and the
matching are the engine's (``patchrank.predictor_list``). Only entries made for the session's
model are offered, so a predictor for another model is never listed. Choosing one loads it with
``pr.load_predictor(source, model=m)`` (``hf-hub:`` sources download through huggingface_hub,
with the download shown on the progress bar) and re-analyses the image with it; a load that
fails (unreachable, not a predictor, trained for other weights) keeps the current predictor
and says why. An uploaded file is accepted too (``upload_predictor``), for the session's model only.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

from patchrank import predictor_list
from patchrank.errors import ModelMismatch, PatchRankError, WeightsUnavailable

import app.engine as engine
from .analysis import fail, model_for
from .inputs import InputError, file_path
from .progress import Progress, downloads_shown, reporter
from .sessions import MAX_PREDICTORS_PER_SESSION, session as get_session

#: The shipped list (repository-only: the app runs from the repository or a Space).
LIST_FILE = Path(__file__).resolve().parent.parent / "assets" / "predictors.json"
LISTED = "listed "              # PredictorInfo.source prefix of a predictor chosen in the menu


def known(m) -> tuple[list[predictor_list.KnownPredictor], list[str]]:
    """Entries for model ``m`` from the shipped list and ``$PATCHRANK_PREDICTORS``; problems."""
    return predictor_list.known_for(m, [LIST_FILE] if LIST_FILE.is_file() else [])


def _label(e: predictor_list.KnownPredictor) -> str:
    return f"{e.description or e.source} [{e.source if e.source != 'bundled' else 'bundled'}]"


def current_source(session: str | None) -> str | None:
    """The menu value for what the session uses now: a listed source, or None (an uploaded file,
    or no predictor)."""
    sess = get_session(session)
    _, m = model_for(sess)
    info = sess.predictors.get(m.model_id)
    if info is None:
        return predictor_list.BUNDLED if engine.bundled_predictor(m)[0] is not None else None
    return info.source[len(LISTED):] if info.source.startswith(LISTED) else None


def menu_choices(m) -> list[tuple[str, str]]:
    """(label, source) of every predictor listed for model ``m``, for the menu."""
    return [(_label(e), e.source) for e in known(m)[0]]


def menu_update(session: str | None) -> dict:
    """The menu for the session's current model: its listed predictors, the one in use chosen."""
    _, m = model_for(get_session(session))
    choices = menu_choices(m)
    value = current_source(session)
    return gr.update(choices=choices, value=value if value in {c[1] for c in choices} else None,
                     interactive=bool(choices),
                     info=(f"{len(choices)} listed for {m.name}" if choices else
                           f"none listed for {m.name}: upload a file below, or add one to "
                           "assets/predictors.json or PATCHRANK_PREDICTORS"))


def choose(source: str, *, session: str | None = None, progress: Progress = None) -> str:
    """Use the listed predictor ``source`` for the session's model. Returns a status message;
    raises ``gr.Error`` (the current predictor kept) when it is not listed for this model or
    cannot be loaded."""
    sess = get_session(session)
    _, m = model_for(sess)
    entries, _ = known(m)
    entry = next((e for e in entries if e.source == source), None)
    if entry is None:
        raise gr.Error(f"{source!r} is not a predictor listed for {m.name}; the current predictor "
                       "is kept.", print_exception=False)
    report = reporter(progress)
    report(None, f"loading predictor {source}")
    try:
        with downloads_shown(report, "the predictor"):
            p = predictor_list.load(entry, m)
    except ModelMismatch as e:
        raise gr.Error(f"The listed predictor {source} can't be used with {m.name}: {e}. The current "
                       "predictor is kept.", print_exception=False) from None
    except WeightsUnavailable as e:
        raise gr.Error(f"Could not get the predictor {source}: {e.problem}. {e.hints.get('app', '')} "
                       "The current predictor is kept.", print_exception=False) from None
    except (PatchRankError, OSError) as e:
        raise gr.Error(f"The listed predictor {source} is not usable: {e}. The current predictor is "
                       "kept.", print_exception=False) from None
    if entry.source == predictor_list.BUNDLED:
        sess.predictors.pop(m.model_id, None)       # the default: the shipped predictor
    else:
        sess.predictors[m.model_id] = engine.PredictorInfo(p, LISTED + entry.source,
                                                           predictor_list.digest(p))
    sess.analysis = None
    return f"**Predictor** {entry.description or entry.source} (`{entry.source}`) in use for {m.name}."


def upload_predictor(file: Any, *, session: str | None = None) -> str:
    """Use an uploaded predictor file for the session's current model; refuses a file made for
    another model. Returns a status message (markdown)."""
    sess = get_session(session)
    try:
        path = file_path(file, "predictor file")
    except InputError as e:
        raise fail(e) from None
    _, m = model_for(sess)
    orig = file.get("orig_name") if isinstance(file, dict) else getattr(file, "orig_name", None)
    name = Path(orig or path.name).name
    try:
        info = engine.load_uploaded_predictor(m, str(path), name)
    except engine.EngineMissing as e:
        raise fail(e) from None
    except ModelMismatch as e:
        raise gr.Error(f"This predictor file can't be used with {m.name}: {e}", print_exception=False) from None
    except PatchRankError as e:   # not a predictor, or a corrupt / truncated one
        raise gr.Error(f"This file is not a usable PatchRank predictor: {e}", print_exception=False) from None
    except Exception as e:  # safetensors/JSON errors for files that are not predictors at all
        raise gr.Error(f"This file is not a PatchRank predictor ({type(e).__name__}: {e}).",
                       print_exception=False) from None
    while len(sess.predictors) >= MAX_PREDICTORS_PER_SESSION:
        sess.predictors.pop(next(iter(sess.predictors)))
    sess.predictors[m.model_id] = info
    sess.analysis = None
    return (f"**Predictor loaded** from `{name}` for {m.name}. Analyse an image to use it "
            "(it replaces the bundled predictor in this session only).")
