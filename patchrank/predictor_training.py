"""Training the predictor (paper phase II, docs/paper.md) on golden rankings, in one process or
data-parallel under ``torchrun``.

The backbone is frozen, so the tokens entering the prune layer are computed once per image
(``extract_features``: the only costly step, one prefix per image) and every epoch trains the
46 K-parameter predictor on that cache. Data-parallel (``torch.distributed`` group up): the seeded
train/validation split is the same on every rank; each rank extracts and keeps the features of
its share only (memory scales with the number of processes); each global batch of ``batch``
images is drawn in the same order on every rank, each rank computes the loss on its members and
the gradients are summed across ranks, weighted by share, so a step is the single-process step on
the whole batch; validation scores are gathered, so early stopping decides the same everywhere.
"""
from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field
from typing import Iterable

import torch

from .distributed import gather, group, rank_world
from .errors import ModelMismatch, PatchRankError
from .metrics import agreement
from .ordering import order_from_scores
from .predictor import DEFAULT_LOSS, LOSSES, Predictor
from .progress import staged as staged_progress
from .resume import load_state, run_key, save_state


@dataclass(frozen=True)
class PredictorTraining:
    """The ``train-predictor`` settings and their defaults, defined here once (``train_predictor``,
    ``train_on_features`` and the command read them). Adam at ``lr`` with weight decay ``wd``,
    cosine to lr/10 (docs/paper.md: CosineAnnealingLR to 1e-4); ``keep_ratio``: the kl loss's
    kept set, the validation IoU and the reported cost; ``patience``: epochs without improvement
    of the validation loss before stopping (None: never)."""
    loss: str = DEFAULT_LOSS
    keep_ratio: float = 0.6
    epochs: int = 50
    batch: int = 64
    lr: float = 1e-3
    wd: float = 1e-4
    cosine: bool = True
    val_fraction: float = 0.1
    patience: int | None = 10
    seed: int = 0


TRAINING = PredictorTraining()


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
                "num_train": self.num_train, "num_val": self.num_val, "val_metrics": self.val_metrics,
                "seconds": round(self.seconds, 2), "params": self.predictor.num_params(),
                "settings": self.predictor.meta.get("settings")}


