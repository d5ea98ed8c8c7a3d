"""``python -m patchrank <command>``: JSON/JSONL on stdout, progress bars on stderr."""
from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _cmd_train_clip(a) -> int:
    from .train_clip import train
    entry = train(a.out, steps=a.steps, seed=a.seed, threads=a.threads,
                  **({"config_path": a.config} if a.config else {}))
    print(json.dumps(entry))
    if a.export:
        from .bundled import export_bundled
        print(json.dumps(export_bundled(os.path.join(a.out, "ckpt.pt"), a.export)))
    return 0


def _cmd_golden(a) -> int:
    from .golden import cli_main
    return cli_main(a)


def _cmd_train_predictor(a) -> int:
    from .predictor import cli_main
    return cli_main(a)


def _cmd_tune_tokens(a) -> int:
    from .tokens import cli_main
    return cli_main(a)


def _cmd_eval_bundled(a) -> int:
    from .bundled import evaluate_bundled
    print(json.dumps(evaluate_bundled(seed=a.seed)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m patchrank", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train-clip", help="train the bundled CLIP on generated scenes (resumable)")
    t.add_argument("--out", required=True, help="run folder (checkpoint; rerun to resume)")
    t.add_argument("--steps", type=int, default=None,
                   help="stop after this many steps (the schedule stays the config's; rerun to go on)")
    t.add_argument("--config", default=None, help="model + schedule config (default: the bundled one)")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--export", default=None, help="after training, write the shipped model here")
    t.set_defaults(fn=_cmd_train_clip)

    e = sub.add_parser("eval-bundled", help="the bundled model card's numbers: zero-shot top-1 and "
                       "the object checks on the shipped evaluation split")
    e.add_argument("--seed", type=int, default=0, help="seed of the random-removal control")
    e.set_defaults(fn=_cmd_eval_bundled)

    g = sub.add_parser("golden", help="golden rankings of a dataset into a folder (resumable; "
                       "torchrun --nproc_per_node=N -m patchrank golden ... shards it)")
    g.add_argument("--model", default="bundled")
    g.add_argument("--pretrained", default=None)
    g.add_argument("--data", required=True, help="bundled-eval, bundled-train:N or an image folder")
    g.add_argument("--out", required=True, help="ranking folder (rerun to resume)")
    from .golden import DEFAULT_SETTINGS as GOLD   # the project's "golden" (README: which and why)
    g.add_argument("--score", default=GOLD["score"], choices=["similarity", "label", "max"])
    g.add_argument("--step", type=int, default=GOLD["step"], help="candidates dropped per round")
    g.add_argument("--block", type=int, default=GOLD["block"], help="1 = patches, 2 = 2x2 cells")
    g.add_argument("--stop-at", type=float, default=None, help="keep ratio to stop at (default: full order)")
    g.add_argument("--mode", default=GOLD["mode"], choices=["greedy", "oneshot", "c2f"],
                   help=f"oneshot: one leave-one-out round; greedy: the paper's search (step 10); "
                        f"c2f: coarse-to-fine (default {GOLD['mode']!r}, the sweeps' and app's golden)")
    g.add_argument("--classnames", default=None,
                   help="file with one class name per line (scores 'label'/'max'; overrides the "
                        "dataset's names, e.g. for an unlabelled folder with --score max)")
    g.add_argument("--lazy", action="store_true", help="lazy re-scoring (greedy)")
    g.add_argument("--prune-layer", type=int, default=None)
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--limit", type=int, default=None, help="first N images only")
    g.add_argument("--batch-budget-mb", type=float, default=512)
    g.add_argument("--device", default="cpu")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(fn=_cmd_golden)

    tp = sub.add_parser("train-predictor", help="train a patch-ranking predictor on golden rankings")
    tp.add_argument("--model", default="bundled")
    tp.add_argument("--pretrained", default=None)
    tp.add_argument("--rankings", required=True, help="ranking folder of `golden` (same model)")
    tp.add_argument("--data", default=None, help="dataset spec of the rankings (default: the one "
                    "recorded in the ranking folder)")
    tp.add_argument("--out", required=True, help="predictor file (.safetensors)")
    from .predictor import DEFAULT_LOSS, LOSSES     # chosen on bundled-val (README: Predictor)
    tp.add_argument("--loss", default=DEFAULT_LOSS, choices=sorted(LOSSES),
                    help="kl: the paper's keep-set target; margin: pairwise; listwise: Plackett-Luce")
    tp.add_argument("--keep-ratio", type=float, default=0.6, help="kept set of the kl target")
    tp.add_argument("--epochs", type=int, default=50)
    tp.add_argument("--batch", type=int, default=64)
    tp.add_argument("--lr", type=float, default=1e-3)
    tp.add_argument("--wd", type=float, default=1e-4)
    tp.add_argument("--seed", type=int, default=0)
    tp.add_argument("--val-fraction", type=float, default=0.1)
    tp.add_argument("--patience", type=int, default=10, help="early stopping (epochs; 0 = off)")
    tp.add_argument("--threads", type=int, default=None, help="torch threads while training")
    tp.add_argument("--no-progress", action="store_true")
    tp.set_defaults(fn=_cmd_train_predictor)

    tt = sub.add_parser("tune-tokens", help="train learnable visual tokens / text context with "
                        "pruning active (backbone and ranker frozen)")
    tt.add_argument("--model", default="bundled")
    tt.add_argument("--pretrained", default=None)
    tt.add_argument("--prune-layer", type=int, default=None)
    tt.add_argument("--ranker", required=True,
                    help="'predictor' (bundled), a predictor file, or a ranker name (attention, ...)")
    tt.add_argument("--out", required=True, help="tokens file (.safetensors)")
    tt.add_argument("--visual", type=int, default=4, help="visual tokens appended at the prune layer")
    tt.add_argument("--deep", action="store_true", help="a fresh set at every later block (VPT-deep)")
    tt.add_argument("--text-ctx", type=int, default=0, help="learned text context vectors (CoOp)")
    tt.add_argument("--ctx-init", default="template",
                    help="words that initialise the context ('template' = the template's prefix)")
    tt.add_argument("--init", default="normal", choices=["normal", "mean"], help="visual token init")
    tt.add_argument("--ratios", default="0.4,0.5,0.6,0.7,0.8,0.9,1.0",
                    help="keep ratios; one is drawn per step")
    tt.add_argument("--data", default="bundled-train:2000", help="labelled dataset spec")
    tt.add_argument("--shots", type=int, default=16, help="images per class (the first ones)")
    tt.add_argument("--epochs", type=int, default=10)
    tt.add_argument("--batch", type=int, default=8)
    tt.add_argument("--lr", type=float, default=1e-2)
    tt.add_argument("--wd", type=float, default=0.0)
    tt.add_argument("--optimizer", default="adamw", choices=["adamw", "sgd"])
    tt.add_argument("--objective", default="ce", choices=["ce", "distill"],
                    help="ce: labels (few-shot, the paper); distill: match the unpruned model's "
                         "predictions (no labels needed; see patchrank/tokens.py)")
    tt.add_argument("--seed", type=int, default=0)
    tt.add_argument("--eval", default=None,
                    help="dataset spec to measure on ('none' to skip; default bundled-eval for the bundled model)")
    tt.add_argument("--threads", type=int, default=None, help="torch threads")
    tt.add_argument("--no-progress", action="store_true")
    tt.set_defaults(fn=_cmd_tune_tokens)

    # sweep / reproduce / bench: arguments and handlers live in patchrank.sweep
    from . import sweep as _sw
    for name, helptext, add, fn in (
            ("sweep", "accuracy, GFLOPs and latency per method per keep ratio (resumable)",
             _sw.add_sweep_args, _sw.cli_sweep),
            ("reproduce", "the paper's table on CoOp datasets (markdown)",
             _sw.add_reproduce_args, _sw.cli_reproduce),
            ("bench", "image-encoder latency per keep ratio", _sw.add_bench_args, _sw.cli_bench)):
        sp = sub.add_parser(name, help=helptext)
        add(sp)
        sp.set_defaults(fn=fn)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
