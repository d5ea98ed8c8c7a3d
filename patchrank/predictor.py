"""The patch-ranking predictor (paper phase II, docs/paper.md): a tiny network that reads the tokens
entering block k of the *same* CLIP and scores every patch; trained to reproduce golden rankings.

Architecture (docs/paper.md, from the official ``train_predictor.py``): channel average pooling D -> 64,
one MLP-Mixer block (Tolstikhin et al. 2021: token MLP (1+P) -> 32 -> (1+P), channel MLP
64 -> 256 -> 64, GELU, pre-LayerNorm eps 1e-6), drop CLS, Linear(64, 1) -> one score per patch.
About 46 K parameters for 196 patches. Unlike the official script, which fed it the last block of
a second full ViT (docs/paper.md, making pruning pointless), it reads the prefix the pruned forward
computes anyway, so it adds ~0.06% of ViT-B/16's FLOPs.

Losses (all take scores [B,P] and golden orders [B,P], most important first):
- ``kl``: the paper's keep-set target, KL(p || softmax(scores)) with p ~uniform on the top K
  golden patches, ~0 elsewhere (docs/paper.md; K from a configurable keep ratio).
- ``margin``: pairwise hinge on sampled pairs, the paper's commented alternative.
- ``listwise``: Plackett-Luce likelihood of the full golden order (Plackett 1975; ListMLE,
  Xia et al. 2008).
The default is ``kl``, the paper's. On a synthetic learnable target (tests) ``listwise`` and
``margin`` reach a higher Kendall tau (~0.95 vs ~0.8), since ``kl`` only teaches the keep/drop
boundary at one ratio; which wins on golden rankings is for the measured comparison to decide.
"""
from __future__ import annotations

import copy
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import metrics as M
from . import rankers
from .errors import ModelMismatch, PatchRankError, WeightsUnavailable, check_made_for

FORMAT = "patchrank-predictor"
FORMAT_VERSION = 1
#: The file ``load_predictor("hf-hub:org/repo")`` reads from a Hub repository.
HUB_FILE = "predictor.safetensors"


def default_path() -> Path:
    from .bundled import BUNDLED_DIR
    return BUNDLED_DIR / "predictor.safetensors"


