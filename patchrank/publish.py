"""Publishing a predictor: a model card (``README.md``) written from the predictor file itself.

A predictor file already carries everything a reader of its Hub page needs (the model id and
prune layer it was made for, the training settings, the command that trained it, its agreement
with golden rankings on held-out images), so the card is generated, never written by hand, and
cannot disagree with the file. Publish both with huggingface_hub's CLI::

    hf upload ORG/REPO predictor.safetensors README.md

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
    model = meta.get("model") or {}
    name, pretrained = model.get("name"), model.get("pretrained")
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
    ready for ``hf upload ORG/REPO predictor.safetensors README.md`` from that folder)."""
    out = Path(out) if out is not None else Path(path).with_name("README.md")
    out.write_text(model_card(path, repo_id))
    return out
