"""Learnable tokens (paper phase III, docs/paper.md): a few vectors trained *with pruning active* to win
back the accuracy that dropping patches loses, while CLIP and the ranker stay frozen.

Two kinds, either or both:
- **Visual tokens** ``[T,D]`` appended to the sequence right after the gather at the prune layer
  k, so they never change what the ranker sees (VPT, Jia et al. 2022, "shallow"). The deep
  variant ``[L-k,T,D]`` re-injects a fresh set at every later block ("VPT-deep"). They are
  dropped before pooling. Init: N(0, 0.02) as VPT/MaPLe, or the mean patch token entering block
  k plus N(0, 0.02) (``init_from_prefix``): tokens that look like an average patch start out
  closer to the distribution the frozen blocks were trained on.
- **Text context vectors** (CoOp, Zhou et al. 2022): the embedded words of the template's prefix
  ("a photo of a") are replaced by ``n_ctx`` learned vectors, the class name and the template's
  tail follow, and the frozen text transformer runs on that. Initialised from the embeddings of
  those words, the prompts reproduce the hand-written ones exactly (tested).

Training (``train_tokens``) caches what is frozen once per image — the tokens entering block k and
the ranker's kept ids at each keep ratio — so every step runs only the suffix through the one
pruned forward (``forward.run_suffix``). Each step draws one ratio from ``ratios``, so a single set
of tokens serves the whole keep-ratio slider. Loss: cross-entropy of the pruned model's zero-shot
logits (the model's own logit scale). No augmentation: the cached prefix and keep ids are per
image, as the golden rankings are.

Files are safetensors with a JSON header (settings, model id, prune layer, ranker, measured
accuracies) in the metadata; ``load_tokens`` refuses a file made for another model.
"""
from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import forward, rankers
from .progress import bar as progress_bar
from .errors import ModelMismatch, PatchRankError, WeightsUnavailable, check_made_for
from .resume import load_state, run_key, save_state
from .zeroshot import ZeroShotClassifier, clean_classnames
from . import ordering

FORMAT = "patchrank-tokens"
FORMAT_VERSION = 1
INIT_STD = 0.02
#: Placeholder word whose token positions the context vectors replace (CoOp uses "X" too).
PLACEHOLDER = "X"
DEFAULT_RATIOS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def default_path() -> Path:
    from .bundled import BUNDLED_DIR
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
    """Visual tokens [T,D] (or [L-k,T,D] deep) and/or text context vectors [n_ctx,W] for one model.

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
        """Extra tokens every block from k on sees (what ``flops(..., extra_tokens=)`` needs)."""
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
        """[T,D] or [L-k,T,D] for ``forward.run_suffix``; detached unless training."""
        if self.visual is None:
            return None
        return self.visual if self.training else self.visual.detach()

    @torch.no_grad()
    def init_from_prefix(self, h: torch.Tensor, seed: int = 0) -> None:
        """Start every visual token (at every depth) at the mean patch token entering block k
        over ``h`` [N,1+P,D], plus N(0, 0.02) so the T tokens differ."""
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
        """Image-encoder GFLOPs with these tokens (``patchrank.flops`` with ``extra_tokens``)."""
        from .models import flops
        return flops(m, keep=keep, extra_tokens=self.num_visual)

    # -- files ----------------------------------------------------------------------------------
    def header(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "model_id": self.model_id,
                "prune_layer": self.prune_layer, "width": self.width, "num_visual": self.num_visual,
                "depth": self.depth, "n_ctx": self.n_ctx, "text_width": self.text_width,
                "template": self.template,
                **{k: v for k, v in self.meta.items() if k not in _HEADER_KEYS}}

    def save(self, path: str | os.PathLike) -> Path:
        """safetensors weights with the JSON header in the file's metadata."""
        from .checkpoints import save_with_header
        return save_with_header(self, path, self.header())

    def extra_repr(self) -> str:
        return (f"model_id={self.model_id!r}, prune_layer={self.prune_layer}, "
                f"num_visual={self.num_visual}, deep={self.deep}, n_ctx={self.n_ctx}")


