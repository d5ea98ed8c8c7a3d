"""Small PatchRank files (predictors, learnable tokens): safetensors tensors with a JSON header
in the file's own metadata, so weights and the settings/model id they belong to cannot drift.
Such a file travels as it is: a local path, or ``hf-hub:org/repo[/file]`` on the Hugging Face
Hub (``locate``); the header, not the file's name or place, says which model it was made for."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from . import hub
from .errors import PatchRankError, WeightsUnavailable
from .files import atomic_path


def save_with_header(module: torch.nn.Module, path: str | os.PathLike, header: dict) -> Path:
    """Atomic write (tmp + rename): an interrupted save never leaves a half file."""
    from safetensors.torch import save_file
    sd = {k: v.detach().float().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(sd, str(tmp), metadata={"patchrank": json.dumps(header)})
    return Path(path)


def locate(spec: str | os.PathLike, what: str, default_file: str, flag: str) -> Path:
    """The local file a spec names: a path as it is, or ``hf-hub:org/repo`` (``default_file``
    in it) / ``hf-hub:org/repo/dir/file`` fetched through huggingface_hub's cache. ``what``
    ("predictor", "tokens") and ``flag`` (the CLI option, e.g. ``--predictor``) word the
    message when the Hub cannot give it."""
    text = os.fspath(spec)
    if not text.startswith(hub.HUB_PREFIX):
        if not Path(text).is_file():
            raise WeightsUnavailable(f"{what} file not found: {text}")
        return Path(text)
    repo, filename = hub.split_hub_name(text, default_file)
    local = f"/path/to/folder/{filename}"
    fn = "load_predictor" if what == "predictor" else "load_tokens"
    reach = ("make the Hub reachable (HF_ENDPOINT for a mirror, HTTPS_PROXY for a proxy, "
             "HF_HUB_OFFLINE unset)")
    get = f"`hf download {repo} {filename} --local-dir /path/to/folder`"
    hints = {"python": f"To supply it: {reach}, or where it is reachable run {get} and load "
                       f"pr.{fn}('{local}').",
             "cli": f"To supply it: {reach}, or where it is reachable run {get} and pass {flag} {local}.",
             "app": f"The app could not download the {what} file: make the Hugging Face Hub "
                    "reachable from the machine running the app, or download the file elsewhere "
                    "and upload it."}
    return Path(hub.fetch(repo, filename, what=f"the {what} {text}", hints=hints))


def _unreadable(path, what: str, e: Exception) -> PatchRankError:
    return PatchRankError(f"{path} is not a readable PatchRank {what} file ({type(e).__name__}: "
                          f"{' '.join(str(e).split())[:160]}); it may be truncated or not a "
                          f"safetensors file: download or save it again")


def load_tensors(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a file whose header was read: a truncated body is a plain error."""
    from safetensors.torch import load_file
    try:
        return load_file(str(path))
    except Exception as e:   # safetensors' own error types differ between versions
        raise _unreadable(path, what, e) from e


def read_header(path: str | os.PathLike, fmt: str, what: str) -> dict:
    """The JSON header of a file of format ``fmt`` without loading its tensors; a file that is
    not safetensors, or is cut short, is refused with a message saying so."""
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            md = f.metadata() or {}
        head = json.loads(md.get("patchrank", "{}"))
    except Exception as e:   # safetensors' own error types differ between versions
        raise _unreadable(path, what, e) from e
    seen = head.get("format") if isinstance(head, dict) else None
    if seen != fmt:
        raise PatchRankError(f"{path} is not a PatchRank {what} file (format {seen!r})")
    return head
