"""The predictor menu: predictors known for the loaded model, loaded on choice.

The list is ``assets/predictors.json`` (repository-only, like the examples) plus
``$PATCHRANK_PREDICTORS`` (a path to another such file, or the JSON itself); the format and the
matching are the engine's (``patchrank.predictor_list``). Only entries made for the session's
model are offered, so a predictor for another model is never listed. Choosing one loads it with
``pr.load_predictor(source, model=m)`` (``hf-hub:`` sources download through huggingface_hub,
with the download shown on the progress bar) and re-analyses the image with it; a load that
fails (unreachable, not a predictor, trained for other weights) keeps the current predictor
and says why. An uploaded file is still accepted (``handlers.upload_predictor``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from patchrank import predictor_list
from patchrank.errors import ModelMismatch, PatchRankError, WeightsUnavailable

from . import engine, events as E, handlers as H, state as S
from .progress import downloads_shown
from .store import session as get_session

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
    _, m = H._model_for(sess)
    info = sess.predictors.get(m.model_id)
    if info is None:
        return predictor_list.BUNDLED if engine.bundled_predictor(m)[0] is not None else None
    return info.source[len(LISTED):] if info.source.startswith(LISTED) else None


def menu_update(session: str | None) -> dict:
    """The menu for the session's current model: its listed predictors, the one in use chosen."""
    _, m = H._model_for(get_session(session))
    entries, _ = known(m)
    choices = [(_label(e), e.source) for e in entries]
    value = current_source(session)
    return gr.update(choices=choices, value=value if value in {c[1] for c in choices} else None,
                     interactive=bool(choices),
                     info=(f"{len(choices)} listed for {m.name}" if choices else
                           f"none listed for {m.name}: upload a file below, or add one to "
                           "assets/predictors.json or PATCHRANK_PREDICTORS"))


def choose(source: str, *, session: str | None = None, progress: H.Progress = None) -> str:
    """Use the listed predictor ``source`` for the session's model. Returns a status message;
    raises ``gr.Error`` (the current predictor kept) when it is not listed for this model or
    cannot be loaded."""
    sess = get_session(session)
    _, m = H._model_for(sess)
    entries, _ = known(m)
    entry = next((e for e in entries if e.source == source), None)
    if entry is None:
        raise gr.Error(f"{source!r} is not a predictor listed for {m.name}; the current predictor "
                       "is kept.", print_exception=False)
    report = H._progress_fn(progress)
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


# -- UI -------------------------------------------------------------------------------------------
def components(c: dict[str, Any]) -> None:
    """The menu (inside the "Model and predictor" accordion), filled for the bundled model."""
    entries, _ = known(engine.REGISTRY.bundled())
    c["pred_menu"] = gr.Dropdown([(_label(e), e.source) for e in entries],
                                 value=predictor_list.BUNDLED if entries else None,
                                 label="Known predictors for this model", elem_id="pr-pred-menu",
                                 info="from assets/predictors.json and PATCHRANK_PREDICTORS")


def on_choose(choice, image, golden_mode, ratio, left, right, labels, use_tokens,
              request: gr.Request, progress=gr.Progress()) -> Iterator[tuple]:
    """A predictor chosen in the menu, then the image analysed with it, as one request. A
    failure is one toast; the menu goes back to the predictor still in use."""
    sid = E._sid(request)
    try:
        msg = choose(choice, session=sid, progress=progress)
    except gr.Error as e:
        gr.Warning(e.message)
        yield (gr.update(value=current_source(sid)), f"**Predictor not changed**: {e.message}") \
            + E.pack({}, E.IMAGE_KEYS)
        return
    yield (gr.skip(), msg) + E.pack({}, E.IMAGE_KEYS)
    view = S.view_of(ratio, left, right, labels, use_tokens)
    for d in S.image_stream(image, golden_mode, view, session=sid, progress=progress):
        yield (gr.skip(), gr.skip()) + E.pack(d, E.IMAGE_KEYS)


def api_choose(choice, request: gr.Request, progress=gr.Progress()) -> str:
    """``/choose_predictor``: use a listed predictor (refused if not listed for the model)."""
    return choose(choice, session=E._sid(request), progress=progress)


def api_list(request: gr.Request) -> list[dict]:
    """``/predictors``: the predictors listed for the session's model."""
    _, m = H._model_for(get_session(E._sid(request)))
    return [{"model": e.model, "tag": e.tag, "source": e.source, "description": e.description}
            for e in known(m)[0]]


def wire(c: dict[str, Any], image_in: list, image_out: list, model_kw: dict) -> None:
    """The menu's event and the named endpoints ``/choose_predictor`` and ``/predictors``."""
    c["pred_menu"].select(on_choose, [c["pred_menu"]] + image_in,
                          [c["pred_menu"], c["pred_status"]] + image_out, preprocess=False,
                          api_visibility="private", **model_kw)
    source = gr.Textbox(visible=False)        # any text: refused in words if not listed
    gr.Button(visible=False).click(api_choose, [source], [c["pred_status"]],
                                   api_name="choose_predictor", **model_kw)
    gr.Button(visible=False).click(api_list, None, gr.JSON(visible=False), api_name="predictors")
