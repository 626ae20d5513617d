"""``nsm evaluate``: accuracy and calibration of a checkpoint on the test split (``pipelines.evaluate``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import evaluate as evaluation
from ..config import EvalConfig
from ..runs import DEFAULT_CACHE, EVALUATION, RELIABILITY
from . import add_seed
from .mc_options import RUN_EVAL, add_mc_options, mc_choices


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        help="accuracy and calibration (ECE, NLL, Brier) with Monte Carlo sampling",
        description=evaluation.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="RUN/checkpoint.pt or RUN/best.pt")
    p.add_argument("--data", required=True, help="the data set folder the run was trained on")
    p.add_argument("--out", help="folder for metrics.json and reliability.png (default: the checkpoint's folder)")
    add_mc_options(p, EvalConfig().mc, RUN_EVAL)
    add_seed(p, "seed of the sampling noise (default 0)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"frame cache folder (default: {DEFAULT_CACHE})")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    metrics = evaluation.evaluate(
        args.checkpoint,
        args.data,
        args.out,
        seed=args.seed,
        cache_dir=args.cache,
        device=args.device,
        progress=not args.quiet,
        **mc_choices(args),
    )
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    print(evaluation.summary(metrics))
    print(f"\nchance is {1 / metrics['classes']:.1%}; wrote {out / EVALUATION} and {out / RELIABILITY}")
    return 0
