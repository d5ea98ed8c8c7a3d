"""Training learnable tokens (``tokens``) with pruning active, and measuring what they win back.

Training (``train_tokens``) caches what is frozen once per image (``precompute``): the tokens
entering the prune layer and the ranker's kept ids at each keep ratio, so every step runs only
the suffix through the one pruned forward (``forward.run_suffix``). Each step draws one ratio
from ``ratios``, so a single set of tokens serves the whole keep-ratio slider. Loss:
cross-entropy of the pruned model's zero-shot logits (the model's own logit scale), or
distillation from the unpruned model. No augmentation: the cached prefix and keep ids are per
image, as the golden rankings are.
"""
from __future__ import annotations

import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import PatchRankError
from .forward import gather_patches, run_prefix, run_suffix
from .ordering import keep_first
from .progress import bar as progress_bar
from .rankers import merges, resolve
from .rankers import order as ranker_order
from .rankers import reduce as ranker_reduce
from .resume import load_state, run_key, save_state
from .tokens import LearnableTokens


@dataclass(frozen=True)
class TuneSettings:
    """The ``tune-tokens`` settings and their defaults, defined here once (``tune_tokens``,
    ``train_tokens``, ``token_job.few_shot`` and the command read them). ``ratios``: the keep
    ratios one of which each step draws; ``data``/``shots``: the labelled few-shot images."""
    ratios: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    num_visual: int = 4
    text_ctx: int = 0
    ctx_init: str | None = "template"
    init: str = "normal"
    epochs: int = 10
    batch: int = 8
    lr: float = 1e-2
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    objective: str = "ce"
    seed: int = 0
    data: str = "bundled-train:2000"
    shots: int = 16


TUNE = TuneSettings()
DEFAULT_RATIOS = TUNE.ratios

# -- cached prefix + keep ids ---------------------------------------------------------------------
@dataclass
class PrunedCache:
    """What is frozen per image: tokens entering the prune layer ``h`` [N,1+P,D], and per keep
    ratio either the ranker's kept ids [N,n_keep] (``keep``) or a merger's reduced sequence (``reduced``)."""
    h: torch.Tensor
    keep: dict = field(default_factory=dict)
    reduced: dict = field(default_factory=dict)

    @property
    def ratios(self) -> list[float]:
        return sorted(set(self.keep) | set(self.reduced))

    def __len__(self) -> int:
        return self.h.shape[0]

    def sequence(self, ratio: float, idx: torch.Tensor) -> torch.Tensor:
        """Reduced sequences [B,1+n_keep,D] at ``ratio`` for images ``idx``."""
        if ratio in self.reduced:
            return self.reduced[ratio][idx]
        return gather_patches(self.h[idx], self.keep[ratio][idx])


def precompute(m, images: Sequence, ranker, ratios: Iterable[float], *, batch: int = 32,
               progress: bool = False) -> PrunedCache:
    """Run the frozen part once: prefix tokens and the ranker's choice at each ratio.
    ``images``: PIL images or preprocessed tensors [3,H,W]."""
    r = resolve(ranker)
    merging = merges(r)
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
            h = run_prefix(m.visual, x, m.prune_layer)
            order = None if merging else ranker_order(r, m, x, h)
            for q in ratios:
                n_keep = m.keep_count(q)
                if merging:
                    reds[q].append(ranker_reduce(r, m, x, h, n_keep).cpu())
                else:
                    keeps[q].append(keep_first(order, n_keep).cpu())
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
    emb = run_suffix(m.visual, seq.to(device=m.device, dtype=m.dtype), m.prune_layer, extra)
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
                 ratios: Sequence[float] | None = None, epochs: int = TUNE.epochs,
                 batch: int = TUNE.batch, lr: float = TUNE.lr, optimizer: str = TUNE.optimizer,
                 weight_decay: float = TUNE.weight_decay, seed: int = TUNE.seed,
                 objective: str = TUNE.objective, progress: bool = False,
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
        n_keep = m.keep_count(q)
        row = {"keep_ratio": q, "kept": n_keep, "acc": acc(lambda idx: cache.sequence(q, idx), None, plain),
               "gflops": round(float(m.flops(keep=n_keep)), 4)}
        if tokens is not None:
            row["acc_tokens"] = acc(lambda idx: cache.sequence(q, idx), tokens, tuned)
            row["gflops_tokens"] = round(float(tokens.flops(m, keep=n_keep)), 4)
        rows.append(row)
    out["ratios"] = rows
    bar.close()
    return out



def tune_tokens(m, images: Sequence, labels, classnames: Sequence[str], *, ranker,
                ratios: Sequence[float] = TUNE.ratios, num_visual: int = TUNE.num_visual,
                deep: bool = False, text_ctx: int = TUNE.text_ctx,
                ctx_init: str | None = TUNE.ctx_init, init: str = TUNE.init, seed: int = TUNE.seed,
                progress: bool = False, **train_kwargs) -> tuple[LearnableTokens, TrainLog]:
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
