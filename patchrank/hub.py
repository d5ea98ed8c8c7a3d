"""Files from the Hugging Face Hub, fetched by huggingface_hub exactly as it fetches them for
everyone, with one PatchRank addition: failing fast, with one message that names the file.

PatchRank never configures the Hub for its user. ``HF_ENDPOINT`` (a mirror), ``HF_HOME`` /
``HF_HUB_CACHE`` (where files are kept), ``HF_HUB_OFFLINE``, ``HF_TOKEN`` and the proxy variables
are read by huggingface_hub itself, so a file fetched here is the one ``hf_hub_download`` or
``hf download`` would give, in the same cache, and open_clip finds it there afterwards.

Why a check before downloading: when a file is not cached and its first request fails,
huggingface_hub retries with exponential backoff (about 25 s on a refused connection, minutes on
a Hub that does not answer), since it cannot tell a Hub that is down from one that hiccups. So
before downloading a file that is *not* in the cache, ``fetch`` asks for its metadata once,
without retries and within ``HF_HUB_ETAG_TIMEOUT`` (10 s unless the user set it). A Hub that
refuses, does not answer, answers 404 or 500, or is switched off with ``HF_HUB_OFFLINE`` then gives
one ``WeightsUnavailable`` in seconds. A file already cached is left to huggingface_hub entirely
(it looks for a newer version and falls back to the cache at once when the Hub is unreachable).
A connection dropped mid-file is resumed by huggingface_hub itself (5 tries, 1 s apart) before
it gives up, and that is reported the same way.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from .downloads import bar_class  # a watcher (the app) sees size and bytes
from .errors import PatchRankError, WeightsUnavailable

HUB_PREFIX = "hf-hub:"
#: What open_clip reads from a Hub repository (``hf-hub:`` names and pretrained tags).
CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def split_hub_name(spec: str, default_file: str) -> tuple[str, str]:
    """``hf-hub:org/repo`` -> (``org/repo``, ``default_file``); ``hf-hub:org/repo/dir/f.safetensors``
    -> (``org/repo``, ``dir/f.safetensors``): a repo id is two parts, the rest names the file."""
    parts = [p for p in spec[len(HUB_PREFIX):].strip().split("/") if p]
    if len(parts) < 2:
        raise PatchRankError(f"{spec!r}: a Hub name is hf-hub:ORG/REPO (optionally /FILE), e.g. "
                             f"hf-hub:org/patchrank-vit-b-16/{default_file}")
    return "/".join(parts[:2]), "/".join(parts[2:]) or default_file


def endpoint() -> str:
    """The Hub huggingface_hub talks to (``HF_ENDPOINT``, read by huggingface_hub at import)."""
    from huggingface_hub import constants
    return constants.ENDPOINT


def fetch(repo: str, filename: str, *, what: str, hints: dict[str, str] | None = None) -> str:
    """Local path of ``filename`` in Hub repository ``repo``: the cache, or a download into it.

    ``what`` names the thing in the message (e.g. "the weights of ViT-B-32/openai"); ``hints``
    say how to supply it where the user is (see ``WeightsUnavailable``)."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
    try:
        cached = try_to_load_from_cache(repo, filename)
        if not isinstance(cached, str) and not constants.HF_HUB_OFFLINE:
            _check_reachable(repo, filename)
        return hf_hub_download(repo, filename, tqdm_class=bar_class())
    except PatchRankError:
        raise
    except Exception as e:  # huggingface_hub's, httpx's or the OS's: all say the same to the user
        raise WeightsUnavailable(f"cannot get {what} (file {filename} of Hub repository {repo}): "
                                 f"{reason(e, repo, filename)}", hints) from e


