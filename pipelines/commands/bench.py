"""``nsm bench``: speed measured side by side with reference implementations (``pipelines.bench``)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from events.atomic import check_output, write_text_atomic
from events.errors import MissingInputError

from .. import bench as benchmarks


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="measure speed against reference implementations",
        description="Run each benchmark side by side with its reference in one process and print "
        "a Markdown table of throughputs and ratios (higher is better).",
    )
    p.add_argument("--quick", action="store_true", help="fewer rounds and smaller inputs (about a minute)")
    p.add_argument("--out", help="also write the table to this Markdown file")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="CK",
        help="also stream this trained checkpoint (from nsm train) over the simulated recording with "
        "adaptive sampling; repeat for several",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    for path in args.checkpoint:  # fail before the long run, not after it
        if not Path(path).is_file():
            raise MissingInputError(f"--checkpoint {path}: no such file")
    if args.out:
        check_output(args.out, [("--checkpoint", path) for path in args.checkpoint])
    print(f"machine: {benchmarks.machine()}", flush=True)
    rows = []
    sections = [(section.__name__, section) for section in benchmarks.SECTIONS]
    sections += [(f"stream_checkpoint {path}", partial(benchmarks.stream_checkpoint, path)) for path in args.checkpoint]
    for name, section in sections:
        print(f"running {name} ...", flush=True)
        result = section(args.quick)
        rows.extend(result if isinstance(result, list) else [result])
    table = benchmarks.to_markdown(rows)
    print()
    print(table)
    if args.out:
        write_text_atomic(args.out, f"Machine: {benchmarks.machine()}\n\n{table}\n")
    return 0
