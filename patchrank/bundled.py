"""The bundled model and its evaluation split (``patchrank/assets/bundled/``), loaded offline.

They ship inside the package (package data of the wheel), so ``pip install`` gives a working
``load_model()`` with no repository and no download.

Files (each far below the Hub's 10 MB limit):
- ``config.json``: open_clip model config, prune layer, class names, zero-shot template.
- ``model.safetensors``: fp16 weights. The text token embedding is stored as only the rows
  training used (``token_embedding.rows`` with their BPE ids ``token_embedding.ids``) and rebuilt
  as a standard 49,408-row table at load, so open_clip's standard tokenizer still works. Words
  never seen in training map to zero vectors: they carry no meaning to this model.
- ``eval.npz``: the shipped evaluation split (JPEG bytes, labels, per-patch target coverage).
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import WeightsUnavailable
from .progress import bar as progress_bar

#: The package's data folder; ``PATCHRANK_ASSETS`` points it elsewhere (a folder holding
#: ``bundled/``), e.g. to try a retrained model without reinstalling.
ASSETS = Path(os.environ.get("PATCHRANK_ASSETS", Path(__file__).resolve().parent / "assets"))
BUNDLED_DIR = ASSETS / "bundled"
EVAL_SEED = 1


def _require(path: Path) -> Path:
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

    from .models import PatchModel
    from .train_clip import build_clip

    folder = Path(folder)
    cfg = json.loads(_require(folder / "config.json").read_text())
    wpath = _require(folder / "model.safetensors")
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

    from .data import scenes as S
    from .train_clip import load_config

    state = torch.load(ckpt_path, weights_only=True)
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


@dataclass
class EvalSplit:
    """The shipped evaluation split: PIL images, int labels, class names, target coverage [N,P]."""
    images: list
    labels: np.ndarray
    classnames: tuple
    masks: np.ndarray
    ids: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def write_eval_split(n: int = 1200, dest: str | os.PathLike = BUNDLED_DIR / "eval.npz") -> dict:
    """Render ``n`` test scenes (Fashion-MNIST *test* items, seed EVAL_SEED) into one npz."""
    from .data import scenes as S
    gen = S.SceneGenerator("test", seed=EVAL_SEED)
    scenes = gen.batch(range(n))
    blobs = [np.frombuffer(s.jpeg, np.uint8) for s in scenes]
    offsets = np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64)
    np.savez_compressed(dest, jpeg=np.concatenate(blobs), offsets=offsets,
                        labels=np.array([s.label for s in scenes], np.int64),
                        coverage=np.stack([s.coverage for s in scenes]).astype(np.float16),
                        colours=np.array([s.colour for s in scenes], np.int64),
                        classnames=np.array(S.CLASSNAMES))
    return {"scenes": n, "bytes": Path(dest).stat().st_size}


def bundled_eval(limit: int | None = None) -> EvalSplit:
    """The bundled model's evaluation split (test scenes never used in training)."""
    from PIL import Image
    z = np.load(_require(BUNDLED_DIR / "eval.npz"), allow_pickle=False)
    n = len(z["labels"]) if limit is None else min(limit, len(z["labels"]))
    jpeg, off = z["jpeg"], z["offsets"]
    images = []
    for i in range(n):
        im = Image.open(io.BytesIO(jpeg[off[i]:off[i + 1]].tobytes()))
        im.load()
        images.append(im.convert("RGB"))
    return EvalSplit(images, z["labels"][:n], tuple(str(c) for c in z["classnames"]),
                     z["coverage"][:n].astype(np.float32), [f"bundled-eval/{i:05d}" for i in range(n)])


@torch.inference_mode()
def evaluate_bundled(m=None, ds: EvalSplit | None = None, seed: int = 0, batch: int = 100,
                     limit: int | None = None, progress: bool = False) -> dict:
    """The model card's numbers: zero-shot top-1, and whether the model looks at the object.

    Pruning at the model's prune layer, per image: (a) remove the target's patches (coverage > 0)
    vs remove as many random patches; (b) keep only the target's patches.
    Images whose target covers every patch (none here) would be skipped in (a). ``limit``: the
    first N scenes only (a quick check that an install works; the card's numbers use all)."""
    import patchrank as pr
    m = m or pr.load_model()
    ds = ds or bundled_eval(limit)
    clf = m.zero_shot(list(ds.classnames))
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(ds.labels)
    full, no_target, no_random, only_target = [], [], [], []
    bar = progress_bar(len(ds), "eval-bundled", unit="img", enabled=progress)
    for i0 in range(0, len(ds), batch):
        bar.update(min(batch, len(ds) - i0))
        x = torch.stack([m.preprocess(im) for im in ds.images[i0:i0 + batch]])
        full.append(clf.predict(m.encode_image(x)))
        for j in range(len(x)):
            cov = torch.as_tensor(ds.masks[i0 + j])
            target = torch.nonzero(cov > 0).flatten()
            rest = torch.nonzero(cov == 0).flatten()
            xi = x[j:j + 1]
            only_target.append(clf.predict(m.encode_image(xi, keep=target[None])))
            no_target.append(clf.predict(m.encode_image(xi, keep=rest[None])))
            drop = torch.randperm(m.num_patches, generator=g)[:len(target)]
            keep = torch.ones(m.num_patches, dtype=torch.bool)
            keep[drop] = False
            no_random.append(clf.predict(m.encode_image(xi, keep=torch.nonzero(keep).flatten()[None])))

    def acc(preds):
        return round(float((torch.cat(preds) == labels).float().mean()) * 100, 2)

    full_pred = torch.cat(full)
    per_class = {c: round(float((full_pred[labels == i] == i).float().mean()) * 100, 1)
                 for i, c in enumerate(ds.classnames)}
    out = {"images": len(ds), "prune_layer": m.prune_layer, "top1": acc(full),
           "remove_target": acc(no_target), "remove_random": acc(no_random),
           "keep_only_target": acc(only_target), "per_class_top1": per_class,
           "mean_target_patches": round(float((torch.as_tensor(ds.masks) > 0).sum(1).float().mean()), 1)}
    out["extra_drop_target_vs_random"] = round(out["remove_random"] - out["remove_target"], 2)
    return out
