"""Where an open_clip model's weights come from, for ``load_model``: every name open_clip accepts.

- ``NAME`` + a pretrained *tag* (``load_model("ViT-B-32", pretrained="openai")``): the tag is
  normalised as open_clip normalises it (``OpenAI``, ``laion2b-s34b-b79k``), its weights come from
  the Hub repository open_clip's table names, through ``patchrank.hub`` (the user's Hub settings,
  a fast and plain failure), then open_clip builds the model from the cache. Tags trained with
  QuickGELU (OpenAI's) get it without the user asking: open_clip 3.3 only warns about the mismatch.
- ``hf-hub:org/repo``: a Hub repository in open_clip's layout (``open_clip_config.json`` plus
  ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``); both files are fetched,
  then open_clip builds the model from the downloaded folder (``local-dir:``), so a repository
  without weights is an error instead of open_clip's silent random initialisation.
- ``NAME`` + a local checkpoint file, ``local-dir:/folder``, or ``NAME`` alone (random init).
"""
from __future__ import annotations

import difflib
import json
import logging
import os
from pathlib import Path

from . import hub
from .errors import PatchRankError, WeightsUnavailable

FOLDER = "/path/to/folder"


def canonical_tag(name: str, tag: str) -> str | None:
    """The tag as open_clip's table spells it, or None if open_clip does not know it. Found by
    asking open_clip (which normalises) rather than re-implementing its normalisation."""
    import open_clip
    cfg = open_clip.get_pretrained_cfg(name, tag)
    return next((t for t in open_clip.list_pretrained_tags_by_model(name)
                 if open_clip.get_pretrained_cfg(name, t) is cfg), None) if cfg else None


def supply_hints(name: str, tag: str | None, repo: str, files: list[str],
                 quick_gelu: bool = False) -> dict[str, str]:
    """How to supply a model's Hub files, in Python, as CLI flags and as a plain sentence."""
    import open_clip
    reach = ("make the Hub reachable (HF_ENDPOINT for a mirror, HTTPS_PROXY for a proxy, "
             "HF_HUB_OFFLINE unset)")
    get = f"`hf download {repo} {' '.join(files)} --local-dir {FOLDER}`"
    if tag is None:                                     # an hf-hub: repository: its folder
        py_use, cli_use = f"pr.load_model('local-dir:{FOLDER}')", f"--model local-dir:{FOLDER}"
    else:
        py_use = (f"pr.load_model({name!r}, pretrained='{FOLDER}/{files[0]}'"
                  + (", force_quick_gelu=True)" if quick_gelu else ")"))
        qg_name = f"{name}-quickgelu"
        cli_name = qg_name if quick_gelu and qg_name in open_clip.list_models() else name
        cli_use = f"--model {cli_name} --pretrained {FOLDER}/{files[0]}"
    return {
        "python": f"To supply them: {reach}, or where it is reachable run {get} and load "
                  f"{py_use}. pr.load_model() (the bundled model) needs no download.",
        "cli": f"To supply them: {reach}, or where it is reachable run {get} and pass "
               f"{cli_use}. --model bundled needs no download.",
        "app": "The app could not download them: make the Hugging Face Hub reachable from the "
               "machine running the app (or set HF_ENDPOINT to a mirror before starting it) and "
               "choose the model again, or download the files elsewhere and load them as a "
               "local checkpoint.",
    }


def check_vit_cfg(model_cfg: dict, name: str) -> None:
    """Refuse a non-ViT image tower from its config, before downloading hundreds of MB.
    (``models.check_vit`` checks the built model; this is the early, cheap half.)"""
    vision = (model_cfg or {}).get("vision_cfg") or {}
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)):
        raise PatchRankError(
            f"{name}: its image tower is not open_clip's VisionTransformer (timm trunk or ResNet). "
            "PatchRank prunes patch tokens of ViT towers only (e.g. ViT-B-32, ViT-B-16, ViT-L-14, "
            "ViT-S-16, or the bundled model).")


def _quiet_create(*args, **kwargs):
    """open_clip's create_model_and_transforms with its root-logger chatter off (random init
    warns on every call)."""
    import open_clip
    root = logging.getLogger()
    was, root.disabled = root.disabled, True
    try:
        return open_clip.create_model_and_transforms(*args, **kwargs)
    finally:
        root.disabled = was


