"""``nsm demo``: simulate, train, evaluate, stream and export end to end in a few minutes (``pipelines.demo``)."""

from __future__ import annotations

import argparse

from .. import demo
from . import InRange, add_seed


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="simulate, train, evaluate, stream and export end to end in a few minutes",
        description=demo.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument(
        "--epochs",
        type=int,
        action=InRange,
        minimum=1,
        default=demo.DEMO_EPOCHS,
        help=f"training epochs (default {demo.DEMO_EPOCHS}, a short schedule; the {demo.PRESET} preset's own is "
        f"{demo.configs.load_config(demo.PRESET).train.epochs})",
    )
    add_seed(p, "seed of the simulation (default 0)")
    p.set_defaults(func=run)


def run(args) -> int:
    demo.run_demo(args.out, epochs=args.epochs, seed=args.seed)
    return 0
