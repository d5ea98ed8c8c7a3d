"""Subcommands that put pruning to use: ``embed`` (embeddings of a folder), ``export`` (the
pruned image encoder as ONNX) and ``publish`` (a predictor's model card for the Hub). Arguments
and the call into the library only.
"""
from __future__ import annotations

import argparse

from ..embed import OUT_DTYPES, embed_images
from ..export import export_onnx
from ..publish import upload_commands, write_model_card
from .options import Command, default_of, load, one_ratio, positive_int

RANKER_HELP = ("a predictor file made for --model, hf-hub:org/repo, 'predictor' (the bundled one), "
               "or a training-free ranker: norm, attention, tome, ...")


# -- embed ----------------------------------------------------------------------------------------
def add_embed(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True,
                   help="image folder (searched recursively) or a text file with one image path per line")
    p.add_argument("--out", required=True, help="embeddings .npy (an index .json is written beside it)")
    p.add_argument("--keep", type=one_ratio, default=default_of(embed_images, "keep_ratio"),
                   help="keep ratio in (0, 1]; 1.0 = open_clip's own embeddings")
    p.add_argument("--ranker", default=default_of(embed_images, "ranker"), help=RANKER_HELP)
    p.add_argument("--tokens", default=None, help="learnable tokens file made for --model ('bundled': the bundled ones)")
    p.add_argument("--batch", type=positive_int, default=default_of(embed_images, "batch"), help="images per batch")
    p.add_argument("--workers", type=int, default=default_of(embed_images, "workers"),
                   help="image-decoding worker processes (0: decode in the main process)")
    p.add_argument("--out-dtype", default=default_of(embed_images, "out_dtype"), choices=OUT_DTYPES,
                   help="precision of the saved embeddings")
    p.add_argument("--no-normalize", action="store_true", help="save unnormalised embeddings")
    p.add_argument("--on-error", default=default_of(embed_images, "on_error"), choices=["skip", "stop"],
                   help="an unreadable image: skip it (named on stderr, counted) or stop")
    p.add_argument("--no-compare", action="store_true",
                   help="skip timing the full model on the first batch for the speed-up figure")
    p.add_argument("--fresh", action="store_true", help="discard an unfinished earlier run")


def run_embed(a: argparse.Namespace) -> dict:
    return embed_images(load(a), a.data, a.out, keep_ratio=a.keep, ranker=a.ranker, tokens=a.tokens,
                        batch=a.batch, workers=a.workers, out_dtype=a.out_dtype,
                        normalize=not a.no_normalize, on_error=a.on_error, fresh=a.fresh,
                        compare=not a.no_compare, progress=not a.no_progress)


# -- export ---------------------------------------------------------------------------------------
def add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="the .onnx file to write")
    p.add_argument("--keep", type=one_ratio, default=default_of(export_onnx, "keep_ratio"),
                   help="keep ratio in (0, 1]: fixes the kept count in the graph")
    p.add_argument("--ranker", default=default_of(export_onnx, "ranker"), help=RANKER_HELP)
    p.add_argument("--tokens", default=None, help="learnable tokens file made for --model")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime-vs-PyTorch check")


def run_export(a: argparse.Namespace) -> dict:
    return export_onnx(load(a, dtype="float32"), a.out, keep_ratio=a.keep, ranker=a.ranker,
                       tokens=a.tokens, check=not a.no_check)


# -- publish --------------------------------------------------------------------------------------
def add_publish(p: argparse.ArgumentParser) -> None:
    p.add_argument("predictor", help="predictor file (.safetensors)")
    p.add_argument("repo_id", nargs="?", default=None, help="Hub repository it goes to (ORG/REPO)")
    p.add_argument("--out", default=None, help="card path (default: README.md beside the predictor)")


def run_publish(a: argparse.Namespace) -> dict:
    card = write_model_card(a.predictor, a.out, a.repo_id)
    return {"card": str(card), "upload": upload_commands(a.predictor, card, a.repo_id)}


COMMANDS = (
    Command("embed", "image embeddings of a folder, pruned (resumable; .npy + .json index)",
            add_embed, run_embed),
    Command("export", "the pruned image encoder, patch selection included, as ONNX",
            add_export, run_export, dict(compute=False)),
    Command("publish", "write a predictor's model card (README.md) from the file itself and print "
            "the hf upload commands that publish both", add_publish, run_publish, None),
)
