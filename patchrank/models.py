"""``PatchModel``: an open_clip CLIP plus what pruning needs (patch grid, prune layer, the one
pruned forward, zero-shot heads). ``loading.load_model`` makes one from a name and weights;
``PatchModel.view`` wraps a CLIP the caller already holds.
"""
from __future__ import annotations

import copy
import functools
import hashlib
from typing import Sequence

import torch

from . import flops as _flops
from . import forward, rankers
from .errors import PatchRankError
from .zeroshot import Template, ZeroShotClassifier, check_templates, clean_classnames, text_embeddings

DEFAULT_TEMPLATES = ("a photo of a {}.",)


class PatchModel:
    """A CLIP model plus what pruning needs: patch grid, prune layer, the one pruned forward."""

    def __init__(self, clip, preprocess, tokenizer, *, name: str, pretrained: str | None,
                 prune_layer: int | None = None, model_id: str | None = None,
                 templates: Sequence[str] = DEFAULT_TEMPLATES, classnames: Sequence[str] | None = None,
                 set_eval: bool = True):
        self.clip = clip.eval() if set_eval else clip
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name, self.pretrained = name, pretrained
        self.templates = tuple(templates)
        self.classnames = tuple(classnames) if classnames else None
        self.model_id = model_id or f"{name}/{pretrained or 'random'}/{weights_fingerprint(clip)}"
        self._prune_layer = None
        self.prune_layer = default_prune_layer(self.num_layers) if prune_layer is None else prune_layer
        self._zs_cache: dict = {}

    @classmethod
    def view(cls, clip, prune_layer: int | None = None) -> "PatchModel":
        """A PatchModel over an open_clip CLIP the caller owns (``patchrank.prune``): nothing on
        ``clip`` changes, not even its train/eval flag. Its name is unknown, so its id is its
        weights' fingerprint; predictors and tokens made for the same weights under any name
        are accepted (``errors.check_made_for``)."""
        name = type(clip).__name__
        return cls(clip, None, None, name=name, pretrained=None, prune_layer=prune_layer,
                   model_id=f"{name}/{weights_fingerprint(clip)}", set_eval=False)

    def at_layer(self, prune_layer: int) -> "PatchModel":
        """The same model pruning at the input of block ``prune_layer`` instead: shared weights, text
        classifiers and id, nothing on ``self`` changed (setting ``prune_layer`` on a model that
        other requests use would change theirs too). Predictors and tokens are made for one
        layer and refuse the other (``errors.check_made_for``)."""
        if prune_layer == self.prune_layer:
            return self
        other = PatchModel(self.clip, self.preprocess, self.tokenizer, name=self.name,
                           pretrained=self.pretrained, prune_layer=prune_layer, model_id=self.model_id,
                           templates=self.templates, classnames=self.classnames, set_eval=False)
        other._zs_cache = self._zs_cache       # text embeddings do not depend on the layer
        return other

    def with_dtype(self, dtype: torch.dtype) -> "PatchModel":
        """The same model with its image tower computing in ``dtype`` (e.g. bfloat16 on a CPU
        with AMX, ``hardware.bf16_unit``): a converted copy of the image tower only; the text
        tower, text classifiers, id and prune layer are shared, so class probabilities compare
        directly with this model's. ``self`` is unchanged (other requests may be using it).
        Golden search stays in float32: a bf16 golden order ranks rounding (README, "No bf16
        golden mode")."""
        if dtype == self.dtype:
            return self
        clip = copy.copy(self.clip)                    # a shallow clone: shares the text side
        clip._modules = dict(self.clip._modules)
        clip._modules["visual"] = copy.deepcopy(self.visual).to(dtype)
        other = PatchModel(clip, self.preprocess, self.tokenizer, name=self.name,
                           pretrained=self.pretrained, prune_layer=self.prune_layer,
                           model_id=self.model_id, templates=self.templates,
                           classnames=self.classnames, set_eval=False)
        other._zs_cache = self._zs_cache               # text embeddings do not depend on it
        return other

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hash of the weights (``weights_fingerprint``): the same for the same weights, whatever
        name or file they were loaded from. Taken once, like ``model_id``."""
        return weights_fingerprint(self.clip)

    # -- geometry ---------------------------------------------------------------------------
    @property
    def visual(self):
        return self.clip.visual

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.visual.grid_size)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_layers(self) -> int:
        return len(self.visual.transformer.resblocks)

    @property
    def width(self) -> int:
        return self.visual.transformer.width

    @property
    def embed_dim(self) -> int:
        return self.visual.output_dim

    @property
    def image_size(self) -> tuple[int, int]:
        s = self.visual.image_size
        return tuple(s) if isinstance(s, (tuple, list)) else (s, s)

    @property
    def patch_size(self) -> tuple[int, int]:
        s = self.visual.patch_size
        return tuple(s) if isinstance(s, (tuple, list)) else (s, s)

    @property
    def dtype(self) -> torch.dtype:
        """What the image tower computes in (the text tower may differ: ``with_dtype``)."""
        return next(self.visual.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.visual.parameters()).device

    @property
    def prune_layer(self) -> int:
        return self._prune_layer

    @prune_layer.setter
    def prune_layer(self, layer: int) -> None:
        if not isinstance(layer, int) or not 0 <= layer < self.num_layers:
            raise PatchRankError(f"prune_layer must be an int in [0, {self.num_layers - 1}] "
                                 f"(the block whose input is pruned), got {layer!r}")
        self._prune_layer = layer

    def keep_count(self, ratio: float) -> int:
        """Kept patches for a keep ratio: round(ratio * P), at least 1 (docs/design.md)."""
        try:
            r = float(ratio)
        except (TypeError, ValueError):
            raise PatchRankError(f"keep ratio must be a number in (0, 1], got {ratio!r}") from None
        if not 0.0 < r <= 1.0:   # also rejects NaN
            raise PatchRankError(f"keep ratio must be in (0, 1], got {ratio!r}")
        return max(1, round(r * self.num_patches))

    # -- forward ------------------------------------------------------------------------------
    def _input(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise PatchRankError("expected a preprocessed image tensor [B,3,H,W]; use m.preprocess(img)")
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != self.image_size:
            raise PatchRankError(f"expected a batch [B,3,{self.image_size[0]},{self.image_size[1]}], "
                                 f"got {tuple(x.shape)}; use m.preprocess(img)")
        return x.to(device=self.device, dtype=self.dtype)

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens entering the prune layer [B,1+P,D] (what predictors and baselines read)."""
        return forward.run_prefix(self.visual, self._input(x), self.prune_layer)

    def encode_image(self, x: torch.Tensor, keep: torch.Tensor | None = None, *,
                     keep_ratio: float | None = None, ranker=None, tokens=None,
                     normalize: bool = False) -> torch.Tensor:
        """Image embeddings with patches pruned at the input of block ``prune_layer``.

        ``keep``: patch ids [B,K] (row-major, 0-based, CLS excluded), or ``keep_ratio`` with a
        ``ranker`` (a predictor, or "golden", "attention", "norm", "random", "tome"); neither
        runs all patches and equals open_clip's ``encode_image``. ``tokens``: learnable tokens
        appended after the pruning (their ``visual`` part)."""
        x = self._input(x)
        extra = None
        if tokens is not None:
            tokens.check_model(self)
            extra = tokens.visual_tokens()
        layer = self.prune_layer
        if keep is not None and keep_ratio is not None:
            raise PatchRankError("give either keep (patch ids) or keep_ratio, not both")
        if keep_ratio is None:
            out = forward.encode(self.visual, x, layer, keep=keep, extra=extra)
        else:
            h = forward.run_prefix(self.visual, x, layer)
            h = rankers.reduce(rankers.resolve(ranker), self, x, h, self.keep_count(keep_ratio))
            out = forward.run_suffix(self.visual, h, layer, extra)
        return torch.nn.functional.normalize(out, dim=-1) if normalize else out

    def rank(self, x: torch.Tensor, ranker) -> torch.Tensor:
        """Patch order [B,P], most important first, from any ranker."""
        x = self._input(x)
        h = forward.run_prefix(self.visual, x, self.prune_layer)
        return rankers.order(rankers.resolve(ranker), self, x, h)

    def flops(self, keep: int | None = None, extra_tokens: int = 0) -> _flops.FlopCount:
        return flops(self, keep=keep, extra_tokens=extra_tokens)

    # -- text side ----------------------------------------------------------------------------
    def zero_shot(self, classnames: Sequence[str] | None = None,
                  templates: Sequence[Template] | Template | None = None) -> ZeroShotClassifier:
        """Cached zero-shot classifier. ``templates``: format strings with ``{}`` or callables
        (open_clip's template lists work as given); ``"ensemble"``: open_clip's 80 OpenAI
        ImageNet prompts; default: the model's own prompt."""
        if classnames is None:
            if self.classnames is None:
                raise PatchRankError("this model has no default class names; pass classnames")
            classnames = self.classnames
        tpl = check_templates(templates, self.templates)
        ctx = getattr(self.tokenizer, "context_length", 77)
        names = clean_classnames(classnames, self.tokenizer, ctx, tpl)
        key = (tuple(names), tpl)
        clf = self._zs_cache.get(key)
        if clf is None:
            text = text_embeddings(self.clip, self.tokenizer, names, tpl)
            clf = ZeroShotClassifier(names, tpl, text, float(self.clip.logit_scale.detach().exp()))
            if len(self._zs_cache) >= 16:
                self._zs_cache.pop(next(iter(self._zs_cache)))
            self._zs_cache[key] = clf
        return clf

    def __repr__(self) -> str:
        return (f"PatchModel({self.name!r}, pretrained={self.pretrained!r}, grid={self.grid}, "
                f"layers={self.num_layers}, width={self.width}, prune_layer={self.prune_layer}, "
                f"dtype={self.dtype})")