def extract_features(m, images: Iterable, batch: int = 32, progress=None, total: int | None = None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Tokens entering block ``m.prune_layer`` for each image, [N,1+P,D], computed once under
    ``inference_mode`` (the backbone is frozen, so caching them makes every epoch cheap).
    ``images``: PIL images (preprocessed with ``m.preprocess``) or tensors [3,H,W] already
    preprocessed."""
    report = staged_progress(progress)
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


def split(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) positions of ``n`` images: a seeded draw, the same on every rank."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = 0 if val_fraction <= 0 or n < 2 else min(n - 1, max(1, round(val_fraction * n)))
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def owned_positions(n: int, val_fraction: float, seed: int) -> torch.Tensor:
    """The image positions whose features this rank extracts and keeps: every ``world``-th of
    the train and of the validation positions (all of them in one process)."""
    rank, world = rank_world()
    tr, va = split(n, val_fraction, seed)
    return torch.cat([tr[rank::world], va[rank::world]]).sort().values


def train_on_features(predictor: Predictor, feats: torch.Tensor, orders: torch.Tensor, *,
                      loss: str = TRAINING.loss, keep_ratio: float = TRAINING.keep_ratio,
                      epochs: int = TRAINING.epochs, batch: int = TRAINING.batch,
                      lr: float = TRAINING.lr, wd: float = TRAINING.wd, cosine: bool = TRAINING.cosine,
                      val_fraction: float = TRAINING.val_fraction,
                      patience: int | None = TRAINING.patience, seed: int = TRAINING.seed,
                      progress=None, loss_kwargs: dict | None = None,
                      threads: int | None = None, owned: torch.Tensor | None = None,
                      checkpoint: str | os.PathLike | None = None) -> TrainResult:
    """Train ``predictor`` on cached tokens ``feats`` against golden ``orders`` [N,P].

    Adam (``PredictorTraining``) with a cosine schedule to lr/10 over the planned steps
    (docs/paper.md: CosineAnnealingLR to 1e-4), no augmentation (rankings are tied to the exact crop).
    A seeded ``val_fraction`` of the images is held out; after each epoch the validation loss
    decides early stopping (``patience`` epochs without improvement) and the best epoch's weights
    are kept. Deterministic for a given seed. ``checkpoint``: a file the state is saved to after
    every epoch; a rerun with the same settings and data resumes from it and ends where an
    uninterrupted run would (the caller deletes it when done). ``owned``: the positions (into ``orders``) whose
    rows ``feats`` holds, data-parallel (default: all, ``feats`` [N,1+P,D]). ``threads``: torch
    CPU threads while training (the network is tiny; 1 thread avoids OpenMP spin-waits on a busy
    machine), restored afterwards."""
    if loss not in LOSSES:
        raise PatchRankError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train(predictor, feats, orders, owned, loss, keep_ratio, epochs, batch, lr, wd, cosine,
                      val_fraction, patience, seed, progress, loss_kwargs, checkpoint)
    finally:
        torch.set_num_threads(before)


class _Shard:
    """This rank's rows of the feature cache, looked up by global image position."""

    def __init__(self, feats: torch.Tensor, owned: torch.Tensor | None, n: int):
        self.feats = feats
        self.row = torch.arange(n) if owned is None else torch.full((n,), -1, dtype=torch.long)
        if owned is not None:
            self.row[owned] = torch.arange(len(owned))
        if len(feats) != int((self.row >= 0).sum()):
            raise PatchRankError(f"{len(feats)} feature rows for {int((self.row >= 0).sum())} images")

    def mine(self, idx: torch.Tensor) -> torch.Tensor:
        return idx[self.row[idx] >= 0]

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        return self.feats[self.row[idx]].float()


def _step(predictor, opt, sched, fn, shard: _Shard, orders, idx, gen, kw) -> float:
    """One optimiser step on the global batch ``idx``; returns its mean loss (all ranks)."""
    dist = group()
    mine = shard.mine(idx) if dist else idx
    opt.zero_grad(set_to_none=False)
    if len(mine):
        lval = fn(predictor(shard.features(mine)), orders[mine], generator=gen, **kw)
        (lval * (len(mine) / len(idx))).backward()
        part = lval.item() * len(mine)
    else:
        part = 0.0
    if dist:
        for p in predictor.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
        t = torch.tensor([part])
        dist.all_reduce(t)
        part = float(t)
    opt.step()
    if sched is not None:
        sched.step()
    return part / len(idx)


def _scores(predictor, shard: _Shard, idx: torch.Tensor) -> torch.Tensor:
    """Scores of the images ``idx`` in that order, gathered from the ranks that hold them."""
    mine = shard.mine(idx) if group() else idx
    with torch.no_grad():
        s = [predictor(shard.features(mine[i:i + 256])) for i in range(0, len(mine), 256)]
    s = torch.cat(s) if s else torch.zeros(0, predictor.num_patches)
    if group() is None:
        return s
    parts = gather((mine, s))
    pos = torch.cat([p for p, _ in parts])
    return torch.cat([v for _, v in parts])[torch.argsort(pos)]


def _evaluate(predictor, shard: _Shard, orders, val_idx, fn, kw, seed: int, ratios: tuple) -> dict:
    """Validation loss (a fixed generator: comparable across epochs) and agreement with golden."""
    predictor.eval()
    s = _scores(predictor, shard, val_idx)
    val_loss = float(fn(s, orders[val_idx], generator=torch.Generator().manual_seed(seed), **kw))
    return {"val_loss": val_loss, **agreement(order_from_scores(s), orders[val_idx],
                                              keep_ratios=ratios)}


def _optimiser(predictor, lr: float, wd: float, cosine: bool, total_steps: int):
    """Adam and, with ``cosine``, its schedule to lr/10 over the planned steps."""
    opt = torch.optim.Adam(predictor.parameters(), lr=lr, weight_decay=wd)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=lr / 10)
             if cosine else None)
    return opt, sched


