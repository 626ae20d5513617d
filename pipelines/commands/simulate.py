"""``nsm simulate``: write synthetic event-camera data sets in the original file layouts."""

from __future__ import annotations

import argparse

import events

from . import InRange, add_seed


def add_parser(sub) -> None:
    p = sub.add_parser(
        "simulate",
        help="write a synthetic DVS Gesture or N-MNIST data set",
        description="Simulate an event camera and write a data set in the original layout: 'gestures' writes "
        "IBM DVS Gesture files (AEDAT 3.1 recordings, label CSVs, train/test trial lists, 128x128); "
        "'digits' writes N-MNIST .bin files (Train/<digit>/, Test/<digit>/, 34x34) from real handwriting.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("kind", choices=["gestures", "digits"], help="which data set to simulate")
    p.add_argument("--out", required=True, help="output folder (created)")
    add_seed(p, "random seed; the same seed writes the same bytes")
    p.add_argument(
        "--users",
        type=int,
        default=6,
        action=InRange,
        minimum=1,
        help="gestures: number of users (about a fifth are test users)",
    )
    p.add_argument(
        "--per-class",
        type=int,
        default=2,
        action=InRange,
        minimum=1,
        help="gestures: repetitions of each class per user; digits: training samples per digit",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.kind == "gestures":
        out = events.simulate_gestures(
            args.out, seed=args.seed, users=args.users, per_class=args.per_class, progress=not args.quiet
        )
    else:
        out = events.simulate_digits(args.out, seed=args.seed, per_class=args.per_class, progress=not args.quiet)
    print(f"wrote simulated {args.kind} to {out}")
    return 0