_HEADER_KEYS = ("format", "version", "model_id", "prune_layer", "width", "num_visual", "depth",
                "n_ctx", "text_width", "template")


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a tokens file, without loading its tensors."""
    from .checkpoints import read_header as _read
    return _read(path, FORMAT, "tokens")


def load_tokens(path: str | os.PathLike | None = None, model=None) -> LearnableTokens:
    """Load learnable tokens (default: the bundled ones, ``patchrank/assets/bundled/tokens.safetensors``;
    a local path, or ``hf-hub:org/repo[/FILE]`` as for ``load_predictor``).
    With ``model``, tokens made for another model are refused with ``ModelMismatch``."""
    from .checkpoints import load_tensors, locate
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


# -- cached prefix + keep ids ---------------------------------------------------------------------
@dataclass
class PrunedCache:
    """What is frozen per image: tokens entering block k ``h`` [N,1+P,D], and per keep ratio
    either the ranker's kept ids [N,K] (``keep``) or a merger's reduced sequence (``reduced``)."""
    h: torch.Tensor
    keep: dict = field(default_factory=dict)
    reduced: dict = field(default_factory=dict)

    @property
    def ratios(self) -> list[float]:
        return sorted(set(self.keep) | set(self.reduced))

    def __len__(self) -> int:
        return self.h.shape[0]

    def sequence(self, ratio: float, idx: torch.Tensor) -> torch.Tensor:
        """Reduced sequences [B,1+K,D] at ``ratio`` for images ``idx``."""
        if ratio in self.reduced:
            return self.reduced[ratio][idx]
        return forward.gather_patches(self.h[idx], self.keep[ratio][idx])


def precompute(m, images: Sequence, ranker, ratios: Iterable[float], *, batch: int = 32,
               progress: bool = False) -> PrunedCache:
    """Run the frozen part once: prefix tokens and the ranker's choice at each ratio.
    ``images``: PIL images or preprocessed tensors [3,H,W]."""
    r = rankers.resolve(ranker)
    merging = rankers.merges(r)
    if hasattr(r, "check_model"):
        r.check_model(m)
    ratios = sorted({float(x) for x in ratios})
    hs, keeps, reds = [], {q: [] for q in ratios}, {q: [] for q in ratios}
    bar = progress_bar(len(images), "prefix", enabled=bool(progress))
    for i in range(0, len(images), batch):
        chunk = images[i:i + batch]
        x = torch.stack([im if isinstance(im, torch.Tensor) else m.preprocess(im) for im in chunk])
        with torch.inference_mode():
            x = m._input(x)
            h = forward.run_prefix(m.visual, x, m.prune_layer)
            order = None if merging else rankers.order(r, m, x, h)
            for q in ratios:
                n_keep = m.keep_count(q)
                if merging:
                    reds[q].append(rankers.reduce(r, m, x, h, n_keep).cpu())
                else:
                    keeps[q].append(ordering.keep_first(order, n_keep).cpu())
        hs.append(h.cpu())
        bar.update(len(chunk))
    bar.close()
    if not hs:
        raise PatchRankError("no images given")
    h = torch.cat(hs).clone()
    if not merging:
        return PrunedCache(h, keep={q: torch.cat(v) for q, v in keeps.items()})
    return PrunedCache(h, reduced={q: torch.cat(v).clone() for q, v in reds.items()})


@contextmanager
def _frozen(*modules: nn.Module):
    """No weight gradients for the backbone while tokens train; flags restored afterwards."""
    params = [p for mod in modules for p in mod.parameters()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(False)
        yield
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def _logits(m, tokens: LearnableTokens | None, seq: torch.Tensor, text: torch.Tensor,
            scale: float) -> torch.Tensor:
    extra = None if tokens is None else tokens.visual_tokens()
    emb = forward.run_suffix(m.visual, seq.to(device=m.device, dtype=m.dtype), m.prune_layer, extra)
    return scale * F.normalize(emb.float(), dim=-1) @ text.T


# -- training -------------------------------------------------------------------------------------
@dataclass
class TrainLog:
    epoch_loss: list[float]
    steps: int
    seconds: float
    settings: dict

    def summary(self) -> dict:
        return {"epoch_loss": [round(v, 4) for v in self.epoch_loss], "steps": self.steps,
                "seconds": round(self.seconds, 1), **self.settings}


def train_tokens(m, tokens: LearnableTokens, cache: PrunedCache, labels, classnames: Sequence[str], *,
                 ratios: Sequence[float] | None = None, epochs: int = 10, batch: int = 8,
                 lr: float = 1e-2, optimizer: str = "adamw", weight_decay: float = 0.0,
                 seed: int = 0, objective: str = "ce", progress: bool = False,
                 checkpoint: str | os.PathLike | None = None) -> TrainLog:
    """Train ``tokens`` in place: per step, a batch of cached images at one keep ratio drawn
    from ``ratios`` (default: all the cache holds), cosine learning rate to 0, backbone and ranker
    frozen. Objectives on the pruned zero-shot logits:

    - ``ce``: cross-entropy with the labels (CoOp / the paper's few-shot recipe);
    - ``distill``: KL(p_full || p_pruned+tokens), the teacher being the *unpruned* model with the
      hand-written prompts on the same image (Hinton et al. 2015, with CLIP's logit scale as the
      temperature). It asks the tokens for exactly what they are for, recovering what pruning
      changed, needs no labels, and at keep 1.0 its optimum is "change nothing", so tokens
      trained this way cannot learn to trade full-model accuracy for a better fit of few shots.

    ``checkpoint``: state saved after every epoch (``patchrank.resume``); a rerun with the same
    settings resumes and ends where an uninterrupted run would.
    """
    ratios, y = _check_training(m, tokens, cache, labels, objective, ratios, epochs, batch)
    opt = _token_optimiser(tokens, optimizer, lr, weight_decay)
    n = len(cache)
    per_epoch = math.ceil(n / batch)
    total = epochs * per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    g = torch.Generator().manual_seed(seed)
    settings = {"ratios": ratios, "epochs": epochs, "batch": batch, "lr": lr, "optimizer": optimizer,
                "weight_decay": weight_decay, "seed": seed, "images": n, "objective": objective}
    key = run_key(settings, cache.h, tokens.model_id, y)
    log: list[float] = []
    state = load_state(checkpoint, key)
    if state is not None:
        tokens.load_state_dict(state["tokens"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        g.set_state(state["gen"])
        log = list(state["log"])
    step = _TokenStep(m, tokens, cache, y, classnames, objective, opt, sched, ratios, g, batch)
    bar = progress_bar(total, "tune-tokens", enabled=bool(progress))
    bar.update(len(log) * per_epoch)
    t0 = time.perf_counter()
    tokens.train()
    try:
        with _frozen(m.clip):
            while len(log) < epochs:
                log.append(step.epoch(bar))
                save_state(checkpoint, key, {"tokens": tokens.state_dict(), "opt": opt.state_dict(),
                                             "sched": sched.state_dict(), "gen": g.get_state(),
                                             "log": log})
    finally:
        tokens.eval()
        bar.close()
    return TrainLog(log, total, time.perf_counter() - t0, settings)


def _check_training(m, tokens, cache, labels, objective, ratios, epochs, batch):
    """Validated ratios and labels tensor (-1 where there are none) for ``train_tokens``."""
    if objective not in ("ce", "distill"):
        raise PatchRankError(f"objective must be 'ce' or 'distill', got {objective!r}")
    tokens.check_model(m)
    ratios = sorted(float(q) for q in (ratios or cache.ratios))
    missing = [q for q in ratios if q not in cache.keep and q not in cache.reduced]
    if missing:
        raise PatchRankError(f"keep ratios {missing} were not precomputed")
    if labels is None and objective == "ce":
        raise PatchRankError("objective 'ce' needs labels (or use objective='distill')")
    y = torch.as_tensor(labels if labels is not None else [-1] * len(cache), dtype=torch.long)
    if y.shape[0] != len(cache):
        raise PatchRankError(f"{y.shape[0]} labels for {len(cache)} images")
    if epochs < 1 or batch < 1:
        raise PatchRankError("epochs and batch must be >= 1")
    return ratios, y


def _token_optimiser(tokens, optimizer: str, lr: float, weight_decay: float):
    params = [p for p in tokens.parameters()]
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise PatchRankError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")


class _TokenStep:
    """One epoch of token training: what stays fixed across epochs (text side, teacher)."""

    def __init__(self, m, tokens, cache, y, classnames, objective, opt, sched, ratios, g, batch):
        self.m, self.tokens, self.cache, self.y, self.classnames = m, tokens, cache, y, classnames
        self.opt, self.sched, self.ratios, self.g, self.batch = opt, sched, ratios, g, batch
        self.scale = float(m.clip.logit_scale.detach().exp())
        # clone: the cached classifier is an inference tensor, unusable under autograd
        hand_text = m.zero_shot(classnames).text.clone().to(m.device)
        self.fixed_text = None if tokens.text_ctx is not None else hand_text
        self.teacher = None
        if objective == "distill":        # unpruned model, hand prompts: computed once per image
            with torch.no_grad():
                self.teacher = torch.cat([
                    F.softmax(_logits(m, None, cache.h[i:i + 64], hand_text, self.scale), -1)
                    for i in range(0, len(cache), 64)])

    def epoch(self, bar) -> float:
        """A pass over the cache in a seeded order; returns the mean loss."""
        n = len(self.cache)
        perm, run = torch.randperm(n, generator=self.g), 0.0
        for b in range(math.ceil(n / self.batch)):
            idx = perm[b * self.batch:(b + 1) * self.batch]
            q = self.ratios[int(torch.randint(len(self.ratios), (1,), generator=self.g))]
            text = (self.fixed_text if self.fixed_text is not None
                    else self.tokens.text_features(self.m, self.classnames))
            logits = _logits(self.m, self.tokens, self.cache.sequence(q, idx), text, self.scale)
            if self.teacher is None:
                loss = F.cross_entropy(logits, self.y[idx].to(logits.device))
            else:
                loss = F.kl_div(F.log_softmax(logits, -1), self.teacher[idx].to(logits.device),
                                reduction="batchmean")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            run += loss.item() * len(idx)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", keep=q, refresh=False)
        return run / n


@torch.no_grad()
def evaluate(m, cache: PrunedCache, labels, classnames: Sequence[str],
             tokens: LearnableTokens | None = None, batch: int = 64, progress: bool = False) -> dict:
    """Top-1 accuracy (%) full, pruned, and pruned + tokens at every cached ratio, with GFLOPs.
    Uses the same suffix as ``m.encode_image`` (tested equal)."""
    y = torch.as_tensor(labels, dtype=torch.long)
    scale = float(m.clip.logit_scale.detach().exp())
    plain = m.zero_shot(classnames).text.to(m.device)
    tuned = None if tokens is None else tokens.zero_shot(m, classnames).text.to(m.device)
    n = len(cache)
    bar = progress_bar(n * (1 + len(cache.ratios)) * (1 if tokens is None else 2), "evaluate",
                       enabled=bool(progress))

    def acc(seq_fn, tok, text) -> float:
        hits = 0
        for i in range(0, n, batch):
            idx = torch.arange(i, min(n, i + batch))
            hits += int((_logits(m, tok, seq_fn(idx), text, scale).argmax(-1).cpu() == y[idx]).sum())
            bar.update(len(idx))
        return round(100.0 * hits / n, 2)

    full = lambda idx: cache.h[idx]  # noqa: E731
    out = {"images": n, "full": {"acc": acc(full, None, plain), "gflops": round(float(m.flops()), 4)}}
    if tokens is not None:
        out["full"]["acc_tokens"] = acc(full, tokens, tuned)
        out["full"]["gflops_tokens"] = round(float(tokens.flops(m)), 4)
    rows = []
    for q in cache.ratios:
        k = m.keep_count(q)
        row = {"keep_ratio": q, "kept": k, "acc": acc(lambda idx: cache.sequence(q, idx), None, plain),
               "gflops": round(float(m.flops(keep=k)), 4)}
        if tokens is not None:
            row["acc_tokens"] = acc(lambda idx: cache.sequence(q, idx), tokens, tuned)
            row["gflops_tokens"] = round(float(tokens.flops(m, keep=k)), 4)
        rows.append(row)
    out["ratios"] = rows
    bar.close()
    return out


# -- data -----------------------------------------------------------------------------------------
def few_shot(spec: str = "bundled-train:2000", shots: int = 16) -> tuple[list, list[int], tuple[str, ...]]:
    """(images, labels, classnames): the first ``shots`` images per class of a labelled dataset
    spec (``patchrank.data.datasets.open_dataset``; default the bundled training scenes, of
    which only as many are rendered as it takes to fill every class)."""
    from .data.datasets import open_dataset
    ds = open_dataset(spec)
    if ds.classnames is None or ds.label(0) is None:
        raise PatchRankError(f"{spec!r} has no labels/class names; few-shot tuning needs them")
    want = len(ds.classnames)
    count = [0] * want
    images, labels = [], []
    for i in range(len(ds)):
        c = int(ds.label(i))
        if count[c] < shots:
            count[c] += 1
            images.append(ds.image(i))
            labels.append(c)
            if min(count) >= shots:
                break
    short = [ds.classnames[c] for c in range(want) if count[c] < shots]
    if short:
        print(f"warning: fewer than {shots} images of {short} in {spec}", file=sys.stderr)
    return images, labels, tuple(ds.classnames)


# -- one call -------------------------------------------------------------------------------------
def describe_ranker(ranker, source: str | None = None) -> dict:
    if isinstance(ranker, str):
        return {"kind": "builtin", "name": ranker}
    d = {"kind": type(ranker).__name__, "name": getattr(ranker, "name", None)}
    if source:
        d["path"] = source
    meta = getattr(ranker, "meta", None)
    if isinstance(meta, dict) and meta.get("settings") is not None:
        d["settings"] = meta["settings"]
    return d


def tune_tokens(m, images: Sequence, labels, classnames: Sequence[str], *, ranker,
                ratios: Sequence[float] = DEFAULT_RATIOS, num_visual: int = 4, deep: bool = False,
                text_ctx: int = 0, ctx_init: str | None = "template", init: str = "normal",
                seed: int = 0, progress: bool = False, **train_kwargs) -> tuple[LearnableTokens, TrainLog]:
    """Make tokens for ``m`` and train them on ``images``/``labels`` with ``ranker`` pruning."""
    if init not in ("normal", "mean"):
        raise PatchRankError(f"init must be 'normal' or 'mean', got {init!r}")
    cache = precompute(m, images, ranker, ratios, progress=progress)
    t = LearnableTokens.for_model(m, num_visual, deep=deep, text_ctx=text_ctx, ctx_init=ctx_init, seed=seed)
    if init == "mean":
        t.init_from_prefix(cache.h, seed=seed)
    log = train_tokens(m, t, cache, labels, classnames, seed=seed, progress=progress, **train_kwargs)
    t.meta["train"] = log.summary()
    return t, log


def measure_on(m, tokens: LearnableTokens, ranker, spec: str, ratios: Sequence[float], *,
               progress: bool = False) -> dict:
    """Accuracy with and without ``tokens`` on the labelled dataset ``spec``, pruned by ``ranker``
    at ``ratios``: the numbers a token file's header carries (``meta["accuracy"]``)."""
    from .data.datasets import open_dataset
    ds = open_dataset(spec)
    cache = precompute(m, [ds.image(i) for i in range(len(ds))], ranker, ratios, progress=progress)
    return {"data": spec, **evaluate(m, cache, ds.labels, ds.classnames, tokens, progress=progress)}
