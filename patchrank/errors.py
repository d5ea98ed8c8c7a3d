"""PatchRank's exceptions: every user-facing failure says what went wrong and how to fix it."""


class PatchRankError(ValueError):
    """A bad input or setting (subclasses ValueError so generic handlers still catch it)."""


class WeightsUnavailable(PatchRankError):
    """Model weights could not be had (offline, unknown tag, missing file)."""


class ModelMismatch(PatchRankError):
    """A predictor / token file was made for another model."""
