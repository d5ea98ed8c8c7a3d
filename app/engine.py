"""Glue between the app and the ``patchrank`` engine: loading models and predictors, asking the
engine for patch orders and (pruned) embeddings. No model maths lives here: every forward pass,
ranking and metric is an engine call. What a model lacks (no predictor or tokens trained for it)
comes back as a plain-words reason instead of an exception.
"""
from __future__ import annotations

import hashlib
import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import open_clip
import torch

import patchrank as pr
from patchrank import forward, golden, metrics, rankers, sweep
from patchrank.baselines import ToMeMerger, cls_attention
from patchrank import ordering
from patchrank.errors import ModelMismatch, PatchRankError, WeightsUnavailable
from patchrank.timing import interleaved

from . import precision
from .sessions import LRU

ON_SPACES = bool(os.environ.get("SPACE_ID"))

#: Model choices offered in the selector: key -> (label, load_model args).
MODEL_CHOICES: dict[str, tuple[str, dict]] = {
    "bundled": ("bundled PatchRank CLIP (offline, 14x14 patches)", {"name": "bundled"}),
    "ViT-B-16/openai": ("ViT-B-16 / openai (14x14 patches)", {"name": "ViT-B-16", "pretrained": "openai"}),
    "ViT-B-32/openai": ("ViT-B-32 / openai (7x7 patches)", {"name": "ViT-B-32", "pretrained": "openai"}),
    "local": ("local checkpoint (file or local-dir:)", {}),
}
#: The real-CLIP model preloaded on Spaces (its weights come from preload_from_hub).
SPACES_DEFAULT = "ViT-B-16/openai"
#: Labels prefilled for real CLIP models: everyday things plus what the example photos show.
DEFAULT_REAL_LABELS = (
    "cat", "dog", "bird", "horse", "person", "astronaut", "rocket", "airplane", "car", "motorcycle",
    "boat", "cup of coffee", "flower", "tree", "building", "pagoda", "coins", "camera", "galaxy",
    "retina", "food", "book",
)
#: open_clip's 1,000 ImageNet class names as labels: 998 distinct ("missile" and "sunglasses"
#: each name two classes, which a text prompt cannot tell apart).
IMAGENET_LABELS = tuple(dict.fromkeys(open_clip.IMAGENET_CLASSNAMES))
#: Label sets the app prefills for real CLIP: key -> what the selector shows. A model with
#: classes of its own (the bundled one, whose text encoder knows only their words) keeps them.
LABEL_PRESETS = {"everyday": "everyday things", "imagenet": "ImageNet: open_clip's 1,000 classes"}
#: Rankers the app knows how to name; any other registered ranker is listed too.
BUILTIN_ORDERED = ("golden", "predictor", "attention", "norm", "norm-low", "random", "tome")
#: Mergers the app can draw: ToMe's merge groups, EViT's kept patches (the rest fuse into one
#: token). Another merger has nothing per patch to draw, so it is not offered.
DRAWABLE_MERGERS = ("tome", "attention+fuse")
GOLDEN_MODES = {"exact": "one-shot leave-one-out, every patch",
                "fast": "one-shot leave-one-out on 2x2 cells (4x faster)"}


class EngineMissing(RuntimeError):
    """What a feature needs is missing for this model (e.g. no predictor trained for it)."""


# -- models ---------------------------------------------------------------------------------------
class ModelRegistry:
    """Loaded models, shared read-only by every session. The bundled one stays loaded; at most
    ``capacity`` others are kept (least recently used dropped)."""

    def __init__(self, capacity: int = 2):
        self._bundled = None
        self._others: LRU = LRU(capacity)
        self._lock = threading.Lock()

    def bundled(self) -> pr.PatchModel:
        with self._lock:
            if self._bundled is None:
                self._bundled = pr.load_model()
            return self._bundled

    def get(self, key: str) -> pr.PatchModel:
        """A model already loaded (or the bundled one); KeyError if it was dropped."""
        if key == "bundled":
            return self.bundled()
        m = self._others.get(key)
        if m is None:
            raise KeyError(key)
        return m

    def load(self, key: str, arch: str = "", path: str = "") -> tuple[str, pr.PatchModel]:
        """Load (or reuse) a model; returns (registry key, model). Raises PatchRankError; missing
        weights say how to supply them in the app's words, not Python's."""
        if key == "bundled":
            return key, self.bundled()
        if key == "local":
            key, kwargs = local_spec(arch, path)
        elif key in MODEL_CHOICES:
            kwargs = MODEL_CHOICES[key][1]
        else:
            raise PatchRankError(f"unknown model choice {key!r}")
        with self._lock:
            m = self._others.get(key)
            if m is None:
                kwargs = dict(kwargs)
                name = kwargs.pop("name")
                try:
                    m = pr.load_model(name, **kwargs)
                except WeightsUnavailable as e:   # how to supply them, said for the app's user
                    raise WeightsUnavailable(e.message("app")) from e
                self._others.put(key, m)
        return key, m


