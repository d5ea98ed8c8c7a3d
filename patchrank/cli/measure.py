"""Subcommands that measure: ``eval-bundled``, ``sweep``, ``reproduce``, ``bench`` and
``figures``. Arguments and the call into the library only; the work lives in the library.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from .. import figures, sweep
from ..data.coop import PAPER_DATASETS
from ..errors import PatchRankError
from ..files import write_json
from ..reproduce import REPRODUCE, reproduce
from ..results import load_results
from ..sweep import SweepSettings
from ..sweep_latency import bench
from .options import (Command, add_format, batch_list, default_of, hidden_alias, joined, load,
                      name_list, positive_int, ratio_list)

#: The sweep's defaults, shown by --help and used when a flag is not given.
SWEEP = SweepSettings()


# -- eval-bundled ---------------------------------------------------------------------------------
def add_eval_bundled(p: argparse.ArgumentParser) -> None:
    from ..evaluation import evaluate_bundled as fn
    p.add_argument("--seed", type=int, default=default_of(fn, "seed"), help="seed of the random-removal control")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="first N scenes only (a quick check that an install works; the model "
                        "card's numbers use all 1,200)")


def run_eval_bundled(a: argparse.Namespace) -> dict:
    from ..evaluation import evaluate_bundled
    return evaluate_bundled(load(a), seed=a.seed, limit=a.limit, progress=not a.no_progress)


# -- sweep ----------------------------------------------------------------------------------------
def add_sweep(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="bundled-eval",
                   help="bundled-eval, an image folder (class subfolders), or a CoOp dataset folder "
                        "(optionally @train/@val/@test)")
    p.add_argument("--methods", type=name_list, default=joined(SWEEP.methods),
                   help="golden (one-shot leave-one-out), golden-greedy (the paper's search), predictor, "
                        "<method>+tokens, attention, attention+fuse, norm, norm-low, random, tome")
    p.add_argument("--ratios", type=ratio_list, default=joined(SWEEP.ratios), help="keep ratios")
    p.add_argument("--out", required=True, help="results JSON (CSV and a resumable .cells.jsonl beside it)")
    p.add_argument("--rankings", default=None, help="golden ranking folder to reuse for 'golden' "
                   "(default: search per image, slow)")
    p.add_argument("--predictor", default=None, help="predictor file or hf-hub:org/repo[/file] (default: the bundled one)")
    p.add_argument("--tokens", default=None, help="learnable tokens file (default: the bundled ones)")
    p.add_argument("--template", action="append", default=None,
                   help="prompt template with {} (repeatable), or 'ensemble' (open_clip's 80 "
                        "OpenAI ImageNet prompts); default: the dataset's own (CoOp) or the model's")
    p.add_argument("--limit", type=positive_int, default=None, help="first N images only")
    _add_batches(p, SWEEP)
    p.add_argument("--warmup", type=int, default=SWEEP.warmup, help="untimed rounds first")
    p.add_argument("--fresh", action="store_true", help="discard finished cells of an earlier run")
    p.add_argument("--png", default=None, help="also draw the trade-off figure here (e.g. docs/tradeoff.png)")


def _add_batches(p: argparse.ArgumentParser, defaults: SweepSettings) -> None:
    """--batch, --latency-batches and --repeats: one wording for sweep and reproduce."""
    p.add_argument("--batch", type=positive_int, default=defaults.batch, help="images per accuracy batch")
    p.add_argument("--latency-batches", type=batch_list, default=joined(defaults.latency_batches) or "none",
                   help="batch sizes to time, comma-separated ('none': no timing)")
    p.add_argument("--repeats", type=positive_int, default=defaults.repeats, help="timed rounds per cell")


def run_sweep(a: argparse.Namespace) -> dict:
    templates = "ensemble" if a.template == ["ensemble"] else a.template
    settings = SweepSettings(methods=a.methods, ratios=a.ratios, batch=a.batch,
                             latency_batches=a.latency_batches, repeats=a.repeats, warmup=a.warmup,
                             templates=templates, limit=a.limit, fresh=a.fresh,
                             progress=not a.no_progress, command=a.command_line)
    res = sweep.run_sweep(load(a), a.data, settings, a.out, rankings=a.rankings, predictor=a.predictor,
                          tokens=a.tokens)
    if res is None:                       # a torchrun rank other than 0: rank 0 reports
        return None
    meta = res["meta"]
    summary = {"out": str(a.out), "csv": str(Path(a.out).with_suffix(".csv")),
               "rows": len(res["rows"]), "n_images": meta["n_images"],
               "full_accuracy": meta["full"]["accuracy"], "skipped": meta["skipped"],
               "runtime": meta["runtime"]}
    if a.png:
        summary["png"] = str(figures.save_png(res, a.png))
    return summary


# -- reproduce ------------------------------------------------------------------------------------
def add_reproduce(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", required=True, help="CoOp data root (holds caltech-101/, oxford_pets/, ...)")
    p.add_argument("--datasets", type=name_list, default=joined(PAPER_DATASETS), help="CoOp dataset keys")
    p.add_argument("--methods", type=name_list, default=joined(REPRODUCE.methods),
                   help="methods, one table row each")
    p.add_argument("--ratios", type=ratio_list, default=joined(REPRODUCE.ratios),
                   help="keep ratios, one table each (the paper's: 0.6)")
    hidden_alias(p, "--ratio", "--ratios")
    p.add_argument("--split", default=default_of(reproduce, "split"), choices=["train", "val", "test"],
                   help="CoOp split")
    p.add_argument("--out", default=None, help="folder for per-dataset results (resumable)")
    p.add_argument("--rankings-root", default=None, help="golden ranking folders, one per dataset key")
    p.add_argument("--predictor", default=None, help="predictor file or hf-hub:org/repo[/file] made for --model")
    p.add_argument("--tokens", default=None, help="learnable tokens file made for --model")
    p.add_argument("--limit", type=positive_int, default=None, help="first N images of each dataset")
    _add_batches(p, REPRODUCE)
    add_format(p, "the markdown tables")


def run_reproduce(a: argparse.Namespace) -> dict | None:
    settings = replace(REPRODUCE, methods=a.methods, ratios=a.ratios, batch=a.batch, limit=a.limit,
                       latency_batches=a.latency_batches, repeats=a.repeats, progress=not a.no_progress)
    rep = reproduce(load(a), a.root, a.datasets, settings, split=a.split, out_dir=a.out,
                    rankings_root=a.rankings_root, predictor=a.predictor, tokens=a.tokens)
    if rep is None:                       # a torchrun rank other than 0: rank 0 reports
        return None
    tables = "\n\n".join(rep["tables"].values())
    print(tables, file=sys.stdout if a.format == "md" else sys.stderr)
    if a.format == "md":
        return None
    fields = ("method", "ratio", "kept", "accuracy", "ci_low", "ci_high", "gflops")
    rows = [{"dataset": key, **{f: r.get(f) for f in fields}}
            for key, res in rep["results"].items() for r in res["rows"]]
    return {"out": a.out, "tables": rep["tables"], "rows": rows}


# -- bench ----------------------------------------------------------------------------------------
def add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--methods", type=name_list, default=joined(default_of(bench, "methods")),
                   help="fixed-ids (pruned forward, no ranking), predictor, attention, norm, "
                        "random, tome, ... (+tokens)")
    p.add_argument("--ratios", type=ratio_list, default=joined(default_of(bench, "ratios")), help="keep ratios")
    p.add_argument("--latency-batches", type=batch_list, default=joined(default_of(bench, "batches")),
                   help="batch sizes to time, comma-separated")
    hidden_alias(p, "--batches", "--latency-batches")
    p.add_argument("--repeats", type=positive_int, default=default_of(bench, "repeats"), help="timed rounds")
    p.add_argument("--warmup", type=int, default=default_of(bench, "warmup"), help="untimed rounds first")
    p.add_argument("--data", default=None, help="dataset spec for real images (default: random pixels)")
    p.add_argument("--predictor", default=None, help="predictor file or hf-hub:org/repo[/file] (default: the bundled one)")
    p.add_argument("--tokens", default=None, help="learnable tokens file (default: the bundled ones)")
    p.add_argument("--out", default=None, help="also write the JSON here")


def run_bench(a: argparse.Namespace) -> dict:
    if not a.latency_batches:
        raise PatchRankError("bench needs at least one batch size in --latency-batches")
    res = bench(load(a), a.methods, a.ratios, a.latency_batches, repeats=a.repeats,
                warmup=a.warmup, data=a.data, predictor=a.predictor, tokens=a.tokens,
                progress=not a.no_progress)
    if a.out:
        write_json(a.out, res)
    return res


# -- figures --------------------------------------------------------------------------------------
def add_figures(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="results JSON of `patchrank sweep`")
    p.add_argument("--png", default=None, help="write the trade-off figure here")
    p.add_argument("--html", default=None, help="write both figures as one HTML page (plotly.js from its CDN)")
    add_format(p, "the markdown table")


def run_figures(a: argparse.Namespace) -> dict | None:
    res = load_results(a.results)
    out = {"results": a.results, "png": str(figures.save_png(res, a.png)) if a.png else None,
           "html": str(figures.save_html(res, a.html)) if a.html else None,
           "table": figures.markdown_table(res)}
    print(out["table"], file=sys.stdout if a.format == "md" else sys.stderr)
    return None if a.format == "md" else out


COMMANDS = (
    Command("eval-bundled", "the bundled model card's numbers: zero-shot top-1 and the object "
            "checks on the shipped evaluation split", add_eval_bundled, run_eval_bundled, dict(model_options=False)),
    Command("sweep", "accuracy, GFLOPs and latency per method per keep ratio (resumable; "
            "torchrun --nproc_per_node=N -m patchrank sweep ... splits the images)",
            add_sweep, run_sweep, distributed=True),
    Command("reproduce", "the paper's table on CoOp datasets (JSON; markdown on stderr or --format md)",
            add_reproduce, run_reproduce, dict(model="ViT-B-16", pretrained="openai"), distributed=True),
    Command("bench", "image-encoder latency per keep ratio", add_bench, run_bench),
    Command("figures", "the markdown table, PNG and HTML figures of a sweep's results",
            add_figures, run_figures, None),
)