def fetch_first(repo: str, filenames: Sequence[str], *, what: str,
                hints: dict[str, str] | None = None) -> str:
    """The first of ``filenames`` the repository has (open_clip's order: safetensors, then the
    pickle). Only "no such file" moves on to the next; any other failure is reported at once."""
    from huggingface_hub import constants, try_to_load_from_cache
    if constants.HF_HUB_OFFLINE:                      # offline: whichever the cache holds
        for f in filenames:
            if isinstance(try_to_load_from_cache(repo, f), str):
                return fetch(repo, f, what=what, hints=hints)
        return fetch(repo, filenames[0], what=what, hints=hints)
    for f in filenames:
        try:
            return fetch(repo, f, what=what, hints=hints)
        except WeightsUnavailable as e:
            if not is_missing(e.__cause__):
                raise
    raise WeightsUnavailable(f"cannot get {what}: Hub repository {repo} at {endpoint()} has none "
                             f"of the files {', '.join(filenames)}", hints)


def _check_reachable(repo: str, filename: str) -> None:
    """One metadata request, no retries, within HF_HUB_ETAG_TIMEOUT (see the module docstring)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    get_hf_file_metadata(hf_hub_url(repo, filename), timeout=constants.HF_HUB_ETAG_TIMEOUT)


# -- what went wrong, in words ---------------------------------------------------------------------
def _chain(e: BaseException | None) -> Iterator[BaseException]:
    seen: list[BaseException] = []
    while e is not None and all(e is not s for s in seen):
        seen.append(e)
        yield e
        e = e.__cause__ or e.__context__


def _kinds(e: BaseException) -> set[str]:
    """Class names of ``e`` and its bases. Errors are told apart by name because they come from
    huggingface_hub, httpx2/httpx or requests depending on the installed huggingface_hub."""
    return {c.__name__ for c in type(e).__mro__}


def _status(e: BaseException) -> int | None:
    return getattr(getattr(e, "response", None), "status_code", None)


def is_missing(e: BaseException | None) -> bool:
    """True when the Hub said the *file* does not exist (the repository does)."""
    for err in _chain(e):
        k = _kinds(err)
        if k & {"RepositoryNotFoundError", "RevisionNotFoundError", "LocalEntryNotFoundError"}:
            return False
        if "EntryNotFoundError" in k or _status(err) == 404:
            return True
    return False


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text[:200]}"


def reason(e: BaseException, repo: str, filename: str) -> str:
    """Why a Hub file could not be had, as one clause a user can act on."""
    from huggingface_hub import constants
    hub = f"the Hub at {constants.ENDPOINT}"
    for err in _chain(e):
        k, status = _kinds(err), _status(err)
        if "OfflineModeIsEnabled" in k or ("LocalEntryNotFoundError" in k and constants.HF_HUB_OFFLINE):
            return (f"HF_HUB_OFFLINE is set and the file is not in the Hugging Face cache "
                    f"({constants.HF_HUB_CACHE})")
        if "GatedRepoError" in k:
            return f"{repo} is gated: accept its terms on the Hub and log in with `hf auth login`"
        if "RepositoryNotFoundError" in k:
            return f"{hub} has no repository {repo} (if it is private, log in with `hf auth login`)"
        if "RevisionNotFoundError" in k:
            return f"{hub} has no such revision of {repo}"
        if "EntryNotFoundError" in k and "LocalEntryNotFoundError" not in k:
            return f"the repository has no file {filename} (HTTP 404)"
        if "ProxyError" in k:
            return f"the proxy refused the connection to {constants.ENDPOINT} ({_short(err)})"
        if k & {"TimeoutException", "Timeout", "TimeoutError"}:
            return (f"{hub} did not answer in time (HF_HUB_ETAG_TIMEOUT="
                    f"{constants.HF_HUB_ETAG_TIMEOUT} s, HF_HUB_DOWNLOAD_TIMEOUT="
                    f"{constants.HF_HUB_DOWNLOAD_TIMEOUT} s)")
        if (k & {"RemoteProtocolError", "ReadError", "ChunkedEncodingError", "IncompleteRead"}
                or "Consistency check failed" in str(err)):
            return f"the connection dropped before the whole file arrived ({_short(err)})"
        if k & {"ConnectError", "ConnectionError", "NetworkError"}:
            return f"{hub} could not be reached ({_short(err)})"
        if status is not None:
            return f"{hub} answered HTTP {status}" + (" (not found)" if status == 404 else "")
    return _short(e)
