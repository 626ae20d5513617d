"""The ``nsm`` command: one console script, one subcommand per job (``pipelines.commands``)."""

from __future__ import annotations

import argparse
import sys

from .commands import analyze, bench, compare, demo, evaluate, export, simulate, stream, train

JOBS = [simulate, train, evaluate, compare, analyze, stream, export, bench, demo]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsm",
        description="Neural Sampling Machines on event cameras: simulate event data, train and evaluate networks of "
        "binary stochastic neurons, stream recordings through them, export them to NIR, benchmark, and run "
        "the demo.",
        epilog="Run 'nsm <command> --help' for the options of a command.",
    )
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
    except (FileNotFoundError, ValueError) as err:
        # bad input: say what and where, without a traceback (EventFormatError is a ValueError)
        print(f"nsm {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
