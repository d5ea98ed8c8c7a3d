"""``load_model``: an open_clip CLIP with a ViT image tower, wrapped as a ``PatchModel``.

Sources of weights: ``"bundled"`` (this project's small CLIP in ``patchrank/assets/bundled``,
offline, the default: no network ever), and every name open_clip accepts (``patchrank.weights``):
a model name with a pretrained *tag* (``OpenAI`` or ``openai``; downloaded by huggingface_hub
with the user's own Hub settings, into its cache), ``"hf-hub:org/repo"``, a name with a local
checkpoint file (``.pt``/``.bin`` read with ``weights_only=True``, or ``.safetensors``),
``"local-dir:/path"`` (open_clip's folder layout), or a name with ``pretrained=None`` (random
init, for tests and benchmarks). Weights that cannot be had fail within seconds with one
message naming the repository and file and how to supply them (``patchrank.hub``), never after
minutes of retries.
"""
from __future__ import annotations

import torch

from .bundled import load_bundled
from .errors import PatchRankError
from .models import PatchModel, weights_fingerprint
from .weights import load_open_clip


def check_vit(clip, name: str) -> None:
    """Refuse towers the pruned forward is not exact for, with the reason and what works."""
    from open_clip.transformer import VisionTransformer
    visual = getattr(clip, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise PatchRankError(
            f"{name}: its image tower is {type(visual).__name__}, not open_clip's VisionTransformer. "
            "PatchRank prunes patch tokens of ViT towers only (e.g. ViT-B-32, ViT-B-16, ViT-L-14, "
            "ViT-S-16, or the bundled model); ResNet (ModifiedResNet) and timm trunks such as "
            "MobileCLIP or SigLIP are not supported.")
    if getattr(visual, "attn_pool", None) is not None:
        raise PatchRankError(f"{name}: attentional pooling (CoCa-style) towers are not supported")
    if not getattr(visual.transformer, "batch_first", True):
        raise PatchRankError(f"{name}: sequence-first transformers are not supported")


def load_model(name: str = "bundled", pretrained: str | None = None, *, prune_layer: int | None = None,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               force_quick_gelu: bool | None = None) -> PatchModel:
    """Load a CLIP with a ViT image tower as a PatchModel (see the module docstring).

    ``force_quick_gelu``: None (default) follows the weights: QuickGELU for tags trained with it
    (OpenAI's), the config's own choice otherwise; pass True for an OpenAI checkpoint *file*.
    ``dtype``: float32 (default) or bfloat16/float16 weights (bf16 is fast only on CPUs with
    AMX or avx512_bf16; measure with ``benchmarks/pruned_speed.py``)."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise PatchRankError(f"dtype must be torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    if name == "bundled":
        m = load_bundled(prune_layer=prune_layer)
    else:
        clip, preprocess, tokenizer, name, pretrained = load_open_clip(name, pretrained, force_quick_gelu)
        check_vit(clip, name)
        carries_weights = name.startswith(("hf-hub:", "local-dir:"))   # no tag: the name says it
        m = PatchModel(clip, preprocess, tokenizer, name=name, pretrained=pretrained,
                       prune_layer=prune_layer,
                       model_id=f"{name}/{weights_fingerprint(clip)}" if carries_weights else None)
    if dtype != torch.float32 or str(device) != "cpu":
        m.clip.to(device=device, dtype=dtype)
    return m