class Predictor(nn.Module):
    """Scores patches from the tokens entering block ``prune_layer`` [B,1+P,D] -> [B,P].

    It is a ranker (``scores(m, x, h)``), so ``m.encode_image(x, keep_ratio=0.6, ranker=p)``
    prunes with it. ``model_id``/``prune_layer`` name the model and layer it was trained for;
    using it with another model raises ``ModelMismatch``. ``meta`` carries training settings."""

    name = "predictor"

    def __init__(self, width: int, num_patches: int, *, pool_dim: int = 64, token_hidden: int = 32,
                 channel_hidden: int = 256, model_id: str | None = None,
                 prune_layer: int | None = None, meta: dict | None = None):
        super().__init__()
        self.width, self.num_patches = int(width), int(num_patches)
        self.pool_dim, self.token_hidden, self.channel_hidden = pool_dim, token_hidden, channel_hidden
        self.model_id, self.prune_layer = model_id, prune_layer
        self.meta = dict(meta or {})
        n = self.num_patches + 1
        self.pool = nn.AdaptiveAvgPool1d(pool_dim)     # over channels: mean of D/64 neighbours
        self.norm1 = nn.LayerNorm(pool_dim, eps=1e-6)
        self.token_mlp = nn.Sequential(nn.Linear(n, token_hidden), nn.GELU(), nn.Linear(token_hidden, n))
        self.norm2 = nn.LayerNorm(pool_dim, eps=1e-6)
        self.channel_mlp = nn.Sequential(nn.Linear(pool_dim, channel_hidden), nn.GELU(),
                                         nn.Linear(channel_hidden, pool_dim))
        self.head = nn.Linear(pool_dim, 1)

    @classmethod
    def for_model(cls, m, **kwargs) -> "Predictor":
        """A fresh (random-init) predictor shaped for model ``m`` and its prune layer."""
        return cls(m.width, m.num_patches, model_id=m.model_id, prune_layer=m.prune_layer, **kwargs)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() != 3 or h.shape[1] != self.num_patches + 1 or h.shape[2] != self.width:
            raise PatchRankError(f"predictor expects tokens [B,{self.num_patches + 1},{self.width}], "
                                 f"got {tuple(h.shape)}")
        x = self.pool(h.to(self.head.weight.dtype))                             # [B,1+P,C]
        x = x + self.token_mlp(self.norm1(x).transpose(1, 2)).transpose(1, 2)   # mix tokens
        x = x + self.channel_mlp(self.norm2(x))                                 # mix channels
        return self.head(x[:, 1:]).squeeze(-1)                                  # drop CLS

    # -- ranker protocol ----------------------------------------------------------------------
    def check_model(self, m) -> None:
        """Refuse a model other than the one this predictor was trained for."""
        check_made_for("this predictor", self.model_id, self.prune_layer, m, "train-predictor")
        if (m.width, m.num_patches) != (self.width, self.num_patches):
            raise ModelMismatch(f"this predictor reads {self.num_patches} patches of width "
                                f"{self.width}; model {m.model_id!r} has {m.num_patches} of width {m.width}")

    def scores(self, m, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        # No dropout or batch norm: train and eval modes compute the same, so no mode switching
        # (which would mutate a module shared between requests).
        self.check_model(m)
        with torch.no_grad():
            return self(h)

    def rank(self, m, x: torch.Tensor) -> torch.Tensor:
        """Patch order [B,P], most important first."""
        with torch.inference_mode():
            return rankers.order_from_scores(self.scores(m, x, m.prefix(x)))

    # -- cost -----------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def gflops(self, m=None) -> float:
        """Analytic GFLOPs per image, 1 MAC = 2 FLOPs (as ``patchrank.flops``); ``m`` is accepted
        for the sweep's ranker interface and unused. LayerNorm, GELU and biases left out. Pooling N*D adds; token MLP 2*C*(2*N*T); channel MLP 2*N*(2*C*H);
        head 2*P*C; with N = 1+P tokens, C pooled channels, T/H hidden widths."""
        n, c, t, hid, p = self.num_patches + 1, self.pool_dim, self.token_hidden, self.channel_hidden, self.num_patches
        return (n * self.width + 4 * c * n * t + 4 * n * c * hid + 2 * p * c) / 1e9

    def cost(self, m, keep_ratio: float = 0.6) -> dict:
        """Parameters and FLOPs, absolute and as a share of the image encoder (pruned at
        ``keep_ratio``; parameters against the whole image tower)."""
        enc = float(m.flops(keep=m.keep_count(keep_ratio)))
        enc_params = sum(p.numel() for p in m.visual.parameters())
        return {"params": self.num_params(), "params_share": self.num_params() / enc_params,
                "gflops": self.gflops(), "encoder_gflops": enc,
                "gflops_share": self.gflops() / enc, "keep_ratio": keep_ratio}

    # -- files ----------------------------------------------------------------------------------
    def header(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, "model_id": self.model_id,
                "prune_layer": self.prune_layer, "width": self.width, "num_patches": self.num_patches,
                "arch": {"pool_dim": self.pool_dim, "token_hidden": self.token_hidden,
                         "channel_hidden": self.channel_hidden},
                **{k: v for k, v in self.meta.items() if k not in ("format", "version", "arch")}}

    def save(self, path: str | os.PathLike) -> Path:
        """safetensors weights with the JSON header in the file's metadata."""
        from .checkpoints import save_with_header
        return save_with_header(self, path, self.header())

    def extra_repr(self) -> str:
        return f"model_id={self.model_id!r}, prune_layer={self.prune_layer}, params={self.num_params()}"


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a predictor file, without loading its tensors."""
    from .checkpoints import read_header as _read
    return _read(path, FORMAT, "predictor")


def load_predictor(path: str | os.PathLike | None = None, model=None) -> Predictor:
    """Load a predictor file (default: the bundled one, ``patchrank/assets/bundled/predictor.safetensors``):
    a local path, or ``hf-hub:org/repo`` (its ``predictor.safetensors``) / ``hf-hub:org/repo/FILE``
    from the Hugging Face Hub, through huggingface_hub's cache and settings.

    With ``model``, a file made for another model (other id, shape or prune layer) is refused
    with ``ModelMismatch`` naming both ids; without it the check happens at first use."""
    from .checkpoints import load_tensors, locate
    if path is None:
        path = default_path()
        if not path.is_file():
            raise WeightsUnavailable(f"the bundled predictor is missing ({path}); train one with "
                                     "`python -m patchrank train-predictor --model bundled ...`")
    else:
        path = locate(path, "predictor", HUB_FILE, "--predictor")
    head = read_header(path)
    arch = head.get("arch", {})
    meta = {k: v for k, v in head.items()
            if k not in ("format", "version", "model_id", "prune_layer", "width", "num_patches", "arch")}
    p = Predictor(head["width"], head["num_patches"], model_id=head.get("model_id"),
                  prune_layer=head.get("prune_layer"), meta=meta, **arch)
    try:
        p.load_state_dict(load_tensors(path, "predictor"), strict=True)
    except RuntimeError as e:        # tensors that do not fit the header's shapes
        raise PatchRankError(f"{path}: its tensors do not match its header ({str(e).splitlines()[0]})") from e
    p.eval()
    if model is not None:
        p.check_model(model)
        p.to(model.device)
    return p


# -- losses ---------------------------------------------------------------------------------------
def keep_set_target(order: torch.Tensor, keep_ratio: float = 0.6) -> torch.Tensor:
    """The paper's target distribution (docs/paper.md): logit 0 for the top K golden patches and
    -5 - 0.1*j for position j >= K, softmaxed -> ~1/K on the kept set, ~0 on the rest."""
    b, p = order.shape
    k = M.keep_count(keep_ratio, p)
    j = torch.arange(p, device=order.device, dtype=torch.float32)
    logits = torch.where(j < k, torch.zeros_like(j), -5.0 - 0.1 * j)
    target = torch.softmax(logits, dim=0)
    return torch.zeros(b, p, device=order.device).scatter_(1, order, target.expand(b, -1).contiguous())


def kl_keep_loss(scores: torch.Tensor, order: torch.Tensor, keep_ratio: float = 0.6, **_) -> torch.Tensor:
    """KL(target || softmax(scores)), summed over patches, mean over the batch (docs/paper.md)."""
    return F.kl_div(F.log_softmax(scores, dim=1), keep_set_target(order, keep_ratio), reduction="batchmean")


def margin_loss(scores: torch.Tensor, order: torch.Tensor, pairs: int = 1000, margin: float = 1.0,
                generator: torch.Generator | None = None, **_) -> torch.Tensor:
    """Pairwise hinge max(0, margin - (s_i - s_j)) for sampled pairs where i precedes j in the
    golden order (the paper's commented ``MarginRankingLoss(margin=1)`` on random pairs)."""
    b, p = order.shape
    pos = torch.randint(0, p, (b, pairs, 2), generator=generator).to(order.device)
    hi, lo = pos.min(dim=-1).values, pos.max(dim=-1).values
    valid = (hi != lo).float()
    s_hi = scores.gather(1, order.gather(1, hi))
    s_lo = scores.gather(1, order.gather(1, lo))
    return (F.relu(margin - (s_hi - s_lo)) * valid).sum() / valid.sum().clamp_min(1)


def listwise_loss(scores: torch.Tensor, order: torch.Tensor, **_) -> torch.Tensor:
    """Plackett-Luce negative log-likelihood of the golden order, per patch:
    -log P(order) = Σ_j [logsumexp(s_{order[j:]}) - s_{order[j]}] (ListMLE, Xia et al. 2008)."""
    s = scores.gather(1, order)
    suffix_lse = torch.logcumsumexp(s.flip(1), dim=1).flip(1)
    return (suffix_lse - s).mean()


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "kl": kl_keep_loss, "margin": margin_loss, "listwise": listwise_loss}
#: Chosen on ``bundled-val`` (README, "Predictor"): the pairwise margin loss agreed best with
#: golden rankings of scenes nothing trains on (Kendall tau 0.617 vs 0.607 listwise, 0.535 KL).
DEFAULT_LOSS = "margin"


# -- training -------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    """What ``train_predictor`` returns: the best predictor (by validation loss), per-epoch
    history, and the agreement with golden on the validation images at the best epoch."""
    predictor: Predictor
    history: list = field(default_factory=list)
    val_metrics: dict = field(default_factory=dict)
    best_epoch: int = 0
    num_train: int = 0
    num_val: int = 0
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"best_epoch": self.best_epoch, "epochs_run": len(self.history),
                "num_train": self.num_train, "num_val": self.num_val,
                "seconds": round(self.seconds, 2), "val": self.val_metrics,
                "params": self.predictor.num_params(), "settings": self.predictor.meta.get("settings")}


def _reporter(progress):
    """progress: False/None (silent), True (tqdm bars on stderr) or a callable(stage, done, total, info)."""
    if callable(progress):
        return progress
    if not progress:
        return lambda *a, **k: None
    from tqdm import tqdm
    bars: dict = {}

    def report(stage, done, total, info=None):
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=stage, file=sys.stderr, dynamic_ncols=True)
        bar.n = done
        if info:
            bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items()},
                            refresh=False)
        bar.refresh()
        if done >= total:
            bar.close()
    return report


def extract_features(m, images: Iterable, batch: int = 32, progress=None, total: int | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Tokens entering block ``m.prune_layer`` for each image, [N,1+P,D], computed once under
    ``inference_mode`` (the backbone is frozen, so caching them makes every epoch cheap).
    ``images``: PIL images (preprocessed with ``m.preprocess``) or tensors [3,H,W] already
    preprocessed."""
    report = _reporter(progress)
    out, buf, done = [], [], 0

    def flush():
        nonlocal done
        x = torch.stack([im if isinstance(im, torch.Tensor) else m.preprocess(im) for im in buf])
        with torch.inference_mode():
            out.append(m.prefix(x).to(device="cpu", dtype=dtype))
        done += len(buf)
        buf.clear()
        report("features", done, total or done)

    for im in images:
        buf.append(im)
        if len(buf) == batch:
            flush()
    if buf:
        flush()
    if not out:
        raise PatchRankError("no images to extract features from")
    return torch.cat(out)


def _check_orders(orders: torch.Tensor, p: int) -> torch.Tensor:
    if orders.dim() != 2 or orders.shape[1] != p:
        raise PatchRankError(f"rankings must be orders of the model's {p} patches, got shape "
                             f"{tuple(orders.shape)}")
    srt = orders.sort(dim=1).values
    if not torch.equal(srt, torch.arange(p).expand_as(srt)):
        raise PatchRankError("every ranking must be a full order (a permutation of all patch ids)")
    return orders.long()


def train_on_features(predictor: Predictor, feats: torch.Tensor, orders: torch.Tensor, *,
                      loss: str = DEFAULT_LOSS, keep_ratio: float = 0.6, epochs: int = 50, batch: int = 64,
                      lr: float = 1e-3, wd: float = 1e-4, cosine: bool = True,
                      val_fraction: float = 0.1, patience: int | None = 10, seed: int = 0,
                      progress=None, loss_kwargs: dict | None = None,
                      threads: int | None = None) -> TrainResult:
    """Train ``predictor`` on cached tokens ``feats`` [N,1+P,D] against golden ``orders`` [N,P].

    Adam (lr 1e-3, weight decay 1e-4) with a cosine schedule to lr/10 over the planned steps
    (docs/paper.md: CosineAnnealingLR to 1e-4), no augmentation (rankings are tied to the exact crop).
    A seeded ``val_fraction`` of the images is held out; after each epoch the validation loss
    decides early stopping (``patience`` epochs without improvement) and the best epoch's weights
    are kept. Deterministic for a given seed. ``threads``: torch CPU threads while training (the
    network is tiny; 1 thread avoids OpenMP spin-waits on a busy machine), restored afterwards."""
    if loss not in LOSSES:
        raise PatchRankError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if threads is None:
        return _train(predictor, feats, orders, loss, keep_ratio, epochs, batch, lr, wd, cosine,
                      val_fraction, patience, seed, progress, loss_kwargs)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _train(predictor, feats, orders, loss, keep_ratio, epochs, batch, lr, wd, cosine,
                      val_fraction, patience, seed, progress, loss_kwargs)
    finally:
        torch.set_num_threads(before)


def _train(predictor, feats, orders, loss, keep_ratio, epochs, batch, lr, wd, cosine, val_fraction,
           patience, seed, progress, loss_kwargs) -> TrainResult:
    t0 = time.perf_counter()
    orders = _check_orders(torch.as_tensor(orders), predictor.num_patches)
    n = len(feats)
    if n != len(orders):
        raise PatchRankError(f"{n} feature rows but {len(orders)} rankings")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    fn, kw = LOSSES[loss], dict(loss_kwargs or {})
    if loss == "kl":
        kw.setdefault("keep_ratio", keep_ratio)
    steps_per_epoch = math.ceil(len(train_idx) / batch)
    total_steps = max(1, epochs * steps_per_epoch)
    opt = torch.optim.Adam(predictor.parameters(), lr=lr, weight_decay=wd)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=lr / 10)
             if cosine else None)
    report = _reporter(progress)

    def evaluate(idx: torch.Tensor) -> tuple[float, torch.Tensor]:
        predictor.eval()
        with torch.no_grad():
            s = torch.cat([predictor(feats[idx[i:i + 256]].float()) for i in range(0, len(idx), 256)])
            val_loss = float(fn(s, orders[idx], generator=torch.Generator().manual_seed(seed), **kw))
        return val_loss, s

    history, best, best_state, best_epoch, stale = [], math.inf, None, 0, 0
    for epoch in range(epochs):
        predictor.train()
        total, seen = 0.0, 0
        for idx in train_idx[torch.randperm(len(train_idx), generator=gen)].split(batch):
            s = predictor(feats[idx].float())
            lval = fn(s, orders[idx], generator=gen, **kw)
            opt.zero_grad(set_to_none=True)
            lval.backward()
            opt.step()
            if sched is not None:
                sched.step()
            total, seen = total + lval.item() * len(idx), seen + len(idx)
        entry = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "lr": opt.param_groups[0]["lr"]}
        if n_val:
            entry["val_loss"], s = evaluate(val_idx)
            entry.update(M.agreement(rankers.order_from_scores(s), orders[val_idx],
                                     keep_ratios=(keep_ratio,)))
        history.append(entry)
        report("train", epoch + 1, epochs,
               {k: v for k, v in entry.items() if k in ("train_loss", "val_loss", "kendall_tau")})
        crit = entry.get("val_loss", entry["train_loss"])
        if crit < best - 1e-7:
            best, best_epoch, stale = crit, epoch + 1, 0
            best_state = copy.deepcopy(predictor.state_dict())
        else:
            stale += 1
            if patience is not None and n_val and stale >= patience:
                report("train", epochs, epochs, {"stopped_early_at": epoch + 1})
                break
    if best_state is not None:
        predictor.load_state_dict(best_state)
    predictor.eval()
    val_metrics: dict = {}
    if n_val:
        val_loss, s = evaluate(val_idx)
        ratios = tuple(sorted({keep_ratio, 0.6, 0.4}, reverse=True))
        val_metrics = {"loss": val_loss, **M.agreement(rankers.order_from_scores(s), orders[val_idx],
                                                       keep_ratios=ratios)}
    predictor.meta.update({
        "loss": loss, "keep_ratio": keep_ratio, "val_metrics": val_metrics, "best_epoch": best_epoch,
        "settings": {"loss": loss, "keep_ratio": keep_ratio, "epochs": epochs, "batch": batch, "lr": lr,
                     "weight_decay": wd, "cosine": cosine, "val_fraction": val_fraction,
                     "patience": patience, "seed": seed, "loss_kwargs": loss_kwargs or {}},
        "num_train": len(train_idx), "num_val": n_val})
    return TrainResult(predictor, history, val_metrics, best_epoch, len(train_idx), n_val,
                       time.perf_counter() - t0)


