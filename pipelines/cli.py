"""The ``nsm`` command: one console script, one subcommand per job (``pipelines.commands``).

Errors: a mistake on the command line (an unknown option, a number out of its range) is one line naming the
option, exit status 2 (``commands.Parser``, ``commands.InRange``). An error of the type ``events.errors.UserError``
(a bad file, option or configuration, whose message names it: ``InputError``, ``MissingInputError``,
``EventFormatError``, ``CacheError``, ``ExportError``, ``OutputError``, ...) is printed as one line, exit status 2;
so is an ``OSError`` by which the system refused a file (permission denied, a read-only or full disk, a file where a
folder should be: ``events.atomic.os_refusal``), with the file's name and what to do. Any other error is
unexpected and shows its traceback; so does every error under ``nsm --debug``.
"""

from __future__ import annotations

import argparse
import sys

from events.atomic import os_refusal
from events.errors import UserError

from .commands import Parser, analyze, bench, compare, convert, demo, evaluate, export, simulate, stream, train

JOBS = [simulate, convert, train, evaluate, compare, analyze, stream, export, bench, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="nsm",
        description="Neural Sampling Machines on event cameras: simulate and convert event data, train and evaluate "
        "networks of binary stochastic neurons, stream recordings through them, export them to NIR, benchmark, "
        "and run the demo.",
        epilog="Run 'nsm <command> --help' for the options of a command.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of every error")
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    for job in JOBS:
        job.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (UserError, OSError) as err:
        refusal = os_refusal(err)
        if args.debug or not (isinstance(err, UserError) or refusal):
            raise
        print(f"nsm {args.command}: error: {refusal or err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