@dataclass
class _Run:
    """The training loop's state between epochs: what a checkpoint holds besides the weights."""
    epoch: int = 0
    history: list = field(default_factory=list)
    best: float = math.inf
    best_state: dict | None = None
    best_epoch: int = 0
    stale: int = 0
    stopped: bool = False


def _resume(path, key: str, predictor, opt, sched, gen) -> _Run:
    """The state of an interrupted run with the same ``key`` (``patchrank.resume``), else fresh."""
    ck = load_state(path, key)
    if ck is None:
        return _Run()
    predictor.load_state_dict(ck["predictor"])
    opt.load_state_dict(ck["opt"])
    if sched is not None:
        sched.load_state_dict(ck["sched"])
    gen.set_state(ck["gen"])
    return _Run(**ck["run"])


def _save_checkpoint(path, key: str, run: _Run, predictor, opt, sched, gen) -> None:
    save_state(path, key, {"predictor": predictor.state_dict(), "opt": opt.state_dict(),
                           "sched": sched.state_dict() if sched is not None else None,
                           "gen": gen.get_state(), "run": run.__dict__})


def _train(predictor, feats, orders, owned, loss, keep_ratio, epochs, batch, lr, wd, cosine,
           val_fraction, patience, seed, progress, loss_kwargs, checkpoint=None) -> TrainResult:
    t0 = time.perf_counter()
    orders = _check_orders(torch.as_tensor(orders), predictor.num_patches)
    shard = _Shard(feats, owned, len(orders))
    train_idx, val_idx = split(len(orders), val_fraction, seed)
    fn, kw = LOSSES[loss], dict(loss_kwargs or {})
    if loss == "kl":
        kw.setdefault("keep_ratio", keep_ratio)
    settings = {"loss": loss, "keep_ratio": keep_ratio, "epochs": epochs, "batch": batch, "lr": lr,
                "weight_decay": wd, "cosine": cosine, "val_fraction": val_fraction,
                "patience": patience, "seed": seed, "loss_kwargs": loss_kwargs or {}}
    opt, sched = _optimiser(predictor, lr, wd, cosine, max(1, epochs * math.ceil(len(train_idx) / batch)))
    gen = torch.Generator().manual_seed(seed)
    torch.randperm(len(orders), generator=gen)     # the split's draw: shuffles as before ``split``
    run = _resume(checkpoint, run_key(settings, orders, predictor.model_id), predictor, opt, sched, gen)
    report = staged_progress(progress if rank_world()[0] == 0 else None)

    def evaluate(ratios: tuple) -> dict:
        return _evaluate(predictor, shard, orders, val_idx, fn, kw, seed, ratios)

    while run.epoch < epochs and not run.stopped:
        _epoch(run, predictor, opt, sched, fn, kw, shard, orders, train_idx, batch, gen, seed)
        entry = run.history[-1]
        if len(val_idx):
            entry.update(evaluate((keep_ratio,)))
        report("train", run.epoch, epochs,
               {k: v for k, v in entry.items() if k in ("train_loss", "val_loss", "kendall_tau")})
        _keep_best(run, entry, predictor, patience if len(val_idx) else None)
        _save_checkpoint(checkpoint, run_key(settings, orders, predictor.model_id), run, predictor, opt, sched, gen)
    if run.stopped:
        report("train", epochs, epochs, {"stopped_early_at": run.epoch})
    if run.best_state is not None:
        predictor.load_state_dict(run.best_state)
    predictor.eval()
    val_metrics = {}
    if len(val_idx):
        ev = evaluate(tuple(sorted({keep_ratio, 0.6, 0.4}, reverse=True)))
        val_metrics = {"loss": ev.pop("val_loss"), **ev}
    predictor.meta.update({"loss": loss, "keep_ratio": keep_ratio, "val_metrics": val_metrics,
                           "best_epoch": run.best_epoch, "settings": settings,
                           "num_train": len(train_idx), "num_val": len(val_idx)})
    return TrainResult(predictor, run.history, val_metrics, run.best_epoch, len(train_idx),
                       len(val_idx), time.perf_counter() - t0)


