"""The bundled model and its evaluation split (``patchrank/assets/bundled/``), loaded offline.

They ship inside the package (package data of the wheel), so ``pip install`` gives a working
``load_model()`` with no repository and no download.

Files (each far below the Hub's 10 MB limit):
- ``config.json``: open_clip model config, prune layer, class names, zero-shot template.
- ``model.safetensors``: fp16 weights. The text token embedding is stored as only the rows
  training used (``token_embedding.rows`` with their BPE ids ``token_embedding.ids``) and rebuilt
  as a standard 49,408-row table at load, so open_clip's standard tokenizer still works. Words
  never seen in training map to zero vectors: they carry no meaning to this model.
- ``eval.npz``: the shipped evaluation split (JPEG bytes, labels, per-patch target coverage),
  read by ``eval_split``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .data import scenes as S
from .errors import WeightsUnavailable
from .models import PatchModel
from .train_clip import build_clip, load_config

#: The package's data folder; ``PATCHRANK_ASSETS`` points it elsewhere (a folder holding
#: ``bundled/``), e.g. to try a retrained model without reinstalling.
ASSETS = Path(os.environ.get("PATCHRANK_ASSETS", Path(__file__).resolve().parent / "assets"))
BUNDLED_DIR = ASSETS / "bundled"


def require_asset(path: Path) -> Path:
    """``path`` if the bundled file is there, else an error saying how to get it back."""
    if not path.is_file():
        raise WeightsUnavailable(f"bundled asset missing: {path}. It ships inside the patchrank "
                                 "package (patchrank/assets/bundled); reinstall the package or set "
                                 "PATCHRANK_ASSETS to a folder holding bundled/.")
    return path


def load_bundled(prune_layer: int | None = None, folder: str | os.PathLike = BUNDLED_DIR):
    """The bundled CLIP as a PatchModel; ``folder`` reads another export of ``train-clip``
    (``--export``) instead, e.g. a training variant under comparison."""
    import open_clip
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads(require_asset(folder / "config.json").read_text())
    wpath = require_asset(folder / "model.safetensors")
    sd = load_file(str(wpath))
    ids, rows = sd.pop("token_embedding.ids").long(), sd.pop("token_embedding.rows")
    table = torch.zeros(cfg["model_cfg"]["text_cfg"]["vocab_size"], rows.shape[1], dtype=rows.dtype)
    table[ids] = rows
    sd["token_embedding.weight"] = table
    clip = build_clip(cfg["model_cfg"])
    clip.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    size = cfg["model_cfg"]["vision_cfg"]["image_size"]
    preprocess = open_clip.image_transform(size, is_train=False)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=cfg["model_cfg"]["text_cfg"]["context_length"])
    digest = hashlib.sha256(wpath.read_bytes()).hexdigest()[:12]
    return PatchModel(clip, preprocess, tokenizer, name="bundled", pretrained=None,
                      prune_layer=cfg["prune_layer"] if prune_layer is None else prune_layer,
                      model_id=f"bundled/{digest}", templates=cfg["templates"],
                      classnames=cfg["classnames"])


def export_bundled(ckpt_path: str | os.PathLike, dest: str | os.PathLike = BUNDLED_DIR) -> dict:
    """Write config.json + model.safetensors from a ``train-clip`` checkpoint."""
    from safetensors.torch import save_file

    state = torch.load(ckpt_path, weights_only=True, map_location="cpu")   # trained anywhere
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in state["model"].items()}
    sd["token_embedding.rows"] = sd.pop("token_embedding.weight")
    sd["token_embedding.ids"] = state["used_token_ids"].to(torch.int32)
    save_file(sd, str(dest / "model.safetensors"))
    base = load_config()
    cfg = {"model_cfg": json.loads(state["full_model_cfg"]), "prune_layer": base["prune_layer"],
           "classnames": list(S.CLASSNAMES), "templates": [S.ZERO_SHOT_TEMPLATE],
           "train_cfg": state["train_cfg"], "steps": state["step"],
           "train_seconds": round(state["elapsed"], 1), "train_log": json.loads(state["log"])}
    (dest / "config.json").write_text(json.dumps(cfg, indent=1))
    return {"exported": str(dest), "steps": state["step"],
            "bytes": (dest / "model.safetensors").stat().st_size}