def local_spec(arch: str, path: str) -> tuple[str, dict]:
    """Registry key and load_model arguments for a local checkpoint file or an open_clip folder."""
    if ON_SPACES and not os.environ.get("PATCHRANK_ALLOW_LOCAL"):
        raise PatchRankError("local checkpoints are switched off on Spaces; pick a listed model")
    path = (path or "").strip()
    arch = (arch or "").strip()
    if not path:
        raise PatchRankError("give a checkpoint path (e.g. /models/ViT-B-16.safetensors) or "
                             "local-dir:/path/to/open_clip_folder")
    if path.startswith("local-dir:"):
        return path, {"name": path}
    if not arch:
        raise PatchRankError("give the open_clip architecture of the checkpoint, e.g. ViT-B-16")
    return f"{arch}@{path}", {"name": arch, "pretrained": path}


REGISTRY = ModelRegistry()


def labels_for(m: pr.PatchModel, preset: str = "everyday") -> list[str]:
    """The class labels to prefill: the model's own classes when it has some, else (real CLIP)
    the chosen preset: everyday things, or ImageNet's classes."""
    if m.classnames:
        return list(m.classnames)
    return list(IMAGENET_LABELS if preset == "imagenet" else DEFAULT_REAL_LABELS)


def describe(m: pr.PatchModel) -> str:
    rows, cols = m.grid
    return (f"{m.name}{'/' + str(m.pretrained) if m.pretrained and len(str(m.pretrained)) < 40 else ''}: "
            f"{rows}x{cols} = {m.num_patches} patches, {m.num_layers} blocks, pruned at the input of "
            f"block {m.prune_layer}, {float(pr.flops(m)):.2f} GFLOPs unpruned; {precision.describe(m)}")


# -- rankers --------------------------------------------------------------------------------------
def registered_rankers() -> list[str]:
    """Names of the engine's registered rankers (golden variants folded into "golden")."""
    return [n for n in rankers.available() if n == "golden" or not n.startswith("golden")]


def is_merger(name: str) -> bool:
    return rankers.merges(name)


@dataclass
class PredictorInfo:
    predictor: Any
    source: str      # "bundled" or the uploaded file's name
    digest: str


_PREDICTORS: LRU = LRU(8)


def _shipped(cache: LRU, m: pr.PatchModel, load: Callable[[pr.PatchModel], Any],
             what: str) -> tuple[Any | None, str]:
    """A file shipped for ``m`` (predictor, tokens), loaded once per model; else (None, why)."""
    key = (m.model_id, m.prune_layer)
    hit = cache.get(key)
    if hit is None:
        try:
            hit = (load(m), "")
        except ModelMismatch as e:
            tag = f"/{m.pretrained}" if m.pretrained else ""
            hit = (None, layer_reason(what, e) or f"no {what} trained for {m.name}{tag} ships with PatchRank yet")
        except (WeightsUnavailable, FileNotFoundError) as e:
            hit = (None, f"no {what} file is available ({e})")
        cache.put(key, hit)
    return hit


def layer_reason(what: str, err: Exception) -> str:
    """The plain reason a predictor or token file refused another prune layer ("" if the file
    was refused for something else): it exists only for the block it was trained at."""
    found = re.search(r"at block (\d+) but model .* prunes at block (\d+)", str(err))
    if not found:
        return ""
    made, now = found.groups()
    return (f"the {what} was trained for pruning at block {made} and exists only for that layer "
            f"(this analysis prunes at block {now}); move the prune layer back to {made}, or "
            "train one for this layer: `python -m patchrank golden --prune-layer "
            f"{now}` then `train-predictor` on those rankings")


def bundled_predictor(m: pr.PatchModel) -> tuple[PredictorInfo | None, str]:
    """The shipped predictor for ``m`` if there is one; else (None, why)."""
    return _shipped(_PREDICTORS, m, lambda m: PredictorInfo(pr.load_predictor(model=m), "bundled", "bundled"),
                    "predictor")


def load_uploaded_predictor(m: pr.PatchModel, path: str, name: str) -> PredictorInfo:
    """A predictor file uploaded by a user; refuses one trained for another model."""
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()[:12]
    p = pr.load_predictor(path=path, model=m)
    return PredictorInfo(p, name, digest)


_TOKENS: LRU = LRU(8)


