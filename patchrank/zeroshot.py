"""Zero-shot head: class prompts -> cached unit text embeddings -> probabilities.

p(c | x) = softmax_c( s * <f(x)/|f(x)|, t_c> ), with s = exp(logit_scale) of the model and t_c the
normalised mean of the class's template embeddings (Radford et al. 2021, sec. 3.1.4 prompt
ensembling), built exactly as ``open_clip.build_zero_shot_classifier`` builds it (a test checks
they are equal). Templates are format strings with ``{}`` or callables name -> prompt, so
open_clip's ``OPENAI_IMAGENET_TEMPLATES`` and ``SIMPLE_IMAGENET_TEMPLATES`` work as given;
``"ensemble"`` is open_clip's 80 OpenAI ImageNet prompts, so numbers compare with published ones.
Text embeddings are computed once per (classes, templates) and cached on the model.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import torch
import torch.nn.functional as F
from open_clip import OPENAI_IMAGENET_TEMPLATES

from .errors import PatchRankError

#: A prompt template: a format string with one ``{}``, or a callable class name -> prompt.
Template = Union[str, Callable[[str], str]]
#: What ``templates="ensemble"`` means: open_clip's OpenAI ImageNet prompt ensemble (80 prompts).
ENSEMBLE_TEMPLATES = tuple(OPENAI_IMAGENET_TEMPLATES)
MAX_CLASSES = 1000


def fill(template: Template, name: str) -> str:
    """The prompt for class ``name`` (as open_clip: ``format`` for strings, a call otherwise)."""
    return template.format(name) if isinstance(template, str) else template(name)


def template_text(template: Template) -> str:
    """A template as text with ``{}`` for the name: what results files and the app show."""
    return fill(template, "{}") if callable(template) else template


class ZeroShotClassifier:
    """Holds unit text embeddings [C,E] and the logit scale; maps image embeddings to classes."""

    def __init__(self, classnames: Sequence[str], templates: Sequence[Template], text: torch.Tensor,
                 logit_scale: float):
        self.classnames = tuple(classnames)
        self.templates = tuple(template_text(t) for t in templates)     # text: JSON-safe
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
                     templates: Sequence[Template]) -> list[str]:
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
    longest = max(templates, key=lambda t: len(template_text(t)))
    for n in names:
        ids = tokenizer.encode(fill(longest, n)) if hasattr(tokenizer, "encode") else None
        if ids is not None and len(ids) + 2 > context_length:
            raise PatchRankError(f"class name too long for the text encoder ({context_length} tokens "
                                 f"with the prompt): {n[:60]!r}")
    return names


def check_templates(templates: Sequence[Template] | Template | None,
                    default: Sequence[Template]) -> tuple[Template, ...]:
    """Templates as a tuple: None -> ``default``; "ensemble" -> open_clip's OpenAI ImageNet
    prompts; one template or a list of them (strings with ``{}`` or callables name -> prompt).
    Refuses, with a sentence, what would fail later as a raw TypeError or a silent nonsense
    prompt (a string without ``{}``, a callable that drops the name)."""
    if templates is None:
        return tuple(default)
    if isinstance(templates, str) and templates == "ensemble":
        return ENSEMBLE_TEMPLATES
    if isinstance(templates, str) or callable(templates):
        templates = [templates]
    templates = tuple(templates)
    if not templates:
        raise PatchRankError("give at least one template, e.g. 'a photo of a {}.'")
    for t in templates:
        if not isinstance(t, str) and not callable(t):
            raise PatchRankError(f"a template is a string with '{{}}' or a callable name -> prompt, "
                                 f"not {type(t).__name__}")
        try:
            text = template_text(t)
        except Exception as e:
            raise PatchRankError(f"template {t!r} failed on a class name: {e}") from None
        if not isinstance(text, str) or "{}" not in text:
            raise PatchRankError("each template must contain '{}' where the class name goes, "
                                 "e.g. 'a photo of a {}.' (or be a callable that puts the name in)")
    return templates


@torch.inference_mode()
def text_embeddings(clip, tokenizer, classnames: Sequence[str], templates: Sequence[Template],
                    batch: int = 256) -> torch.Tensor:
    """Unit class embeddings [C,E]: mean of normalised template embeddings, renormalised (the
    steps of ``open_clip.build_zero_shot_classifier``; normalised in float32 whatever the
    model's dtype, and batched by prompts, not classes)."""
    prompts = [fill(t, c) for c in classnames for t in templates]
    device = next(clip.parameters()).device
    out = []
    for i in range(0, len(prompts), batch):
        tok = tokenizer(prompts[i:i + batch]).to(device)
        out.append(F.normalize(clip.encode_text(tok).float(), dim=-1))
    emb = torch.cat(out).view(len(classnames), len(templates), -1).mean(1)
    return F.normalize(emb, dim=-1).cpu()
