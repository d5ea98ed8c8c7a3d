"""Subcommands that make things: ``golden`` rankings, ``train-clip``, ``train-predictor`` and
``tune-tokens``. Arguments and the call into the library only; the work lives in the library.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from .options import (Command, hidden_alias, joined, load, non_negative_int, one_ratio, positive_int,
                      ratio_list)


# -- golden ---------------------------------------------------------------------------------------
def add_golden(p: argparse.ArgumentParser) -> None:
    from ..golden import MODES, SCORES, SEARCH   # the project's "golden" (README: which and why)
    p.add_argument("--data", required=True, help="bundled-eval, bundled-train:N or an image folder")
    p.add_argument("--out", required=True, help="ranking folder (rerun to resume)")
    p.add_argument("--score", default=SEARCH.score, choices=list(SCORES),
                   help="what a patch's removal costs: embedding change, true-class or top-class "
                        "log-probability")
    p.add_argument("--step", type=positive_int, default=SEARCH.step, help="candidates dropped per round")
    p.add_argument("--block", type=int, default=SEARCH.block, choices=[1, 2],
                   help="1 = patches, 2 = 2x2 cells")
    p.add_argument("--stop-at", type=one_ratio, default=SEARCH.stop_at,
                   help="keep ratio to stop the search at (default: the full order)")
    p.add_argument("--mode", default=SEARCH.mode, choices=list(MODES),
                   help="oneshot: one leave-one-out round (the project's golden); greedy: the "
                        "paper's elimination (--step 10); c2f: coarse-to-fine greedy")
    p.add_argument("--classnames", default=None,
                   help="file with one class name per line (scores 'label'/'max'; overrides the "
                        "dataset's names, e.g. for an unlabelled folder with --score max)")
    p.add_argument("--lazy", action="store_true", help="lazy re-scoring (greedy)")
    p.add_argument("--limit", type=positive_int, default=None, help="first N images only")
    p.add_argument("--batch-budget-mb", type=float, default=SEARCH.batch_budget_mb,
                   help="memory for one batch of candidate variants")


def run_golden(a: argparse.Namespace) -> dict | None:
    """Under torchrun each rank takes its share of the images; rank 0 reports."""
    from ..data.datasets import open_dataset
    from ..distributed import rank_world
    from ..errors import PatchRankError
    from ..golden_job import rank_dataset, read_classnames_file

    if a.dtype != "float32":
        raise PatchRankError(
            "golden rankings are searched in float32 only: under bf16 the order disagrees with "
            "float32's (Kendall tau 0.48 on the bundled model, 0.75 on ViT-B-16; "
            "benchmarks/golden_bf16.py), so a bf16 golden ranking would rank rounding, not patches")

    ds = open_dataset(a.data, a.limit)            # fail fast on a bad --data
    if a.classnames:
        ds.classnames = read_classnames_file(a.classnames, ds.classnames)
    m = load(a, dtype="float32")
    summary = rank_dataset(m, ds, a.out, score=a.score, step=a.step, block=a.block,
                           stop_at=a.stop_at, mode=a.mode, lazy=a.lazy,
                           limit=a.limit, batch_budget_mb=a.batch_budget_mb,
                           progress=not a.no_progress)
    return summary if rank_world()[0] == 0 else None


# -- train-clip -----------------------------------------------------------------------------------
def add_train_clip(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="run folder (checkpoint; rerun to resume)")
    p.add_argument("--steps", type=positive_int, default=None,
                   help="stop after this many steps (the schedule stays the config's; rerun to go on)")
    p.add_argument("--config", default=None, help="model + schedule config (default: the bundled one)")
    p.add_argument("--seed", type=int, default=None, help="overrides the config's seed")
    p.add_argument("--export", default=None,
                   help="after training, write the shipped model files into this folder")


def run_train_clip(a: argparse.Namespace) -> dict:
    from ..bundled import export_bundled
    from ..train_clip import train
    entry = train(a.out, steps=a.steps, seed=a.seed, threads=None, progress=not a.no_progress,
                  **({"config_path": a.config} if a.config else {}))
    exported = export_bundled(os.path.join(a.out, "ckpt.pt"), a.export) if a.export else None
    return {"last": entry, "export": exported}


# -- train-predictor ------------------------------------------------------------------------------
def add_train_predictor(p: argparse.ArgumentParser) -> None:
    from ..predictor import LOSSES
    from ..predictor_training import TRAINING
    p.add_argument("--rankings", required=True, help="ranking folder of `golden` (same model)")
    p.add_argument("--data", default=None, help="dataset spec of the rankings (default: the one "
                   "recorded in the ranking folder)")
    p.add_argument("--out", required=True, help="predictor file (.safetensors)")
    p.add_argument("--loss", default=TRAINING.loss, choices=list(LOSSES),
                   help="kl: the paper's keep-set loss; margin: pairwise; listwise: Plackett-Luce")
    p.add_argument("--ratios", type=one_ratio, default=joined([TRAINING.keep_ratio]),
                   help="the one keep ratio it is trained and measured at (the kl loss's kept set, "
                        "validation IoU, reported cost)")
    hidden_alias(p, "--keep-ratio", "--ratios")
    p.add_argument("--epochs", type=positive_int, default=TRAINING.epochs, help="epochs at most")
    p.add_argument("--batch", type=positive_int, default=TRAINING.batch, help="images per step")
    p.add_argument("--lr", type=float, default=TRAINING.lr, help="Adam learning rate")
    p.add_argument("--wd", type=float, default=TRAINING.wd, help="weight decay")
    p.add_argument("--seed", type=int, default=TRAINING.seed, help="init, split and shuffling")
    p.add_argument("--val-fraction", type=float, default=TRAINING.val_fraction,
                   help="share of the images held out for early stopping")
    p.add_argument("--patience", type=non_negative_int, default=TRAINING.patience,
                   help="early stopping after this many epochs without improvement (0 = off)")


def run_train_predictor(a: argparse.Namespace) -> dict:
    from .. import rankings
    from ..data.datasets import open_dataset
    from ..errors import PatchRankError
    from ..predictor_training import train_predictor
    meta, ranks = rankings.load_rankings(a.rankings)
    data = a.data or meta.get("data")
    if not data:
        raise PatchRankError(f"{a.rankings} does not record its dataset; give --data")
    a.prune_layer = (meta.get("settings") or {}).get("prune_layer")   # the layer the rankings pruned
    m = load(a)
    checkpoint = Path(a.out).with_name(Path(a.out).name + ".ckpt")   # rerun after a kill: resumes
    res = train_predictor(m, open_dataset(data), (meta, ranks), loss=a.loss, keep_ratio=a.ratios,
                          epochs=a.epochs, batch=a.batch, lr=a.lr, wd=a.wd,
                          val_fraction=a.val_fraction, patience=a.patience or None, seed=a.seed,
                          progress=not a.no_progress, checkpoint=checkpoint)
    from ..distributed import rank_world
    if rank_world()[0] != 0:              # data-parallel: every rank holds the same predictor
        return None
    res.predictor.meta["command"] = getattr(a, "command_line", None)   # for its model card
    path = res.predictor.save(a.out)
    checkpoint.unlink(missing_ok=True)
    return {"out": str(path), "model_id": m.model_id, "prune_layer": m.prune_layer,
            **res.summary(), "cost": res.predictor.cost(m, a.ratios)}


# -- tune-tokens ----------------------------------------------------------------------------------
def add_tune_tokens(p: argparse.ArgumentParser) -> None:
    from ..token_training import TUNE
    p.add_argument("--ranker", required=True,
                   help="'predictor' (bundled), a predictor file, or a ranker name (attention, ...)")
    p.add_argument("--out", required=True, help="tokens file (.safetensors)")
    p.add_argument("--visual", type=non_negative_int, default=TUNE.num_visual,
                   help="visual tokens appended at the prune layer")
    p.add_argument("--deep", action="store_true", help="a fresh set at every later block (VPT-deep)")
    p.add_argument("--text-ctx", type=non_negative_int, default=TUNE.text_ctx,
                   help="learned text context vectors (CoOp; 0 = hand-written prompt)")
    p.add_argument("--ctx-init", default=TUNE.ctx_init,
                   help="words that initialise the context ('template' = the template's prefix)")
    p.add_argument("--init", default=TUNE.init, choices=["normal", "mean"],
                   help="visual token init")
    p.add_argument("--ratios", type=ratio_list, default=joined(TUNE.ratios),
                   help="keep ratios; one is drawn per step")
    p.add_argument("--data", default=TUNE.data, help="labelled dataset spec")
    p.add_argument("--shots", type=positive_int, default=TUNE.shots,
                   help="images per class (the first ones)")
    p.add_argument("--epochs", type=positive_int, default=TUNE.epochs, help="epochs")
    p.add_argument("--batch", type=positive_int, default=TUNE.batch,
                   help="images per step")
    p.add_argument("--lr", type=float, default=TUNE.lr, help="learning rate")
    p.add_argument("--wd", type=float, default=TUNE.weight_decay, help="weight decay")
    p.add_argument("--optimizer", default=TUNE.optimizer, choices=["adamw", "sgd"],
                   help="optimizer")
    p.add_argument("--objective", default=TUNE.objective, choices=["ce", "distill"],
                   help="ce: labels (few-shot, the paper); distill: match the unpruned model's "
                        "predictions (no labels needed; see patchrank/tokens.py)")
    p.add_argument("--seed", type=int, default=TUNE.seed, help="init and shuffling")
    p.add_argument("--eval", default=None, help="dataset spec to measure on ('none' to skip; "
                   "default bundled-eval for the bundled model, else none)")


def run_tune_tokens(a: argparse.Namespace) -> dict:
    from ..token_job import describe_ranker, few_shot, measure_on
    from ..token_training import tune_tokens
    m = load(a)
    checkpoint = Path(a.out).with_name(Path(a.out).name + ".ckpt")   # rerun after a kill: resumes
    r, source = resolve_ranker(a.ranker, m)
    images, labels, classnames = few_shot(a.data, a.shots)
    t, log = tune_tokens(m, images, labels, classnames, ranker=r, ratios=a.ratios,
                         num_visual=a.visual, deep=a.deep, text_ctx=a.text_ctx,
                         ctx_init=a.ctx_init, init=a.init, seed=a.seed, progress=not a.no_progress,
                         epochs=a.epochs, batch=a.batch, lr=a.lr, optimizer=a.optimizer,
                         weight_decay=a.wd, objective=a.objective, checkpoint=checkpoint)
    t.meta["ranker"] = describe_ranker(r, source)
    t.meta["data"] = {"spec": a.data, "shots": a.shots, "images": len(images)}
    t.meta["model"] = {"name": m.name, "pretrained": m.pretrained}
    t.meta["settings"] = {k: v for k, v in vars(a).items()
                          if k not in ("run", "no_progress", "threads", "traceback", "command_line")}
    ev_spec = a.eval if a.eval is not None else ("bundled-eval" if a.model == "bundled" else "none")
    if ev_spec != "none":
        t.meta["accuracy"] = measure_on(m, t, r, ev_spec, a.ratios, progress=not a.no_progress)
    path = t.save(a.out)
    checkpoint.unlink(missing_ok=True)
    return {"out": str(path), "model_id": m.model_id, "prune_layer": m.prune_layer,
            "num_visual": t.num_visual, "deep": t.deep, "n_ctx": t.n_ctx,
            "ranker": t.meta["ranker"], "train": log.summary(), "accuracy": t.meta.get("accuracy")}


def resolve_ranker(spec: str, m) -> tuple[object, str | None]:
    """--ranker as ``patchrank.prune`` reads it ('predictor' = the bundled predictor, a file or
    hf-hub: id = a predictor, else a registered ranker's name, kept as the name so the tokens
    file records it). Returns (ranker, source of a predictor or None)."""
    from ..dropin import resolve_ranker as resolve
    from ..predictor import Predictor, default_path
    r = resolve(spec, m)
    if not isinstance(r, Predictor):
        return spec, None
    return r, str(default_path()) if spec == "predictor" else spec


COMMANDS = (
    Command("golden", "golden rankings of a dataset into a folder: one-shot leave-one-out by "
            "default, the paper's greedy search with --mode greedy (resumable; torchrun "
            "--nproc_per_node=N -m patchrank golden ... shards it)", add_golden, run_golden,
            distributed=True),
    Command("train-clip", "train the bundled CLIP on generated scenes (resumable)",
            add_train_clip, run_train_clip, dict(model_options=False, compute=False)),
    Command("train-predictor", "train a patch-ranking predictor on golden rankings (data-parallel "
            "under torchrun --nproc_per_node=N -m patchrank train-predictor ...)",
            add_train_predictor, run_train_predictor, dict(prune_layer=False), distributed=True),
    Command("tune-tokens", "train learnable visual tokens / text context with pruning active "
            "(backbone and ranker frozen)", add_tune_tokens, run_tune_tokens),
)
