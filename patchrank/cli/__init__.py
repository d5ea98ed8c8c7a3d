"""``patchrank <command>`` (or ``python -m patchrank``): JSON on stdout, progress bars on stderr.

Exit codes: 0 done; 1 run-time error (one line on stderr naming what failed, e.g. the file;
``--traceback`` shows the whole trace); 2 usage error (argparse's usage line); 130 interrupted
(long commands resume when rerun). Every subcommand goes through one parser (``build_parser``,
shared options from ``options.shared_options``) and one error handler (``run``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from typing import Iterator, Sequence

from .. import __version__
from ..distributed import launched, launched_world
from ..errors import PatchRankError, WeightsUnavailable
from ..files import finite
from . import deploy, measure, train
from .options import Formatter, shared_options

#: Every subcommand, in the order ``--help`` lists them.
COMMANDS = (*train.COMMANDS, *measure.COMMANDS, *deploy.COMMANDS)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: global flags, then one subparser per ``Command``."""
    p = argparse.ArgumentParser(prog="patchrank", description=__doc__, formatter_class=Formatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument("--traceback", action="store_true",
                   help="on a run-time error show the full traceback, not one line")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for c in COMMANDS:
        parents = [] if c.shared is None else [shared_options(**c.shared)]
        sp = sub.add_parser(c.name, help=c.help, description=c.help, parents=parents,
                            formatter_class=Formatter)
        c.add(sp)
        sp.set_defaults(run=c.run, distributed=c.distributed)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments) and run the command; returns the exit
    code instead of exiting, so tests and ``python -m`` share one path."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        a = build_parser().parse_args(argv)
    except SystemExit as e:                 # --help / --version (0), usage errors (2)
        return e.code if isinstance(e.code, int) else 2
    a.command_line = shlex.join(["patchrank", *argv])
    return run(a)


def run(a: argparse.Namespace) -> int:
    """The one error handler: the command's result as JSON on stdout and exit 0; any failure
    as one line on stderr and exit 1; Ctrl-C exits 130."""
    try:
        with threads(getattr(a, "threads", None)), launched_for(a):
            result = a.run(a)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as e:
        if a.traceback:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(finite(result)))
    return 0


@contextlib.contextmanager
def launched_for(a: argparse.Namespace) -> Iterator[None]:
    """The torchrun process group for commands that split work (``Command.distributed``); any
    other command under torchrun would run N identical copies, so it is refused."""
    if launched_world() > 1 and not a.distributed:
        raise PatchRankError(f"{a.command} does not split its work across processes; run it "
                             "without torchrun")
    with launched(getattr(a, "device", "cpu")) as device:
        if hasattr(a, "device"):
            a.device = device
        yield


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """``--threads`` for the command's duration: restored after, so ``main()`` called from
    Python (tests, notebooks) leaves the caller's setting as it was."""
    if not n:
        yield
        return
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def one_line(e: BaseException) -> str:
    """An exception as one line that names what failed: an OSError's file and reason, our own
    errors' message (they name their file; missing weights say how to supply them as CLI
    flags), anything else prefixed with its type."""
    if isinstance(e, OSError) and e.filename is not None:
        files = f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 is not None else "")
        text = f"{files}: {e.strerror or e}"
    elif isinstance(e, WeightsUnavailable):  # how to supply the weights, as flags, not Python
        text = e.message("cli")
    elif isinstance(e, ValueError):         # PatchRankError and friends: a sentence of their own
        text = str(e)
    else:
        text = f"{type(e).__name__}: {e}"
    return " ".join(text.split())
