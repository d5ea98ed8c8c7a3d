"""``prune``: one line that makes an existing open_clip pipeline cheaper.

    model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-16", pretrained="openai")
    fast = pr.prune(model, keep_ratio=0.6, ranker="predictor.safetensors")
    fast.encode_image(images)          # as open_clip's, with 40 % of the patches dropped at block k

Why a new module instead of patching the user's model in place (ToMe's way): the original stays
exactly as it was (no hooks, no attribute changes, not even its train/eval flag), so a pipeline can
hold the full and the pruned model side by side and compare them; the two share every weight, so
the pruned one costs no memory. ``PrunedCLIP`` answers what open_clip's ``CLIP`` answers
(``encode_image``, ``encode_text``, ``forward``, ``logit_scale``, ``visual.image_size``, ...) so
open_clip's own utilities (``build_zero_shot_classifier``, its zero-shot eval loop) take it as is.

All pruning goes through ``PatchModel.encode_image`` (the one pruned forward); with nothing to
prune (keep ratio 1.0, no learnable tokens) the call is open_clip's own image tower, bit for bit.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import rankers
from .errors import PatchRankError
from .loading import check_vit, load_model
from .models import PatchModel
from .predictor import load_predictor
from .tokens import load_tokens


class _Plan:
    """What the pruned tower does on each call: the keep ratio, the ranker and the tokens. A plain
    object (not a module) shared by ``PrunedCLIP`` and its ``visual``, so setting
    ``fast.keep_ratio`` reaches both."""

    def __init__(self, view: PatchModel, keep_ratio: float, ranker: Any, tokens):
        self.view, self.ranker, self.tokens = view, ranker, tokens
        self.keep_ratio = keep_ratio

    def check_ratio(self, ratio: float) -> float:
        self.view.keep_count(ratio)          # raises PatchRankError for anything outside (0, 1]
        return float(ratio)

    def encode(self, tower: nn.Module, x: torch.Tensor, ratio: float | None) -> torch.Tensor:
        r = self.keep_ratio if ratio is None else self.check_ratio(ratio)
        if self.tokens is None and self.view.keep_count(r) == self.view.num_patches:
            return tower(x)                  # nothing to prune: open_clip's forward, bit for bit
        return self.view.encode_image(x, keep_ratio=r, ranker=self.ranker, tokens=self.tokens)


class PrunedVisual(nn.Module):
    """open_clip's image tower with patches pruned at the input of block ``prune_layer``. Every
    attribute it does not define (``image_size``, ``patch_size``, ``grid_size``, ``output_dim``,
    ``preprocess_cfg``, ...) is the original tower's."""

    def __init__(self, tower: nn.Module, plan: _Plan):
        super().__init__()
        self.tower = tower
        object.__setattr__(self, "_plan", plan)

    def forward(self, x: torch.Tensor, keep_ratio: float | None = None) -> torch.Tensor:
        return self._plan.encode(self.tower, x, keep_ratio)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("tower"), name)


class PrunedCLIP(nn.Module):
    """A CLIP whose image encoder prunes patches; the text side and every weight are the original
    model's (shared, not copied). ``keep_ratio`` can be changed between calls (``fast.keep_ratio =
    0.4``) or per call (``fast.encode_image(x, keep_ratio=0.4)``).

    Registered submodules: ``clip`` (the original), the ranker when it has weights (a predictor)
    and the tokens, so ``.to()``, ``.eval()`` and ``.half()`` reach all of them. Moving or casting
    the pruned model moves the shared weights, hence the original too."""

    def __init__(self, clip: nn.Module, view: PatchModel, keep_ratio: float, ranker: Any, tokens=None):
        super().__init__()
        self.clip = clip
        if isinstance(ranker, nn.Module):
            self.ranker = ranker
        if tokens is not None:
            self.tokens = tokens
        plan = _Plan(view, keep_ratio, ranker, tokens)
        plan.keep_ratio = plan.check_ratio(keep_ratio)
        object.__setattr__(self, "_plan", plan)
        # Not registered: its parameters are the original tower's, already registered under clip.
        object.__setattr__(self, "visual", PrunedVisual(clip.visual, plan))
        self.output_dict = getattr(clip, "output_dict", False)

    # -- what pruning is set to -----------------------------------------------------------------
    @property
    def keep_ratio(self) -> float:
        return self._plan.keep_ratio

    @keep_ratio.setter
    def keep_ratio(self, ratio: float) -> None:
        self._plan.keep_ratio = self._plan.check_ratio(ratio)

    @property
    def patch_model(self) -> PatchModel:
        """The PatchModel view of the same weights (rankings, FLOPs, zero-shot heads)."""
        return self._plan.view

    def gflops(self, keep_ratio: float | None = None) -> float:
        """Analytic image-encoder GFLOPs per image at ``keep_ratio`` (default: the current one),
        plus what the ranker spends choosing (``rankers.ranker_gflops``)."""
        m, plan = self._plan.view, self._plan
        r = plan.keep_ratio if keep_ratio is None else plan.check_ratio(keep_ratio)
        n_keep = m.keep_count(r)
        extra = plan.tokens.num_visual if plan.tokens is not None else 0
        enc = float(m.flops(keep=None if n_keep == m.num_patches and not extra else n_keep,
                            extra_tokens=extra))
        if n_keep == m.num_patches and not extra:
            return enc
        return enc + (rankers.ranker_gflops(m, plan.ranker) or 0.0)

    # -- open_clip's CLIP interface ---------------------------------------------------------------
    @property
    def logit_scale(self) -> nn.Parameter:
        return self.clip.logit_scale

    @property
    def logit_bias(self):
        return getattr(self.clip, "logit_bias", None)

    def encode_image(self, image: torch.Tensor, normalize: bool = False,
                     keep_ratio: float | None = None) -> torch.Tensor:
        features = self.visual(image, keep_ratio=keep_ratio)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.clip.encode_text(text, normalize=normalize)

    def forward(self, image: torch.Tensor | None = None, text: torch.Tensor | None = None):
        """What open_clip's ``CLIP.forward`` returns: (image, text, logit_scale.exp()[, bias]) or
        its dict when the original was built with ``output_dict=True``."""
        image_features = self.encode_image(image, normalize=True) if image is not None else None
        text_features = self.encode_text(text, normalize=True) if text is not None else None
        scale, bias = self.logit_scale.exp(), self.logit_bias
        if self.output_dict:
            out = {"image_features": image_features, "text_features": text_features, "logit_scale": scale}
            if bias is not None:
                out["logit_bias"] = bias
            return out
        if bias is not None:
            return image_features, text_features, scale, bias
        return image_features, text_features, scale

    def extra_repr(self) -> str:
        m = self._plan.view
        return (f"model_id={m.model_id!r}, prune_layer={m.prune_layer}, keep_ratio={self.keep_ratio:g}, "
                f"ranker={getattr(self._plan.ranker, 'name', type(self._plan.ranker).__name__)!r}")