def train_predictor(m, dataset, rankings, *, loss: str = DEFAULT_LOSS, keep_ratio: float = 0.6,
                    epochs: int = 50, batch: int = 64, lr: float = 1e-3, wd: float = 1e-4,
                    cosine: bool = True, val_fraction: float = 0.1, patience: int | None = 10,
                    seed: int = 0, progress=None, predictor: Predictor | None = None,
                    feature_batch: int = 32, cache_dtype: torch.dtype = torch.float32,
                    loss_kwargs: dict | None = None, threads: int | None = None) -> TrainResult:
    """Train a predictor for model ``m`` on the images of ``dataset`` that have a golden ranking.

    ``dataset``: ``.ids`` (image ids) and ``.image(i)`` (the i-th image: PIL, or a preprocessed
    tensor), e.g. ``patchrank.data.datasets.open_dataset(spec)``. ``rankings``: {image_id: order
    LongTensor[P]} or ``(meta, {...})`` as ``patchrank.store.load_rankings`` returns; a meta
    ``model_id`` other than ``m.model_id`` is refused. Tokens at block k are computed once per
    image (frozen backbone) and cached in memory as ``cache_dtype``. See ``train_on_features``."""
    meta = {}
    if isinstance(rankings, tuple):
        meta, rankings = rankings
        meta = meta or {}
        mid = meta.get("model_id")
        if mid is not None and mid != m.model_id:
            raise ModelMismatch(f"these rankings were made for model {mid!r}, not {m.model_id!r}")
        layer = (meta.get("settings") or {}).get("prune_layer")
        if layer is not None and layer != m.prune_layer:
            raise PatchRankError(f"these rankings were made at prune layer {layer} but the model "
                                 f"prunes at {m.prune_layer}; set m.prune_layer = {layer}")
    ids = list(dataset.ids)
    use = [i for i, key in enumerate(ids) if key in rankings]
    if not use:
        raise PatchRankError("no image of the dataset has a ranking (are the ids from the same "
                             "dataset spec as the golden job's?)")
    orders = torch.stack([torch.as_tensor(rankings[ids[i]]).long() for i in use])
    orders = _check_orders(orders, m.num_patches)
    report = _reporter(progress)
    feats = extract_features(m, (dataset.image(i) for i in use), batch=feature_batch,
                             progress=report, total=len(use), dtype=cache_dtype)
    if predictor is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            predictor = Predictor.for_model(m)
    else:
        predictor.check_model(m)
    res = train_on_features(predictor, feats, orders, loss=loss, keep_ratio=keep_ratio, epochs=epochs,
                            batch=batch, lr=lr, wd=wd, cosine=cosine, val_fraction=val_fraction,
                            patience=patience, seed=seed, progress=report, loss_kwargs=loss_kwargs,
                            threads=threads)
    res.predictor.meta["model"] = {"name": m.name, "pretrained": m.pretrained}
    if meta:
        res.predictor.meta["rankings"] = {k: meta.get(k) for k in ("settings", "settings_hash", "data")}
    return res
