"""PatchRank's exceptions: every user-facing failure says what went wrong and how to fix it."""
from __future__ import annotations


class PatchRankError(ValueError):
    """A bad input or setting (subclasses ValueError so generic handlers still catch it)."""


class WeightsUnavailable(PatchRankError):
    """Model weights could not be had (offline, unknown tag, missing file)."""


class ModelMismatch(PatchRankError):
    """A predictor / token file was made for another model."""


def check_made_for(what: str, model_id: str | None, prune_layer: int | None, m, command: str,
                   fingerprint: str | None = None) -> None:
    """The checks a predictor and a token file share: made for ``m`` and its prune layer.

    ``what`` names the file in the message ("this predictor", "these tokens"); ``command`` is
    the CLI command that makes one for another model. A file whose model id differs is still
    accepted when it was made for the same weights (``same_weights``): an open_clip model passed
    to ``patchrank.prune`` has no name, only its weights."""
    if model_id is not None and m.model_id != model_id and not same_weights(model_id, fingerprint, m):
        raise ModelMismatch(f"{what} {'was' if what.startswith('this') else 'were'} trained for "
                            f"model {model_id!r}, not {m.model_id!r}; make one for it with "
                            f"`python -m patchrank {command} --model ...` or load the matching model")
    if prune_layer is not None and m.prune_layer != prune_layer:
        raise ModelMismatch(f"{what} {'was' if what.startswith('this') else 'were'} made for pruning "
                            f"at block {prune_layer} but model {m.model_id!r} prunes at block "
                            f"{m.prune_layer}; set m.prune_layer = {prune_layer}")


def same_weights(model_id: str, fingerprint: str | None, m) -> bool:
    """True when ``m``'s weights fingerprint equals the file's: its recorded ``fingerprint`` or
    the last part of a ``name/tag/fingerprint`` model id. Computed only on an id mismatch."""
    fp = getattr(m, "fingerprint", None)
    return fp is not None and fp in (fingerprint, model_id.rsplit("/", 1)[-1])
