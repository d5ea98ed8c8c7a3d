"""Publishing a predictor: a model card (``README.md``) written from the predictor file itself.

A predictor file already carries everything a reader of its Hub page needs (the model id and
prune layer it was made for, the training settings, the command that trained it, its agreement
with golden rankings on held-out images), so the card is generated, never written by hand, and
cannot disagree with the file. Publish both with huggingface_hub's CLI (``hf upload REPO
LOCAL_PATH PATH_IN_REPO``: one file per call, or a folder holding just the two)::

    patchrank publish runs/predictor.safetensors ORG/REPO     # writes runs/README.md
    hf upload ORG/REPO runs/predictor.safetensors predictor.safetensors
    hf upload ORG/REPO runs/README.md README.md

and anyone loads it with ``pr.load_predictor("hf-hub:ORG/REPO", model=m)``; a model other than
the one in the card is refused (``ModelMismatch``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .predictor import HUB_FILE, load_predictor

PLACEHOLDER = "ORG/REPO"


def _load_call(name: str | None, pretrained: str | None) -> str:
    """The ``load_model`` call that gives the predictor's model."""
    if not name or name == "bundled":
        return "pr.load_model()"
    if pretrained and (os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))):
        return f"pr.load_model({name!r}, pretrained='/path/to/{Path(pretrained).name}')"
    return f"pr.load_model({name!r}" + (f", pretrained={pretrained!r})" if pretrained else ")")


def _model_of(p) -> tuple[str | None, str | None]:
    """(name, pretrained) of the predictor's model: as training recorded them, else read back
    from the model id (``NAME/TAG/fingerprint``, ``hf-hub:org/repo/fingerprint``, ``bundled/...``)."""
    model = p.meta.get("model") or {}
    if model.get("name"):
        return model["name"], model.get("pretrained")
    head = (p.model_id or "").rsplit("/", 1)[0]
    if not head or head.startswith(("hf-hub:", "local-dir:")) or "/" not in head:
        return head or None, None
    name, tag = head.split("/", 1)
    return name, None if tag == "random" else tag


def _hub_base(name: str | None, pretrained: str | None) -> str | None:
    """The Hub repository of the model's weights (front matter ``base_model``), if known."""
    if name and name.startswith("hf-hub:"):
        return name[len("hf-hub:"):]
    if not name or not pretrained:
        return None
    try:
        import open_clip
        spec = open_clip.get_pretrained_cfg(name, pretrained).get("hf_hub", "")
    except Exception:   # an unknown name: no base model to link
        return None
    return spec.rsplit("/", 1)[0] or None


def _equivalent_command(name: str | None, pretrained: str | None, settings: dict) -> str:
    """A ``train-predictor`` command with the recorded settings (files written before the
    command itself was recorded)."""
    flags = {"--loss": "loss", "--ratios": "keep_ratio", "--epochs": "epochs", "--batch": "batch",
             "--lr": "lr", "--wd": "weight_decay", "--val-fraction": "val_fraction",
             "--patience": "patience", "--seed": "seed"}
    parts = ["patchrank train-predictor", f"--model {name or 'bundled'}"]
    if pretrained:
        parts.append(f"--pretrained {pretrained}")
    parts += [f"{flag} {settings[key]}" for flag, key in flags.items() if settings.get(key) is not None]
    return " ".join(parts + ["--rankings RANKINGS --out predictor.safetensors"])


def _figures(val: dict) -> list[str]:
    rows = [f"| {k} | {v:.3f} |" for k, v in val.items() if isinstance(v, (int, float))]
    return ["| measure | value |", "|---|---|", *rows] if rows else ["(no held-out figures recorded)"]


def model_card(path: str | os.PathLike, repo_id: str | None = None) -> str:
    """The model card of a predictor file, as markdown with Hub front matter. ``repo_id``: the
    repository it will be uploaded to (shown in the usage lines; ``ORG/REPO`` otherwise)."""
    p = load_predictor(path)
    meta = p.meta
    name, pretrained = _model_of(p)
    repo = repo_id or PLACEHOLDER
    file = Path(path).name
    hub_name = f"hf-hub:{repo}" + ("" if file == HUB_FILE else f"/{file}")
    base = _hub_base(name, pretrained)
    title = f"{name or p.model_id}" + (f" / {pretrained}" if pretrained and os.sep not in pretrained else "")
    val = meta.get("val_metrics") or {}
    settings = meta.get("settings") or {}
    command = meta.get("command")
    lines = ["---", "library_name: patchrank", "tags:", "- patchrank", "- clip", "- token-pruning",
             *([f"base_model: {base}"] if base else []), "---", "",
             f"# PatchRank predictor for {title}", "",
             "A patch-ranking predictor (PatchRank, after [arXiv 2409.14607]"
             "(https://arxiv.org/abs/2409.14607)): it scores the patches entering block "
             f"{p.prune_layer} of the model below, so the model can drop the least important ones "
             "there and compute the rest of its image tower on fewer tokens.", "",
             "| | |", "|---|---|",
             f"| model | `{name}`" + (f", pretrained `{pretrained}`" if pretrained else "") + " |",
             f"| model id (checked on load) | `{p.model_id}` |",
             f"| prune layer | {p.prune_layer} (input of that block) |",
             f"| patches x width | {p.num_patches} x {p.width} |",
             f"| parameters | {p.num_params():,} |",
             f"| analytic cost | {p.gflops() * 1e3:.3f} MFLOPs per image |", "",
             "## Use", "", "```python", "import patchrank as pr", "",
             f"m = {_load_call(name, pretrained)}",
             f"p = pr.load_predictor({hub_name!r}, model=m)   # another model is refused",
             "emb = m.encode_image(x, keep_ratio=0.6, ranker=p)", "```", "",
             "## Training", "",
             (f"Trained with `{command}`." if command else "Trained with settings equivalent to "
              f"`{_equivalent_command(name, pretrained, settings)}`."),
             "", "```json", json.dumps({"settings": settings, "rankings": meta.get("rankings"),
                                       "num_train": meta.get("num_train"),
                                       "num_val": meta.get("num_val"),
                                       "best_epoch": meta.get("best_epoch")}, indent=1), "```", "",
             f"## Agreement with golden rankings ({meta.get('num_val', '?')} held-out images)", "",
             *_figures(val), ""]
    return "\n".join(lines)


def write_model_card(path: str | os.PathLike, out: str | os.PathLike | None = None,
                     repo_id: str | None = None) -> Path:
    """Write ``model_card(path)`` to ``out`` (default: ``README.md`` beside the predictor file,
    ready for ``hf upload ORG/REPO README.md README.md`` from that folder)."""
    out = Path(out) if out is not None else Path(path).with_name("README.md")
    out.write_text(model_card(path, repo_id))
    return out


def upload_commands(predictor: str | os.PathLike, card: str | os.PathLike, repo_id: str | None) -> list[str]:
    """The two ``hf upload`` calls (huggingface_hub's CLI: one file per call) that publish both."""
    repo = repo_id or PLACEHOLDER
    return [f"hf upload {repo} {predictor} {HUB_FILE}", f"hf upload {repo} {card} README.md"]
