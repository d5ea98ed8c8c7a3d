"""The command line behaves like one: every subcommand has --help with help text on every flag,
one name and one default per shared option, JSON on stdout, and exit codes 0 / 1 / 2 / 130."""
import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from patchrank import __version__, cli
from patchrank.cli import measure

ROOT = Path(__file__).resolve().parents[2]

#: One usage error per subcommand (argparse refuses it before anything runs: exit 2).
BAD_USAGE = {
    "golden": ["--data", "bundled-eval"],                          # --out missing
    "train-clip": ["--out", "x", "--steps", "0"],
    "train-predictor": ["--rankings", "r", "--out", "p.safetensors", "--ratios", "0.4,0.6"],
    "tune-tokens": ["--ranker", "attention", "--out", "t.safetensors", "--ratios", "1.5"],
    "eval-bundled": ["--limit", "0"],
    "sweep": ["--out", "s.json", "--latency-batches", "1,x"],
    "reproduce": ["--root", "r", "--format", "html"],
    "bench": ["--dtype", "float8"],
    "figures": [],                                                 # RESULTS missing
    "embed": ["--data", "d", "--out", "e.npy", "--out-dtype", "int8"],
    "export": ["--out", "e.onnx", "--keep", "0"],
    "publish": [],                                                 # PREDICTOR missing
}


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    p = cli.build_parser()
    action = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_subcommand_is_covered():
    assert set(_subparsers()) == set(BAD_USAGE) == {c.name for c in cli.COMMANDS}


@pytest.mark.parametrize("name", sorted(BAD_USAGE))
def test_help_and_a_usage_error(name, capsys):
    assert cli.main([name, "--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: patchrank {name}")
    assert cli.main([name, *BAD_USAGE[name]]) == 2
    err = capsys.readouterr().err
    assert f"patchrank {name}: error:" in err and "Traceback" not in err


@pytest.mark.parametrize("name", sorted(BAD_USAGE))
def test_every_flag_has_help_and_old_spellings_stay_hidden(name, capsys):
    sp = _subparsers()[name]
    for a in sp._actions:
        if a.help == argparse.SUPPRESS:                 # a hidden alias of a listed option
            assert any(b.dest == a.dest and b.help != argparse.SUPPRESS for b in sp._actions)
            continue
        assert a.help and a.help.strip(), f"{name} {a.option_strings or a.dest}: no help text"
    cli.main([name, "--help"])
    text = capsys.readouterr().out
    for old in ("--ratio ", "--keep-ratio", "--batches"):
        assert old not in text


def test_one_name_and_one_default_per_shared_option():
    """--threads (and every shared flag) has the same default wherever it appears; the old
    spellings still work as aliases of the one name."""
    seen: dict[str, set] = {}
    for name, sp in _subparsers().items():
        for a in sp._actions:
            if a.option_strings and a.help != argparse.SUPPRESS:
                seen.setdefault(a.option_strings[0], set()).add(repr(a.default) if a.dest not in (
                    "model", "pretrained") else "per command")
    for flag in ("--threads", "--device", "--dtype", "--no-progress", "--prune-layer"):
        assert len(seen[flag]) == 1, (flag, seen[flag])
    assert "--ratio" not in seen and "--keep-ratio" not in seen and "--batches" not in seen
    names = {a.option_strings[0] for sp in _subparsers().values() for a in sp._actions if a.option_strings}
    assert "--no-progress" in names and all(
        any("--no-progress" in a.option_strings for a in sp._actions)
        for n, sp in _subparsers().items()
        if next(c for c in cli.COMMANDS if c.name == n).shared is not None)    # figures, publish: none


@pytest.mark.slow
def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"patchrank {__version__}"
    res = subprocess.run([sys.executable, "-m", "patchrank", "--version"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == f"patchrank {__version__}"


def test_json_on_stdout(capsys):
    import torch
    before = torch.get_num_threads()
    assert cli.main(["eval-bundled", "--limit", "12", "--no-progress", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 12 and 0 <= out["top1"] <= 100
    assert torch.get_num_threads() == before        # --threads lasts for the command only


def test_run_time_errors_are_one_line_naming_the_file(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert cli.main(["train-clip", "--out", str(blocker / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and str(blocker) in err
    assert cli.main(["figures", str(tmp_path / "missing.json")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing.json" in err and "Traceback" not in err


def test_interrupt_exits_130(monkeypatch, capsys):
    def stop(a):
        raise KeyboardInterrupt
    monkeypatch.setattr(measure, "load", lambda a: stop(a))
    assert cli.main(["bench", "--no-progress"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err


def test_traceback_flag_reraises(tmp_path):
    from patchrank.errors import PatchRankError
    with pytest.raises(PatchRankError, match="missing.json"):
        cli.main(["--traceback", "figures", str(tmp_path / "missing.json")])


def test_the_cli_leaves_hf_hub_offline_to_the_user():
    """The product never switches the Hub off for its user (tests set it in conftest)."""
    for path in [*(ROOT / "patchrank").rglob("*.py"), *(ROOT / "app").rglob("*.py"), ROOT / "app.py"]:
        text = path.read_text()
        assert not re.search(r"""environ(\.setdefault\(|\[)\s*["']HF_HUB_OFFLINE""", text), path


def test_golden_refuses_bf16_with_the_reason(capsys, tmp_path):
    """No bf16 golden mode: its order disagrees with float32's (README, benchmarks/golden_bf16.py)."""
    assert cli.main(["golden", "--data", "bundled-eval", "--limit", "1", "--out", str(tmp_path / "g"),
                     "--dtype", "bfloat16"]) == 1
    err = capsys.readouterr().err
    assert "float32 only" in err and "Kendall tau" in err and not (tmp_path / "g").exists()