def bundled_tokens(m: pr.PatchModel) -> tuple[Any | None, str]:
    """The shipped learnable tokens for ``m`` if there are any; else (None, why)."""
    return _shipped(_TOKENS, m, lambda m: pr.load_tokens(model=m), "learnable tokens")


def golden_search_kwargs(m: pr.PatchModel, mode: str) -> dict:
    """The app's golden search: the default (label-free) settings, or one-shot on 2x2 cells."""
    kwargs: dict = dict(golden.DEFAULT_SETTINGS)
    kwargs["score"] = "similarity"          # label free: the app's labels don't change the ranking
    if mode == "fast":                      # one-shot on 2x2 cells: 4x fewer variants than the default
        rows, cols = m.grid
        even = rows % 2 == 0 and cols % 2 == 0
        kwargs.update(mode="oneshot", block=2 if even else 1)
    return kwargs


#: What the golden search scores: the label-free embedding similarity (default), the full
#: model's predicted class among the labels ("max"), or one named class ("class:<label>").
GOLDEN_TARGETS = {"similarity": "the whole embedding (label-free)",
                  "max": "the predicted class (of the labels)"}


def golden_target_kwargs(target: str, labels: list[str]) -> dict:
    """``golden_ranking`` arguments for a target: "similarity", "max" or "class:<label>" (the
    ``label`` score for that class; a class not among ``labels`` is added to them)."""
    if target == "similarity":
        return {}
    if target == "max":
        return {"score": "max", "classnames": list(labels)}
    if not target.startswith("class:") or not target[6:].strip():
        raise PatchRankError(f"golden target must be similarity, max or class:<label>, got {target!r}")
    name = target[6:].strip()
    names = list(labels) if name in labels else [*labels, name]
    return {"score": "label", "labels": [names.index(name)], "classnames": names}


def golden_order(m: pr.PatchModel, x: torch.Tensor, mode: str,
                 progress: Callable[[float, str], None] | None = None, target: dict | None = None) -> np.ndarray:
    """Golden ranking of one image: order [P], best first. ``target``: ``golden_target_kwargs``
    (default: the label-free similarity score)."""
    kwargs = {**golden_search_kwargs(m, mode), **(target or {})}
    with torch.inference_mode():
        return _order(golden.golden_ranking(m, x, progress=progress, **kwargs).order)


_AT_LAYER: LRU = LRU(8)


def at_layer(m: pr.PatchModel, k: int | None) -> pr.PatchModel:
    """``m`` pruning at block ``k`` (None: its default), one shared instance per (model, k)."""
    if k is None or k == m.prune_layer:
        return m
    return _AT_LAYER.setdefault((id(m), m.model_id, k), lambda: m.at_layer(k))


def patch_ranks(order: np.ndarray) -> np.ndarray:
    """Rank of every patch (0 = kept first) under an order: the engine's inverse permutation."""
    return metrics.ranks(torch.as_tensor(order, dtype=torch.long)[None])[0].numpy()


def ranker_gflops(m: pr.PatchModel, name: str, golden_mode: str,
                  pred: PredictorInfo | None = None) -> float | None:
    """GFLOPs per image a ranker spends choosing patches (the golden search included), as the
    sweep counts them (``rankers.ranker_gflops``); None if unknown."""
    if name == "golden":
        return golden.search_gflops(m, golden.golden_settings(m, **golden_search_kwargs(m, golden_mode)))
    if name == "predictor":
        return None if pred is None else float(pred.predictor.gflops(m))
    return rankers.ranker_gflops(m, name)


def ranker_order(m: pr.PatchModel, x: torch.Tensor, name: str, pred: PredictorInfo | None = None) -> np.ndarray:
    """Order [P] (best first) from the predictor or a named training-free ranker."""
    with torch.inference_mode():
        if name == "predictor":
            if pred is None:
                raise EngineMissing("no predictor for this model")
            return _order(pred.predictor.rank(m, x))
        return _order(m.rank(x, name))


def _order(o) -> np.ndarray:
    o = torch.as_tensor(o)
    return (o[0] if o.dim() == 2 else o).detach().cpu().numpy().astype(np.int64)


def tome_groups(m: pr.PatchModel, prefix: torch.Tensor, k: int) -> np.ndarray:
    """ToMe merge group (output token 0..k-1) of every patch [P], from the prefix tokens."""
    with torch.inference_mode():
        return ToMeMerger().merge(m, prefix, k).groups[0].cpu().numpy().astype(np.int64)


def fuse_order(m: pr.PatchModel, prefix: torch.Tensor) -> np.ndarray:
    """The order in which EViT-style fusion (``attention+fuse``) keeps patches: block k's CLS
    attention on the tokens entering it, best first (it keeps the first k-1, fuses the rest)."""
    block = forward.blocks(m.visual)[m.prune_layer]
    with torch.inference_mode():
        return _order(ordering.order_from_scores(cls_attention(block, prefix)))