def _epoch(run: _Run, predictor, opt, sched, fn, kw, shard, orders, train_idx, batch, gen, seed) -> None:
    """One pass over the training images in a seeded order (the same on every rank). In one
    process the loss's pair sampling draws from the same generator (as before checkpoints
    existed, so results did not change); data-parallel, each rank draws from its own, seeded
    per epoch so a resumed run samples as an uninterrupted one would."""
    rank = rank_world()[0]
    loss_gen = gen if group() is None else torch.Generator().manual_seed(
        seed + 1 + rank + 7919 * run.epoch)
    predictor.train()
    total = 0.0
    for idx in train_idx[torch.randperm(len(train_idx), generator=gen)].split(batch):
        total += _step(predictor, opt, sched, fn, shard, orders, idx, loss_gen, kw) * len(idx)
    run.epoch += 1
    run.history.append({"epoch": run.epoch, "train_loss": total / max(len(train_idx), 1),
                        "lr": opt.param_groups[0]["lr"]})


def _keep_best(run: _Run, entry: dict, predictor, patience: int | None) -> None:
    """Best epoch by validation loss (training loss without validation); early stopping."""
    crit = entry.get("val_loss", entry["train_loss"])
    if crit < run.best - 1e-7:
        run.best, run.best_epoch, run.stale = crit, run.epoch, 0
        run.best_state = copy.deepcopy(predictor.state_dict())
    else:
        run.stale += 1
        run.stopped = patience is not None and run.stale >= patience


def train_predictor(m, dataset, rankings, *, loss: str = TRAINING.loss,
                    keep_ratio: float = TRAINING.keep_ratio, epochs: int = TRAINING.epochs,
                    batch: int = TRAINING.batch, lr: float = TRAINING.lr, wd: float = TRAINING.wd,
                    cosine: bool = TRAINING.cosine, val_fraction: float = TRAINING.val_fraction,
                    patience: int | None = TRAINING.patience, seed: int = TRAINING.seed, progress=None, predictor: Predictor | None = None,
                    feature_batch: int = 32, cache_dtype: torch.dtype = torch.float32,
                    loss_kwargs: dict | None = None, threads: int | None = None,
                    checkpoint: str | os.PathLike | None = None) -> TrainResult:
    """Train a predictor for model ``m`` on the images of ``dataset`` that have a golden ranking.

    ``dataset``: ``.ids`` (image ids) and ``.image(i)`` (the i-th image: PIL, or a preprocessed
    tensor), e.g. ``patchrank.data.datasets.open_dataset(spec)``. ``rankings``: {image_id: order
    LongTensor[P]} or ``(meta, {...})`` as ``patchrank.rankings.load_rankings`` returns; a meta
    ``model_id`` other than ``m.model_id`` is refused. Tokens at the prune layer are computed once per
    image (frozen backbone) and cached in memory as ``cache_dtype``. See ``train_on_features``;
    data-parallel under torchrun (module docstring), every rank returns the same predictor."""
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
    report = staged_progress(progress if rank_world()[0] == 0 else None)
    owned = owned_positions(len(use), val_fraction, seed)
    feats = extract_features(m, (dataset.image(use[j]) for j in owned.tolist()), batch=feature_batch,
                             progress=report, total=len(owned), dtype=cache_dtype)
    if predictor is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            predictor = Predictor.for_model(m)
    else:
        predictor.check_model(m)
    res = train_on_features(predictor, feats, orders, loss=loss, keep_ratio=keep_ratio, epochs=epochs,
                            batch=batch, lr=lr, wd=wd, cosine=cosine, val_fraction=val_fraction,
                            patience=patience, seed=seed, progress=report, loss_kwargs=loss_kwargs,
                            threads=threads, owned=owned if group() else None,
                            checkpoint=checkpoint)
    res.predictor.meta["model"] = {"name": m.name, "pretrained": m.pretrained}
    if meta:
        res.predictor.meta["rankings"] = {k: meta.get(k) for k in ("settings", "settings_hash", "data")}
    return res