def flops(m: PatchModel, keep: int | None = None, extra_tokens: int = 0) -> _flops.FlopCount:
    """Analytic image-encoder GFLOPs (1 MAC = 2 FLOPs) keeping ``keep`` patches from the prune
    layer on, plus ``extra_tokens`` learnable tokens; ``.blocks`` has the per-block breakdown."""
    if keep is not None and not 1 <= int(keep) <= m.num_patches:
        raise PatchRankError(f"keep must be a patch count in [1, {m.num_patches}], got {keep}")
    if extra_tokens < 0:
        raise PatchRankError("extra_tokens must be >= 0")
    return _flops.tower_flops(m.visual, keep, m.prune_layer, extra_tokens)


def default_prune_layer(num_layers: int) -> int:
    """Input of block round(L/4): 3 for 12 blocks, as in the paper (docs/paper.md)."""
    return max(0, min(num_layers - 1, round(num_layers / 4)))


def weights_fingerprint(clip) -> str:
    """Short hash of a few weight tensors: tells two models apart without hashing 100s of MB."""
    h = hashlib.sha256()
    v = clip.visual
    for t in (v.conv1.weight, v.positional_embedding, v.proj if v.proj is not None else v.conv1.weight):
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes()[:65536])
    return h.hexdigest()[:12]
