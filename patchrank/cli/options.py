"""What every ``patchrank`` subcommand shares, written once: the help formatter, the parent
parser of the shared options, the value parsers, and loading the model those options name.

A value that argparse can check (a keep ratio, a batch list) is checked here, so a bad one is a
usage error (exit 2, with the usage line) before any model loads, never a run-time error.
Defaults of library arguments are read from the library function's own signature
(``default_of``): the CLI never restates them.
"""
from __future__ import annotations

import argparse
import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..loading import load_model

if TYPE_CHECKING:
    import torch

    from ..models import PatchModel

DTYPES = ("float32", "bfloat16", "float16")


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default, except where there is none to show (required options, flags
    that are off unless given, defaults of None whose help says what happens instead)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.required or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return action.help or ""
        return super()._get_help_string(action)


@dataclass
class Command:
    """One subcommand: its arguments (``add``), its work (``run``: returns what is printed as
    JSON on stdout, or None when it printed its own output), and which shared options it takes
    (keyword arguments of ``shared_options``; None: none at all)."""
    name: str
    help: str
    add: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], Any]
    shared: dict | None = field(default_factory=dict)
    #: Splits its work across the processes ``torchrun`` starts (others refuse to run N copies).
    distributed: bool = False


def shared_options(*, model_options: bool = True, prune_layer: bool = True, compute: bool = True,
                   **defaults: Any) -> argparse.ArgumentParser:
    """The parent parser of the options that mean the same in every subcommand, each with one
    default. Built afresh for each subcommand because argparse shares a parent's action objects
    between its children: ``defaults`` (e.g. reproduce's real-CLIP model) must not leak."""
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("shared options")
    if model_options:
        g.add_argument("--model", default="bundled",
                       help="'bundled' (offline, ships with the package), an open_clip ViT name "
                            "(ViT-B-16, ...), hf-hub:org/repo or local-dir:/folder; Hub files come "
                            "through huggingface_hub (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE)")
        g.add_argument("--pretrained", default=None,
                       help="open_clip pretrained tag, spelled as open_clip allows (openai, OpenAI, "
                            "laion2b-s34b-b79k), or checkpoint file; without it an open_clip name "
                            "is randomly initialised")
        if prune_layer:
            g.add_argument("--prune-layer", type=non_negative_int, default=None,
                           help="prune at the input of this block (default: the model's own, "
                                "round(L/4))")
    if compute:
        g.add_argument("--dtype", default="float32", choices=DTYPES,
                       help="compute precision: the model's weights (golden: float32 only; "
                            "bf16 does not preserve its order, see the README)")
        g.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1, ...")
    g.add_argument("--threads", type=positive_int, default=None,
                   help="torch CPU threads (default: torch's own choice, one per core)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    p.set_defaults(**defaults)
    return p


def hidden_alias(p: argparse.ArgumentParser, old: str, new: str) -> None:
    """Accept ``old`` (a spelling earlier releases used) for the option ``new``, unlisted."""
    action = next(a for a in p._actions if new in a.option_strings)
    p.add_argument(old, dest=action.dest, type=action.type, help=argparse.SUPPRESS,
                   default=argparse.SUPPRESS)


def add_format(p: argparse.ArgumentParser, what: str) -> None:
    """``--format json|md``: the one switch for commands whose result is also a markdown table."""
    p.add_argument("--format", default="json", choices=["json", "md"],
                   help=f"json: the result as JSON on stdout ({what} on stderr); md: only {what} "
                        "on stdout")


def default_of(fn: Callable, name: str) -> Any:
    """The default of ``fn``'s argument ``name``: the library's default is the CLI's."""
    return inspect.signature(fn).parameters[name].default


def joined(values) -> str:
    """A list default as the comma-separated text a user would type (shown in --help)."""
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


# -- value parsers (argparse ``type=``): a bad value is a usage error --------------------------------
def positive_int(text: str) -> int:
    v = _int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return v


def non_negative_int(text: str) -> int:
    v = _int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return v


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def name_list(text: str) -> list[str]:
    """Comma-separated names (methods, datasets)."""
    out = [x.strip() for x in text.split(",") if x.strip()]
    if not out:
        raise argparse.ArgumentTypeError("give at least one name")
    return out


def ratio_list(text: str) -> list[float]:
    """Comma-separated keep ratios, each in (0, 1]."""
    try:
        out = [float(x) for x in name_list(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"keep ratios must be comma-separated numbers, got {text!r}") from None
    bad = [r for r in out if not 0 < r <= 1]
    if bad:
        raise argparse.ArgumentTypeError(f"keep ratios must be in (0, 1], got {bad[0]:g}")
    return out


def one_ratio(text: str) -> float:
    """A single keep ratio, for the commands that take exactly one."""
    out = ratio_list(text)
    if len(out) != 1:
        raise argparse.ArgumentTypeError(f"give one keep ratio, got {len(out)}")
    return out[0]


def batch_list(text: str) -> list[int]:
    """Comma-separated batch sizes; 'none' (or 0) for none."""
    if text.strip().lower() in ("", "none", "0"):
        return []
    return [positive_int(x) for x in name_list(text)]


# -- the model the shared options name ---------------------------------------------------------------
def torch_dtype(name: str) -> "torch.dtype":
    """``--dtype``'s text as the torch dtype (torch is imported only when a command runs)."""
    import torch
    return getattr(torch, name)


def load(a: argparse.Namespace, dtype: str | None = None) -> "PatchModel":
    """The PatchModel named by the shared options; ``dtype`` overrides ``--dtype`` (golden keeps
    float32 weights and autocasts its search instead)."""
    return load_model(getattr(a, "model", "bundled"), getattr(a, "pretrained", None),
                      prune_layer=getattr(a, "prune_layer", None),
                      dtype=torch_dtype(dtype or a.dtype), device=getattr(a, "device", "cpu"))