def prune(model: Any, keep_ratio: float = 0.6, ranker: Any = "norm", tokens: Any = None, *,
          pretrained: str | None = None, prune_layer: int | None = None) -> PrunedCLIP:
    """A pruned CLIP that behaves as open_clip's ``CLIP`` and shares ``model``'s weights.

    ``model``: an open_clip CLIP with a ViT tower, a ``PatchModel``, or a name ``load_model``
    accepts (then ``pretrained`` is its tag or file). ``ranker``: a predictor (object, file path
    or ``hf-hub:org/repo``) or a training-free ranker's name ("norm", "attention", "random",
    "tome", ...; see ``patchrank.rankers.available()``). ``tokens``: learnable tokens (object or
    file) appended after pruning. ``prune_layer``: the block whose input is pruned (default: the
    model's own; for a PatchModel or a name, set it there)."""
    view = _patch_model(model, pretrained, prune_layer)
    r = resolve_ranker(ranker, view)
    t = _resolve_tokens(tokens, view)
    return PrunedCLIP(view.clip, view, keep_ratio, r, t)


def _patch_model(model: Any, pretrained: str | None, prune_layer: int | None) -> PatchModel:
    if isinstance(model, PrunedCLIP):
        model = model.patch_model
    if isinstance(model, (str, os.PathLike)):
        return load_model(str(model), pretrained, prune_layer=prune_layer)
    if pretrained is not None:
        raise PatchRankError("pretrained= is for a model given by name; this model already has weights")
    if isinstance(model, PatchModel):
        if prune_layer is not None and prune_layer != model.prune_layer:
            raise PatchRankError(f"this PatchModel prunes at block {model.prune_layer}; set "
                                 f"m.prune_layer = {prune_layer} on it instead")
        return model
    if not isinstance(model, nn.Module) or not hasattr(model, "encode_text"):
        raise PatchRankError(f"prune() takes an open_clip CLIP, a PatchModel or a model name, "
                             f"got {type(model).__name__}")
    check_vit(model, type(model).__name__)
    return PatchModel.view(model, prune_layer=prune_layer)


def resolve_ranker(ranker: Any, m: PatchModel) -> Any:
    """A ranker object for ``m`` from a name, a predictor file / ``hf-hub:`` id, or an object;
    a predictor made for another model is refused here, before any image is seen."""
    if isinstance(ranker, (str, os.PathLike)):
        spec = str(ranker)
        if spec.strip().lower() in rankers.available():
            return rankers.resolve(spec)
        if spec == "predictor" or spec.startswith("hf-hub:") or os.path.exists(spec) or \
                spec.endswith(".safetensors"):
            return load_predictor(None if spec == "predictor" else spec, model=m)
        raise PatchRankError(f"unknown ranker {spec!r}: give a predictor file, an hf-hub:org/repo "
                             f"id, or one of {', '.join(rankers.available())}")
    r = rankers.resolve(ranker)
    check = getattr(r, "check_model", None)
    if callable(check):
        check(m)
    return r


def _resolve_tokens(tokens: Any, m: PatchModel):
    if tokens is None:
        return None
    if isinstance(tokens, (str, os.PathLike)):
        return load_tokens(None if str(tokens) == "bundled" else tokens, model=m)
    tokens.check_model(m)
    return tokens
