"""The ``nsm`` command's error handling: one line for the project's own errors about bad input, a traceback
for anything raised elsewhere and under ``--debug``."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines import cli


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


def test_raised_by_project_looks_at_the_innermost_frame():
    import events

    with pytest.raises(OSError) as project:
        events.read("/nonexistent/file.bin")
    assert cli.raised_by_project(project.value)
    with pytest.raises(ValueError) as foreign:
        np.zeros(3).reshape(2, 2)
    assert not cli.raised_by_project(foreign.value)
