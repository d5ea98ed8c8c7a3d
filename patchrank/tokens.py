"""Learnable tokens (paper phase III, docs/paper.md): a few vectors trained *with pruning active* to win
back the accuracy that dropping patches loses, while CLIP and the ranker stay frozen.

Two kinds, either or both:
- **Visual tokens** ``[T,D]`` appended to the sequence right after the gather at the prune layer,
  so they never change what the ranker sees (VPT, Jia et al. 2022, "shallow"). The deep variant
  ``[L-prune_layer,T,D]`` re-injects a fresh set at every later block ("VPT-deep"). They are
  dropped before pooling. Init: N(0, 0.02) as VPT/MaPLe, or the mean patch token entering the
  prune layer plus N(0, 0.02) (``init_from_prefix``): tokens that look like an average patch
  start out closer to the distribution the frozen blocks were trained on.
- **Text context vectors** (CoOp, Zhou et al. 2022): the embedded words of the template's prefix
  ("a photo of a") are replaced by ``n_ctx`` learned vectors, the class name and the template's
  tail follow, and the frozen text transformer runs on that. Initialised from the embeddings of
  those words, the prompts reproduce the hand-written ones exactly (tested).

This module holds the tokens and their files; training them is ``token_training``'s, the
``tune-tokens`` command's data and measurements ``token_job``'s.

Files are safetensors with a JSON header (settings, model id, prune layer, ranker, measured
accuracies) in the metadata; ``load_tokens`` refuses a file made for another model.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bundled import BUNDLED_DIR
from .checkpoints import load_tensors, locate, save_with_header
from .checkpoints import read_header as read_file_header
from .errors import ModelMismatch, PatchRankError, WeightsUnavailable, check_made_for
from .zeroshot import ZeroShotClassifier, clean_classnames

FORMAT = "patchrank-tokens"
FORMAT_VERSION = 1
INIT_STD = 0.02
#: Placeholder word whose token positions the context vectors replace (CoOp uses "X" too).
PLACEHOLDER = "X"


def default_path() -> Path:
    return BUNDLED_DIR / "tokens.safetensors"

# -- text tower -----------------------------------------------------------------------------------
@dataclass
class _TextTower:
    """The stages of open_clip's text encoder, whichever class holds them (CLIP keeps them on
    itself, CustomTextCLIP on ``.text``), so prompts can be run with swapped-in embeddings."""
    token_embedding: nn.Module
    positional_embedding: torch.Tensor
    transformer: nn.Module
    ln_final: nn.Module
    text_projection: object
    attn_mask: torch.Tensor | None
    pool_type: str
    eos_id: int | None


def _text_tower(clip) -> _TextTower:
    from open_clip.transformer import TextTransformer
    t = getattr(clip, "text", None)
    if t is None and hasattr(clip, "token_embedding"):
        return _TextTower(clip.token_embedding, clip.positional_embedding, clip.transformer,
                          clip.ln_final, clip.text_projection, clip.attn_mask, clip.text_pool_type,
                          getattr(clip, "text_eos_id", None))
    if isinstance(t, TextTransformer) and t.cls_emb is None and not t.use_pad_mask:
        return _TextTower(t.token_embedding, t.positional_embedding, t.transformer, t.ln_final,
                          t.text_projection, t.attn_mask, t.pool_type, t.eos_id)
    raise PatchRankError(f"text context vectors need open_clip's own causal text transformer; this "
                         f"model's text tower is {type(t).__name__} (use visual tokens only)")


def encode_prompts(clip, ids: torch.Tensor, ctx: torch.Tensor | None = None, start: int = 1) -> torch.Tensor:
    """Text features [N,E] (unnormalised) of token ids [N,L], with positions ``start..start+n-1``
    of the embedded sequence replaced by ``ctx`` [n,W] when given. The stages are those of
    open_clip's ``CLIP.encode_text`` (embed, + positions, causal transformer, ln_final, EOT pool,
    projection), so with ``ctx`` equal to the embedded words the output is identical."""
    from open_clip.transformer import text_global_pool
    t = _text_tower(clip)
    cast = t.transformer.get_cast_dtype()
    x = t.token_embedding(ids).to(cast)
    if ctx is not None:
        n = ctx.shape[0]
        x = torch.cat([x[:, :start], ctx.to(cast).unsqueeze(0).expand(x.shape[0], -1, -1),
                       x[:, start + n:]], dim=1)
    x = x + t.positional_embedding[:x.shape[1]].to(cast)
    mask = None if t.attn_mask is None else t.attn_mask[:x.shape[1], :x.shape[1]]
    x = t.ln_final(t.transformer(x, attn_mask=mask))
    x = text_global_pool(x, ids, t.pool_type, eos_token_id=t.eos_id)
    if t.text_projection is None:
        return x
    return t.text_projection(x) if isinstance(t.text_projection, nn.Linear) else x @ t.text_projection


def _split_template(template: str) -> tuple[str, str]:
    if "{}" not in template:
        raise PatchRankError(f"template {template!r} has no '{{}}' for the class name")
    head, tail = template.split("{}", 1)
    return head.strip(), tail


def _word_ids(tokenizer, text: str) -> list[int]:
    if not hasattr(tokenizer, "encode"):
        raise PatchRankError("text context vectors need open_clip's SimpleTokenizer (with encode())")
    return list(tokenizer.encode(text)) if text else []


# -- the module -----------------------------------------------------------------------------------
class LearnableTokens(nn.Module):
    """Visual tokens [T,D] (or [L-prune_layer,T,D] deep) and/or text context vectors [n_ctx,W] for one model.

    Pass to ``m.encode_image(x, keep_ratio=..., ranker=..., tokens=t)`` and classify with
    ``t.zero_shot(m, classnames)`` (it uses the learned context when there is one). In eval mode
    (the default after loading) ``visual_tokens()`` is detached, so embeddings never require grad
    outside training."""

    def __init__(self, width: int, *, num_visual: int = 4, depth: int = 0, text_width: int = 0,
                 n_ctx: int = 0, template: str = "a photo of a {}.", model_id: str | None = None,
                 prune_layer: int | None = None, meta: dict | None = None):
        super().__init__()
        if num_visual < 0 or n_ctx < 0 or depth < 0:
            raise PatchRankError("token counts must be >= 0")
        if num_visual == 0 and n_ctx == 0:
            raise PatchRankError("nothing to learn: give visual tokens and/or text context vectors")
        if n_ctx and text_width <= 0:
            raise PatchRankError("text context vectors need the text width")
        _split_template(template)
        self.width, self.depth, self.text_width = int(width), int(depth), int(text_width)
        self.template, self.model_id, self.prune_layer = template, model_id, prune_layer
        self.meta = dict(meta or {})
        shape = (depth, num_visual, width) if depth else (num_visual, width)
        self.visual = nn.Parameter(torch.zeros(shape)) if num_visual else None
        self.text_ctx = nn.Parameter(torch.zeros(n_ctx, text_width)) if n_ctx else None
        self.eval()

    @classmethod
    def for_model(cls, m, num_visual: int = 4, *, deep: bool = False, text_ctx: int = 0,
                  ctx_init: str | None = "template", seed: int = 0, meta: dict | None = None) -> "LearnableTokens":
        """Tokens shaped for model ``m`` and its prune layer. Visual tokens start N(0, 0.02).
        ``ctx_init``: words whose embeddings start the context ("template" = the words before
        '{}' in the model's first template, e.g. "a photo of a"; None = N(0, 0.02)). With fewer
        words than ``text_ctx`` the front vectors are random; with more, the last words are used."""
        template = m.templates[0]
        text_width = 0
        if text_ctx:
            text_width = _text_tower(m.clip).token_embedding.weight.shape[1]
        t = cls(m.width, num_visual=num_visual, depth=(m.num_layers - m.prune_layer) if deep else 0,
                text_width=text_width, n_ctx=text_ctx, template=template, model_id=m.model_id,
                prune_layer=m.prune_layer, meta={"weights_fingerprint": m.fingerprint, **(meta or {})})
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            if t.visual is not None:
                t.visual.copy_(torch.randn(t.visual.shape, generator=g) * INIT_STD)
            if t.text_ctx is not None:
                t.text_ctx.copy_(torch.randn(t.text_ctx.shape, generator=g) * INIT_STD)
                words = _split_template(template)[0] if ctx_init == "template" else (ctx_init or "")
                ids = _word_ids(m.tokenizer, words)[-text_ctx:]
                if ids:
                    emb = _text_tower(m.clip).token_embedding.weight.detach()
                    t.text_ctx[text_ctx - len(ids):] = emb[torch.tensor(ids)].float().cpu()
                t.meta["ctx_init"] = words if ids else None
        t.meta.setdefault("init", "normal")
        return t.to(m.device)

    # -- shape --------------------------------------------------------------------------------
    @property
    def num_visual(self) -> int:
        """Extra tokens every block from the prune layer on sees (what ``flops(..., extra_tokens=)`` needs)."""
        return 0 if self.visual is None else self.visual.shape[-2]

    @property
    def n_ctx(self) -> int:
        return 0 if self.text_ctx is None else self.text_ctx.shape[0]

    @property
    def deep(self) -> bool:
        return self.depth > 0

    @property
    def keep_range(self) -> tuple[float, float]:
        """(lowest, highest) keep ratio the tokens were trained at (``meta["train"]["ratios"]``;
        (0, 1) when not recorded). Tokens recover what pruning loses; where little is pruned they
        only add noise (on ``bundled-val`` they cost 0.25-0.5 points at keep 0.9-1.0), so the
        shipped ones are trained for keep 0.4-0.8 and the sweep and the app use them there only."""
        ratios = (self.meta.get("train") or {}).get("ratios")
        return (min(ratios), max(ratios)) if ratios else (0.0, 1.0)

    def covers(self, ratio: float) -> bool:
        lo, hi = self.keep_range
        return lo - 1e-9 <= float(ratio) <= hi + 1e-9

    def visual_tokens(self) -> torch.Tensor | None:
        """[T,D] or [L-prune_layer,T,D] for ``forward.run_suffix``; detached unless training."""
        if self.visual is None:
            return None
        return self.visual if self.training else self.visual.detach()

    @torch.no_grad()
    def init_from_prefix(self, h: torch.Tensor, seed: int = 0) -> None:
        """Start every visual token (at every depth) at the mean patch token entering the prune
        layer over ``h`` [N,1+P,D], plus N(0, 0.02) so the T tokens differ."""
        if self.visual is None:
            return
        g = torch.Generator().manual_seed(seed)
        mean = h[:, 1:].float().mean(dim=(0, 1)).to(self.visual.device)
        noise = torch.randn(self.visual.shape, generator=g).to(self.visual.device) * INIT_STD
        self.visual.copy_(mean + noise)
        self.meta["init"] = "mean"

    # -- model check --------------------------------------------------------------------------
    def check_model(self, m) -> None:
        """Refuse a model other than the one these tokens were trained for."""
        check_made_for("these tokens", self.model_id, self.prune_layer, m, "tune-tokens",
                       self.meta.get("weights_fingerprint"))
        if m.width != self.width:
            raise ModelMismatch(f"these tokens have width {self.width}; model {m.model_id!r} has "
                                f"width {m.width}")
        if self.deep and self.depth != m.num_layers - m.prune_layer:
            raise ModelMismatch(f"these deep tokens cover {self.depth} blocks; model {m.model_id!r} "
                                f"has {m.num_layers - m.prune_layer} blocks from the prune layer on")

    # -- text side ----------------------------------------------------------------------------
    def prompt_ids(self, m, classnames: Sequence[str]) -> torch.Tensor:
        """Token ids [C,L] of "X X .. X <class><tail>", the X positions to be replaced."""
        n = self.n_ctx
        _, tail = _split_template(self.template)
        prompts = [" ".join([PLACEHOLDER] * n + [c]) + tail for c in classnames]
        ids = m.tokenizer(prompts).to(m.device)
        ph = _word_ids(m.tokenizer, PLACEHOLDER)
        if len(ph) != 1 or not bool((ids[:, 1:1 + n] == ph[0]).all()):
            raise PatchRankError("could not locate the context positions in the tokenized prompts")
        return ids

    def text_features(self, m, classnames: Sequence[str]) -> torch.Tensor:
        """Unit class embeddings [C,E] with the learned context (differentiable in ``ctx``)."""
        if self.text_ctx is None:
            raise PatchRankError("these tokens have no text context; use m.zero_shot(classnames)")
        feats = encode_prompts(m.clip, self.prompt_ids(m, classnames), self.text_ctx, start=1)
        # Same steps as zeroshot.text_embeddings with one template (normalise, mean, normalise),
        # so the "a photo of a" initialisation gives the hand-written classifier bit for bit.
        return F.normalize(F.normalize(feats.float(), dim=-1).unsqueeze(1).mean(1), dim=-1)

    def zero_shot(self, m, classnames: Sequence[str] | None = None) -> ZeroShotClassifier:
        """A zero-shot classifier (``.probs``/``.predict``) using the learned text context when
        there is one, else the model's own cached prompts."""
        if self.text_ctx is None:
            return m.zero_shot(classnames)
        self.check_model(m)
        if classnames is None:
            if m.classnames is None:
                raise PatchRankError("this model has no default class names; pass classnames")
            classnames = m.classnames
        tail = _split_template(self.template)[1]
        placeholder_tpl = " ".join([PLACEHOLDER] * self.n_ctx + ["{}"]) + tail
        names = clean_classnames(classnames, m.tokenizer, getattr(m.tokenizer, "context_length", 77),
                                 [placeholder_tpl])
        with torch.no_grad():
            text = self.text_features(m, names).cpu()
        tpl = f"[{self.n_ctx} learned] {{}}{tail}"
        return ZeroShotClassifier(names, (tpl,), text, float(m.clip.logit_scale.detach().exp()))

    # -- cost -----------------------------------------------------------------------------------
    def flops(self, m, keep: int | None = None):
        """Image-encoder GFLOPs with these tokens (``m.flops`` with ``extra_tokens``)."""
        return m.flops(keep=keep, extra_tokens=self.num_visual)

    # -- files ----------------------------------------------------------------------------------
    def header(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "model_id": self.model_id,
                "prune_layer": self.prune_layer, "width": self.width, "num_visual": self.num_visual,
                "depth": self.depth, "n_ctx": self.n_ctx, "text_width": self.text_width,
                "template": self.template,
                **{k: v for k, v in self.meta.items() if k not in _HEADER_KEYS}}

    def save(self, path: str | os.PathLike) -> Path:
        """safetensors weights with the JSON header in the file's metadata."""
        return save_with_header(self, path, self.header())

    def extra_repr(self) -> str:
        return (f"model_id={self.model_id!r}, prune_layer={self.prune_layer}, "
                f"num_visual={self.num_visual}, deep={self.deep}, n_ctx={self.n_ctx}")


_HEADER_KEYS = ("format", "version", "model_id", "prune_layer", "width", "num_visual", "depth",
                "n_ctx", "text_width", "template")


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a tokens file, without loading its tensors."""
    return read_file_header(path, FORMAT, "tokens")


def load_tokens(path: str | os.PathLike | None = None, model=None) -> LearnableTokens:
    """Load learnable tokens (default: the bundled ones, ``patchrank/assets/bundled/tokens.safetensors``;
    a local path, or ``hf-hub:org/repo[/FILE]`` as for ``load_predictor``).
    With ``model``, tokens made for another model are refused with ``ModelMismatch``."""
    if path is None:
        path = default_path()
        if not path.is_file():
            raise WeightsUnavailable(f"the bundled learnable tokens are missing ({path}); train "
                                     "them with `python -m patchrank tune-tokens --model bundled "
                                     "--ranker predictor --out patchrank/assets/bundled/tokens.safetensors`")
    else:
        path = locate(path, "tokens", "tokens.safetensors", "--tokens")
    head = read_header(path)
    sd = load_tensors(path, "tokens")
    vis, ctx = sd.get("visual"), sd.get("text_ctx")
    t = LearnableTokens(head["width"], num_visual=head["num_visual"], depth=head["depth"],
                        text_width=head["text_width"], n_ctx=head["n_ctx"], template=head["template"],
                        model_id=head.get("model_id"), prune_layer=head.get("prune_layer"),
                        meta={k: v for k, v in head.items() if k not in _HEADER_KEYS})
    t.load_state_dict({k: v for k, v in (("visual", vis), ("text_ctx", ctx)) if v is not None}, strict=True)
    if model is not None:
        t.check_model(model)
        t.to(model.device)
    return t.eval()