def unknown_labels(m: pr.PatchModel, labels: list[str]) -> list[str]:
    """Labels with a word the model's text encoder never learnt (a zero token embedding: the
    bundled model keeps only its training words, ``patchrank.bundled``). Real CLIP knows every
    word, so this is empty for it."""
    if not m.classnames:
        return []
    table = m.clip.token_embedding.weight
    out = []
    for label in labels:
        ids = [int(i) for i in m.tokenizer([label])[0] if 0 < int(i) < table.shape[0]]
        if any(not bool(table[i].any()) for i in ids):
            out.append(label)
    return out


def prefix(m: pr.PatchModel, x: torch.Tensor) -> torch.Tensor:
    """Tokens entering the prune layer [1,1+P,D] (what merging works on)."""
    with torch.inference_mode():
        return m.prefix(x)


# -- embeddings and timing ------------------------------------------------------------------------
def embed_full(m: pr.PatchModel, x: torch.Tensor) -> torch.Tensor:
    """The unpruned embedding [E] (float32), computed in the app's format (``precision``)."""
    with torch.inference_mode():
        return precision.inference_model(m).encode_image(x)[0].float().cpu()


def embed_kept(m: pr.PatchModel, x: torch.Tensor, keep_ids: list[np.ndarray], tokens=None) -> torch.Tensor:
    """Embeddings [N,E] of one image pruned to each of N equal-size keep sets (one batch);
    ``tokens``: learnable tokens appended after the pruning."""
    ids = torch.as_tensor(np.sort(np.stack(keep_ids), axis=1), dtype=torch.long)
    with torch.inference_mode():
        out = precision.inference_model(m).encode_image(x.expand(len(keep_ids), -1, -1, -1), keep=ids,
                                                        tokens=tokens)
    return out.float().cpu()


def embed_merged(m: pr.PatchModel, x: torch.Tensor, ratio: float, name: str, tokens=None) -> torch.Tensor:
    with torch.inference_mode():
        out = precision.inference_model(m).encode_image(x, keep_ratio=ratio, ranker=name, tokens=tokens)
    return out[0].float().cpu()


def probs(m: pr.PatchModel, labels: list[str], emb: torch.Tensor, tokens=None) -> np.ndarray:
    """Zero-shot class probabilities [.., C] for image embeddings (the engine's classifier; with
    ``tokens`` that carry a learned text context, their prompts)."""
    clf = tokens.zero_shot(m, labels) if tokens is not None and getattr(tokens, "n_ctx", 0) else m.zero_shot(labels)
    with torch.inference_mode():
        return clf.probs(emb if emb.dim() == 2 else emb[None]).cpu().numpy()


def time_forward(m: pr.PatchModel, x: torch.Tensor, keep_ids: np.ndarray | None,
                 repeats: int = 3, tokens=None) -> tuple[float, float]:
    """Median ms of the pruned and the full forward of one image, interleaved, after a warm-up,
    in the app's format (``precision``)."""
    ids = None if keep_ids is None else torch.as_tensor(np.sort(keep_ids), dtype=torch.long)[None]
    m = precision.inference_model(m)
    with torch.inference_mode():
        t = interleaved({"pruned": lambda: m.encode_image(x, keep=ids, tokens=tokens),
                         "full": lambda: m.encode_image(x)}, repeats=repeats)
    return t["pruned"]["median_ms"], t["full"]["median_ms"]


def kept_iou(a: np.ndarray, b: np.ndarray, ratio: float) -> float:
    return float(metrics.kept_iou(torch.as_tensor(a)[None], torch.as_tensor(b)[None], ratio)[0])


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    return float(metrics.kendall_tau(torch.as_tensor(a)[None], torch.as_tensor(b)[None])[0])


#: Methods swept on demand from the app (golden only when asked: it searches per image).
SWEEP_METHODS = ("predictor", "attention", "norm", "random", "tome")
SWEEP_RATIOS = (1.0, 0.8, 0.6, 0.5, 0.4, 0.3)


def run_sweep(m: pr.PatchModel, spec: str, *, limit: int, include_golden: bool = False,
              predictor: Any = None) -> dict:
    """The engine's accuracy / GFLOPs / latency sweep on a dataset spec, kept in memory."""
    methods = (("golden",) if include_golden else ()) + SWEEP_METHODS
    return sweep.run_sweep(m, spec, methods=methods, ratios=SWEEP_RATIOS, out=None, batch=32,
                 latency_batches=(1,), repeats=3, limit=limit, predictor=predictor, progress=True)