def load_open_clip(name: str, pretrained: str | None, force_quick_gelu: bool | None):
    """(clip, preprocess, tokenizer, name, pretrained) for any name open_clip accepts; the
    returned name and tag are the normalised ones (what ``model_id`` records)."""
    import open_clip
    kwargs = {} if force_quick_gelu is None else {"force_quick_gelu": force_quick_gelu}
    if name.startswith(("local-dir:", hub.HUB_PREFIX)):
        if pretrained:
            raise PatchRankError(f"{name} names its own weights; drop pretrained={pretrained!r}")
        if name.startswith(hub.HUB_PREFIX):
            return _from_hub_repo(name, kwargs)
        folder = Path(name[len("local-dir:"):])
        if not (folder / "open_clip_config.json").is_file():
            raise WeightsUnavailable(f"{folder} is not an open_clip model folder (it needs "
                                     "open_clip_config.json beside the weights)")
        model, _, preprocess = _quiet_create(name, **kwargs)
        return model, preprocess, open_clip.get_tokenizer(name), name, None
    name = name.replace("/", "-")                   # open_clip reads ViT-B/32 as ViT-B-32
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=4)
        raise PatchRankError(f"unknown open_clip model {name!r}" +
                             (f"; did you mean {', '.join(close)}?" if close else ""))
    tokenizer = open_clip.get_tokenizer(name)
    if pretrained is None:
        model, _, preprocess = _quiet_create(name, pretrained=None, **kwargs)
        return model, preprocess, tokenizer, name, None
    looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
    if looks_like_path or os.path.exists(pretrained):
        if not os.path.isfile(pretrained):
            raise WeightsUnavailable(f"checkpoint file not found: {pretrained}")
        model, _, preprocess = _quiet_create(name, pretrained=pretrained, weights_only=True, **kwargs)
        return model, preprocess, tokenizer, name, pretrained
    model, preprocess = _from_tag(name, pretrained, force_quick_gelu)
    return model, preprocess, tokenizer, name, canonical_tag(name, pretrained)


def _weight_candidates(filename: str) -> list[str]:
    """open_clip's order for a Hub weights file: a safetensors twin first, then the file."""
    if not filename or filename == hub.WEIGHT_FILES[1]:
        return list(hub.WEIGHT_FILES)
    stem, ext = os.path.splitext(filename)
    return [stem + ".safetensors", filename] if ext in (".bin", ".pth") else [filename]


def _from_tag(name: str, pretrained: str, force_quick_gelu: bool | None):
    import open_clip
    tag = canonical_tag(name, pretrained)
    if tag is None:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise WeightsUnavailable(f"{name} has no pretrained tag {pretrained!r}; known tags: "
                                 f"{', '.join(tags) or 'none (random init only)'}")
    check_vit_cfg(open_clip.get_model_config(name), name)
    cfg = open_clip.get_pretrained_cfg(name, tag)
    quick_gelu = bool(cfg.get("quick_gelu")) if force_quick_gelu is None else force_quick_gelu
    if not cfg.get("hf_hub"):       # a URL-only tag (none in open_clip 3.3): open_clip's own download
        try:
            model, _, preprocess = _quiet_create(name, pretrained=tag, force_quick_gelu=quick_gelu)
        except RuntimeError as e:
            raise WeightsUnavailable(f"could not download {name}/{tag} from {cfg.get('url')}: {e}") from e
        return model, preprocess
    repo, filename = cfg["hf_hub"].rsplit("/", 1)    # open_clip's split: "org/repo/" or "org/repo/file"
    files = _weight_candidates(filename)
    hints = supply_hints(name, tag, repo, files[:1], quick_gelu)
    hub.fetch_first(repo, files, what=f"the weights of {name}/{tag}", hints=hints)
    try:
        model, _, preprocess = _quiet_create(name, pretrained=tag, force_quick_gelu=quick_gelu)
    except RuntimeError as e:   # open_clip wraps a failed (second) look-up in RuntimeError
        raise WeightsUnavailable(f"could not load {name}/{tag} from {repo}: {e}", hints) from e
    return model, preprocess


def _from_hub_repo(name: str, kwargs: dict):
    import open_clip
    repo = hub.split_hub_name(name, hub.CONFIG_FILE)[0]
    what = f"the open_clip model {name}"
    hints = supply_hints(name, None, repo, [hub.CONFIG_FILE, hub.WEIGHT_FILES[0]])
    try:
        cfg_path = hub.fetch(repo, hub.CONFIG_FILE, what=what, hints=hints)
    except WeightsUnavailable as e:
        if not hub.is_missing(e.__cause__):
            raise
        raise WeightsUnavailable(f"{name} is not an open_clip model: Hub repository {repo} has no "
                                 f"{hub.CONFIG_FILE} (open_clip needs it beside "
                                 f"{hub.WEIGHT_FILES[0]})", hints) from None
    try:
        model_cfg = json.loads(Path(cfg_path).read_text())["model_cfg"]
    except (ValueError, KeyError, TypeError):
        raise WeightsUnavailable(f"{name}: {hub.CONFIG_FILE} in {repo} is not an open_clip config "
                                 "(no model_cfg)", hints) from None
    check_vit_cfg(model_cfg, name)
    weights = hub.fetch_first(repo, list(hub.WEIGHT_FILES), what=f"the weights of {name}", hints=hints)
    folder = Path(cfg_path).parent
    if Path(weights).parent != folder:     # the repository changed between the two downloads
        raise WeightsUnavailable(f"{repo} changed while its files were downloaded; load it again", hints)
    model, _, preprocess = _quiet_create(f"local-dir:{folder}", **kwargs)
    return model, preprocess, open_clip.get_tokenizer(name), name, None
