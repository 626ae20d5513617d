"""The ``nsm`` subcommands, one module per job. Each provides ``add_parser(subparsers)``, which registers the
subcommand with its own ``--help`` and sets ``func``: a callable taking the parsed arguments and returning an exit
status. They parse and print; the work is done by the library modules of ``pipelines``.

Every numeric option is range-checked where it is parsed (:class:`InRange`), and a mistake on the command line
is one line naming the option (:class:`Parser`)."""

from __future__ import annotations

import argparse

from events.types import SEED_MAX, check_float, check_int


class Parser(argparse.ArgumentParser):
    """The parser of ``nsm`` and of its subcommands (``add_subparsers`` makes them of this class too): a mistake
    on the command line is one line, ``nsm <command>: error: <what>``, exit status 2, without the usage that
    ``--help`` shows."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


class InRange(argparse.Action):
    """An option whose number is checked where it is parsed (``add_argument(..., type=int or float,
    action=InRange, minimum=..., maximum=...)``): a ``type=int`` value by ``events.types.check_int``, a
    ``type=float`` one by ``check_float`` (finite, ``open_min``/``open_max`` excluding a bound). A value out of
    range is a parser error naming the option, the valid range and the value: ``--threshold must be a finite
    number in (0, 1], got 2.0``. Defaults are not checked."""

    def __init__(
        self,
        option_strings,
        dest,
        minimum: float | None = None,
        maximum: float | None = None,
        open_min: bool = False,
        open_max: bool = False,
        **kwargs,
    ):
        super().__init__(option_strings, dest, **kwargs)
        self.minimum, self.maximum, self.open_min, self.open_max = minimum, maximum, open_min, open_max

    def __call__(self, parser, namespace, value, option_string=None):
        try:
            if self.type is int:
                value = check_int(option_string, value, self.minimum, self.maximum)
            else:
                value = check_float(
                    option_string, value, self.minimum, self.maximum, open_min=self.open_min, open_max=self.open_max
                )
        except ValueError as err:
            parser.error(str(err))
        setattr(namespace, self.dest, value)


def add_seed(parser: argparse.ArgumentParser, help: str) -> None:
    """Add ``--seed``: an integer in 0..``SEED_MAX``, default 0, with ``help``."""
    parser.add_argument("--seed", type=int, default=0, action=InRange, minimum=0, maximum=SEED_MAX, help=help)
