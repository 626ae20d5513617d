"""``nsm evaluate``: accuracy and calibration of a checkpoint on the test split (``pipelines.evaluate``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nsm.sampling import MAX_SAMPLES

from .. import evaluate as evaluation
from ..runs import DEFAULT_CACHE, EVALUATION, RELIABILITY
from . import InRange, add_precision, add_seed


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
    how = p.add_mutually_exclusive_group()
    how.add_argument(
        "--samples",
        type=int,
        action=InRange,
        minimum=1,
        maximum=MAX_SAMPLES,
        help=f"fixed number of Monte Carlo samples K, at most {MAX_SAMPLES} (default: the run's eval.samples)",
    )
    how.add_argument("--adaptive", action="store_true", default=None, help="adaptive sampling per input")
    p.add_argument(
        "--threshold",
        type=float,
        action=InRange,
        minimum=0,
        maximum=1,
        open_min=True,
        help="adaptive: stop once the top probability reaches this, in (0, 1] (default 0.9)",
    )
    p.add_argument(
        "--max-samples",
        type=int,
        action=InRange,
        minimum=1,
        maximum=MAX_SAMPLES,
        help=f"adaptive: at most this many samples, at most {MAX_SAMPLES} (default 64)",
    )
    add_precision(p, "the run's eval.precision")
    add_seed(p, "seed of the sampling noise (default 0)")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"frame cache folder (default: {DEFAULT_CACHE})")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    adaptive = True if args.adaptive else (False if args.samples is not None else None)
    metrics = evaluation.evaluate(
        args.checkpoint,
        args.data,
        args.out,
        samples=args.samples,
        adaptive=adaptive,
        threshold=args.threshold,
        max_samples=args.max_samples,
        precision=args.precision,
        seed=args.seed,
        cache_dir=args.cache,
        device=args.device,
        progress=not args.quiet,
    )
    out = Path(args.out) if args.out else Path(args.checkpoint).parent
    print(evaluation.summary(metrics))
    print(f"\nchance is {1 / metrics['classes']:.1%}; wrote {out / EVALUATION} and {out / RELIABILITY}")
    return 0
