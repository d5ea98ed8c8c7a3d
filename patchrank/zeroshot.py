"""Zero-shot head: class prompts -> cached unit text embeddings -> probabilities.

p(c | x) = softmax_c( s * <f(x)/|f(x)|, t_c> ), with s = exp(logit_scale) of the model and t_c the
normalised mean of the class's template embeddings (Radford et al. 2021, sec. 3.1.4 prompt
ensembling). Text embeddings are computed once per (classes, templates) and cached on the model.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .errors import PatchRankError

#: Our own ImageNet-style prompt ensemble (written for PatchRank in the style of CLIP's).
ENSEMBLE_TEMPLATES = (
    "a photo of a {}.", "a bad photo of a {}.", "a cropped photo of a {}.", "a bright photo of a {}.",
    "a dark photo of a {}.", "a close-up photo of a {}.", "a blurry photo of a {}.",
    "a low resolution photo of a {}.", "a good photo of a {}.", "a photo of the large {}.",
    "a photo of the small {}.", "a jpeg corrupted photo of a {}.", "a rendering of a {}.",
    "a drawing of a {}.", "art of the {}.", "a photo of one {}.",
)
MAX_CLASSES = 1000


class ZeroShotClassifier:
    """Holds unit text embeddings [C,E] and the logit scale; maps image embeddings to classes."""

    def __init__(self, classnames: Sequence[str], templates: Sequence[str], text: torch.Tensor,
                 logit_scale: float):
        self.classnames, self.templates = tuple(classnames), tuple(templates)
        self.text, self.logit_scale = text, float(logit_scale)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.logit_scale * F.normalize(emb.float(), dim=-1) @ self.text.T

    def probs(self, emb: torch.Tensor) -> torch.Tensor:
        return self.logits(emb).softmax(-1)

    def log_probs(self, emb: torch.Tensor) -> torch.Tensor:
        """log p(c | x) [B,C] in float64: the golden search compares log-probabilities of
        variants that differ by far less than float32 resolves near p = 1."""
        unit = F.normalize(emb.double(), dim=-1)
        return (self.logit_scale * unit @ self.text.double().T).log_softmax(-1)

    def predict(self, emb: torch.Tensor) -> torch.Tensor:
        return self.logits(emb).argmax(-1)


def clean_classnames(classnames: Sequence[str], tokenizer, context_length: int,
                     templates: Sequence[str]) -> list[str]:
    """Strip names and refuse empty, duplicate or over-long ones with a message naming them."""
    if isinstance(classnames, str):
        raise PatchRankError("classnames must be a list of names, not one string")
    names = [str(c).strip() for c in classnames]
    if not names:
        raise PatchRankError("no class names given: provide at least one label")
    if len(names) > MAX_CLASSES:
        raise PatchRankError(f"{len(names)} class names given; at most {MAX_CLASSES} are supported")
    empty = [i for i, n in enumerate(names) if not n]
    if empty:
        raise PatchRankError(f"class name #{empty[0] + 1} is empty")
    seen: dict[str, int] = {}
    for n in names:
        key = n.casefold()
        if key in seen:
            raise PatchRankError(f"duplicate class name: {n!r}")
        seen[key] = 1
    longest = max(templates, key=len)
    for n in names:
        ids = tokenizer.encode(longest.format(n)) if hasattr(tokenizer, "encode") else None
        if ids is not None and len(ids) + 2 > context_length:
            raise PatchRankError(f"class name too long for the text encoder ({context_length} tokens "
                                 f"with the prompt): {n[:60]!r}")
    return names


def check_templates(templates: Sequence[str] | str | None, default: Sequence[str]) -> tuple[str, ...]:
    if templates is None:
        return tuple(default)
    if templates == "ensemble":
        return ENSEMBLE_TEMPLATES
    if isinstance(templates, str):
        templates = [templates]
    templates = tuple(templates)
    if not templates or any("{}" not in t for t in templates):
        raise PatchRankError("each template must contain '{}' where the class name goes, "
                             "e.g. 'a photo of a {}.'")
    return templates


@torch.inference_mode()
def text_embeddings(clip, tokenizer, classnames: Sequence[str], templates: Sequence[str],
                    batch: int = 256) -> torch.Tensor:
    """Unit class embeddings [C,E]: mean of normalised template embeddings, renormalised."""
    prompts = [t.format(c) for c in classnames for t in templates]
    device = next(clip.parameters()).device
    out = []
    for i in range(0, len(prompts), batch):
        tok = tokenizer(prompts[i:i + batch]).to(device)
        out.append(F.normalize(clip.encode_text(tok).float(), dim=-1))
    emb = torch.cat(out).view(len(classnames), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1).cpu()
