"""``nsm analyze``: weight-normalization figures of training runs (``pipelines.analyze``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from events.errors import MissingInputError
from nsm.neurons import NEURON_KINDS

from .. import analyze as analysis
from ..runs import ACTIVITY


def add_parser(sub) -> None:
    p = sub.add_parser(
        "analyze",
        help="weight-normalization figures (input percentiles, weight evolution) of runs",
        description=analysis.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--run",
        nargs="+",
        metavar="RUN",
        help="run folders (holding activity.jsonl) or an 'nsm compare' output folder (uses OUT/runs/*)",
    )
    which.add_argument(
        "--checkpoint", nargs="+", metavar="CK", help="checkpoints; each stands for the run folder it lies in"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the figures and analysis.json")
    p.set_defaults(func=run)


def resolve_runs(args) -> list[Path]:
    """Run folders named by ``--run`` (folders or compare outputs) or ``--checkpoint`` (their parents)."""
    runs: list[Path] = []
    if args.checkpoint:
        for ck in map(Path, args.checkpoint):
            if not ck.is_file():
                raise MissingInputError(f"{ck}: checkpoint not found")
            runs.append(ck.resolve().parent)
    else:
        for path in map(Path, args.run):
            if not path.is_dir():
                raise MissingInputError(f"{path}: run folder not found")
            if (path / ACTIVITY).exists() or not (path / "runs").is_dir():
                runs.append(path)
                continue
            found = [p for p in (path / "runs").iterdir() if p.is_dir()]
            if not found:
                raise MissingInputError(f"{path / 'runs'}: no run folders in this 'nsm compare' output")
            order = {k: i for i, k in enumerate(NEURON_KINDS)}
            runs.extend(sorted(found, key=lambda p: (order.get(p.name, len(order)), p.name)))
    unique = list(dict.fromkeys(p.resolve() for p in runs))
    return unique


def run(args) -> int:
    analysis.analyze(resolve_runs(args), args.out)
    return 0
