"""The ``nsm`` command's error handling: one line for the project's own errors about bad input, for command-line
mistakes (every number range-checked where it is parsed) and for files the system refuses, a traceback for
anything else raised elsewhere and under ``--debug``."""

from __future__ import annotations

import argparse
import errno
import re
import subprocess
import sys

import numpy as np
import pytest

from events.atomic import OutputError, atomic_file, os_refusal, write_text_atomic
from pipelines import cli
from pipelines.commands import InRange
from pipelines.commands.mc_options import mc_choices
from pipelines.config import EvalConfig
from pipelines.stream import STREAM_MC


def test_a_missing_file_is_one_line_and_status_2(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert cli.main(["export", "--checkpoint", str(missing), "--out", str(tmp_path / "x.nir")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nsm export: error: ") and str(missing) in err and "Traceback" not in err


def test_debug_shows_the_traceback_of_a_project_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        cli.main(["--debug", "export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "x.nir")])


def test_an_error_raised_inside_another_library_is_not_hidden(monkeypatch):
    """A ValueError from numpy (here: a bad reshape) is a bug to see, not a user's mistake to summarize."""

    def broken(args):
        return np.zeros(3).reshape(2, 2)

    parser = cli.build_parser()
    args = parser.parse_args(["bench", "--quick"])
    args.func = broken
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    with pytest.raises(ValueError, match="reshape"):
        cli.main(["bench", "--quick"])


def test_what_is_one_line_is_decided_by_the_errors_type(monkeypatch, capsys):
    """A ``UserError`` (here an ``InputError``) is one line, whichever module raised it; a plain ``ValueError``, even
    one raised by the project's own code, is a bug and shows its traceback."""
    from events.errors import InputError

    parser = cli.build_parser()
    args = parser.parse_args(["bench", "--quick"])
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())

    def user_mistake(args):
        raise InputError("train.lr must be positive, got -1")

    args.func = user_mistake
    assert cli.main(["bench", "--quick"]) == 2
    assert capsys.readouterr().err == "nsm bench: error: train.lr must be positive, got -1\n"

    def bug(args):
        raise ValueError("an internal invariant broke")

    args.func = bug
    with pytest.raises(ValueError, match="internal invariant"):
        cli.main(["bench", "--quick"])


# ----------------------------------------------------------------------------------------------
# the command line: every number range-checked where it is parsed, every mistake one line
# ----------------------------------------------------------------------------------------------


def in_range_options():
    """(command, option, action) of every range-checked option (``commands.InRange``) of every subcommand."""
    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for command, sub in subcommands.choices.items():
        for action in sub._actions:
            if isinstance(action, InRange):
                yield command, action.option_strings[0], action


def out_of_range(action: InRange) -> list[str]:
    """Values just outside ``action``'s range, and for a float option NaN and infinity."""
    bad = [] if action.type is int else ["nan", "inf", "-inf"]
    if action.minimum is not None:
        below = action.minimum if action.open_min else action.minimum - 1
        bad.append(str(below))
    if action.maximum is not None:
        above = action.maximum if action.open_max else action.maximum + 1
        bad.append(str(above) if action.type is int else repr(float(above) * 1.5))
    return bad


def test_every_numeric_option_of_every_command_is_range_checked():
    """Each subcommand's int and float options are InRange ones, except --chunk-events (checked in
    ``commands.stream.run`` with the message the readers' own check gives)."""
    checked = {(command, option) for command, option, _ in in_range_options()}
    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    numeric = {
        (command, action.option_strings[0])
        for command, sub in subcommands.choices.items()
        for action in sub._actions
        if action.type in (int, float)
    }
    assert numeric - checked == {("stream", "--chunk-events")}
    assert {
        ("evaluate", "--threshold"),
        ("stream", "--window-ms"),
        ("train", "--epochs"),
        ("export", "--seed"),
    } <= checked


@pytest.mark.parametrize("command, option, action", [pytest.param(*o, id=f"{o[0]} {o[1]}") for o in in_range_options()])
def test_a_number_out_of_range_is_one_line_naming_the_option_and_the_range(command, option, action, capsys):
    for value in out_of_range(action):
        with pytest.raises(SystemExit) as done:  # before any other check: the required options are not given
            cli.main([command, f"{option}={value}"])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"nsm {command}: error: {option} must be "), err
        assert "got" in err and ("in " in err or ">" in err), err


def test_other_command_line_mistakes_are_one_line(capsys):
    for argv, expected in (
        (["evaluate", "--samples", "many"], "nsm evaluate: error: argument --samples: invalid int value: 'many'"),
        (["export", "--checkpoint", "a.pt"], "nsm export: error: the following arguments are required: --out"),
        (["stream", "--crop", "0x5"], "nsm stream: error: argument --crop: must be WIDTHxHEIGHT of positive integers"),
        (["nonsense"], "nsm: error: argument command: invalid choice: 'nonsense'"),
    ):
        with pytest.raises(SystemExit) as done:
            cli.main(argv)
        err = capsys.readouterr().err
        assert done.value.code == 2 and err.count("\n") == 1 and err.startswith(expected), err


# ----------------------------------------------------------------------------------------------
# the Monte Carlo options: defined once, each stating the default its command uses
# ----------------------------------------------------------------------------------------------

MC_OPTIONS = {
    "--samples": "samples",
    "--adaptive": "adaptive",
    "--threshold": "threshold",
    "--min-samples": "min_samples",
    "--max-samples": "max_samples",
    "--precision": "precision",
}


def mc_helps(command: str) -> dict[str, str]:
    """The help of each Monte Carlo option of ``nsm command``, by option."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    return {a.option_strings[0]: a.help for a in sub._actions if a.option_strings and a.option_strings[0] in MC_OPTIONS}


@pytest.mark.parametrize(
    "command, required, base, stated",
    [
        (
            "evaluate",
            ["--checkpoint", "c.pt", "--data", "d"],
            EvalConfig().mc,
            "the run's eval.{field}, {value} unless",
        ),
        ("stream", ["--checkpoint", "c.pt", "--events", "e.aedat"], STREAM_MC, "{value}, the stream's own"),
    ],
)
def test_each_monte_carlo_option_states_the_default_its_command_uses(command, required, base, stated):
    """Without the options, a command predicts as ``base`` says (the run's eval settings, whose configuration
    defaults ``EvalConfig`` holds; the stream's own), and each option's help says so, with ``base``'s value."""
    args = cli.build_parser().parse_args([command, *required])
    assert base.overridden(**mc_choices(args)) == base
    helps = mc_helps(command)
    assert set(helps) == set(MC_OPTIONS)
    for option, field in MC_OPTIONS.items():
        value = getattr(base, field)
        shown = str(value).lower() if isinstance(value, bool) else str(value)
        assert "(default: " + stated.format(field=field, value=shown) in helps[option], (option, helps[option])
    assert STREAM_MC != EvalConfig().mc  # the stream's defaults differ, stated as its own


def test_the_monte_carlo_options_are_one_definition():
    """``nsm evaluate`` and ``nsm stream`` describe each option alike but for its default."""
    evaluate, stream = mc_helps("evaluate"), mc_helps("stream")
    assert {o: h.split(" (default: ")[0] for o, h in evaluate.items()} == {
        o: h.split(" (default: ")[0] for o, h in stream.items()
    }


# ----------------------------------------------------------------------------------------------
# outputs the system refuses
# ----------------------------------------------------------------------------------------------


def run_command(monkeypatch, func, command: str = "bench") -> int:
    """``cli.main`` with ``command``'s work replaced by ``func(args)``."""
    args = cli.build_parser().parse_args([command])
    args.func = func
    monkeypatch.setattr(cli, "build_parser", lambda: type("P", (), {"parse_args": lambda self, argv: args})())
    return cli.main([command])


def test_a_refused_file_is_one_line_naming_it_wherever_it_was_raised(tmp_path, monkeypatch, capsys):
    """An OSError by which the system refuses a file is the environment's, not a bug, even raised inside the
    standard library (here pathlib's mkdir under a file); any other library error still shows its traceback."""
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    assert run_command(monkeypatch, lambda args: (a_file / "run").mkdir(parents=True)) == 2
    err = capsys.readouterr().err
    advice = "a part of that path is a file, not a folder: choose another path"
    assert err == f"nsm bench: error: {a_file / 'run'}: Not a directory ({advice})\n"
    too_long = tmp_path / ("n" * 300)  # longer than a name may be (255 bytes on Linux file systems)
    assert run_command(monkeypatch, lambda args: too_long.stat()) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nsm bench: error: {too_long}: ") and "choose a shorter one" in err
    with pytest.raises(FileNotFoundError):  # not a refusal: a missing file in a library is a bug to see
        run_command(monkeypatch, lambda args: (tmp_path / "missing").read_text())


def test_atomic_writes_name_the_output_the_system_refuses(tmp_path):
    a_file, a_folder = tmp_path / "a-file", tmp_path / "a-folder"
    a_file.write_text("x")
    a_folder.mkdir()
    for path, code in (
        (a_file / "out.txt", errno.EEXIST),
        (a_file / "sub" / "out.txt", errno.ENOTDIR),
        (a_folder, errno.EISDIR),
    ):
        with pytest.raises(OutputError, match=f"^could not write {re.escape(str(path))}: ") as err:
            write_text_atomic(path, "text")
        assert err.value.errno == code and err.value.path == path and os_refusal(err.value) == str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "a-folder"]


def test_an_error_of_the_writing_block_itself_passes_unchanged(tmp_path):
    """Only refused writes of the file become OutputError: the block's own OSError (here reading a missing
    input) is not an output problem."""
    with pytest.raises(FileNotFoundError):
        with atomic_file(tmp_path / "out.bin") as f:
            f.write((tmp_path / "missing-input").read_bytes())
    assert list(tmp_path.iterdir()) == []


def test_torch_save_on_a_full_disk_is_an_output_error_naming_the_file(tmp_path):
    """torch.save reports a failed write as ``RuntimeError: ... unexpected pos``; the checkpoint writer's atomic
    file turns it into an OutputError naming the file. A file size cap makes the writes fail as a full disk does."""
    path = tmp_path / "checkpoint.pt"
    code = f"""
import resource, signal, torch
from pipelines.checkpoint import atomic_torch_save
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    atomic_torch_save({{"w": torch.zeros(100_000)}}, {str(path)!r})
except OSError as err:
    print(type(err).__name__, type(err.__cause__).__name__, err)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith(f"OutputError RuntimeError could not write {path}: File too large ("), result
    assert list(tmp_path.iterdir()) == []
