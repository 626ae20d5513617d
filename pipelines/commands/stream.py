"""``nsm stream``: classify an event recording window by window with calibrated confidence
(``pipelines.replay``)."""

from __future__ import annotations

import argparse
import os

import torch

from nsm.sampling import MAX_SAMPLES

from ..replay import replay
from ..stream import DEFAULT_CHUNK_EVENTS, DEFAULT_MAX_SAMPLES, DEFAULT_MIN_SAMPLES, DEFAULT_SAMPLES
from . import InRange, Parser, add_seed

MAX_MS = 2**53 / 1000  # the longest window or hop: 2^53 µs (285 years), whole µs that a float holds exactly


def _ms_to_us(value: float | None, name: str) -> int | None:
    """``value`` ms (positive and finite, as ``InRange`` parsed it) as whole µs; an error unless it is whole µs."""
    if value is None:
        return None
    us = round(value * 1000)
    if us < 1 or abs(us - value * 1000) > 1e-6:
        raise ValueError(f"{name} must be a positive whole number of µs in ms (e.g. 96 or 0.5), got {value}")
    return int(us)


def _crop_arg(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        w = h = 0  # not two integers
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"must be WIDTHxHEIGHT of positive integers, e.g. 256x256, got {text!r}")
    return w, h


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt) of a trained network")
    p.add_argument("--events", required=True, help="event file: AEDAT 3.1/4, N-MNIST .bin, .npy, HDF5")
    p.add_argument("--labels", help="DVS Gesture labels CSV (class,startTime_usec,endTime_usec) for accuracy")
    ms = dict(type=float, action=InRange, minimum=0, maximum=MAX_MS, open_min=True)
    p.add_argument("--window-ms", **ms, help="window length in ms (default: frames_per_clip x the frame length)")
    p.add_argument("--hop-ms", **ms, help="hop between window starts in ms (default: half a window)")
    mc = p.add_mutually_exclusive_group()
    mc.add_argument(
        "--samples",
        type=int,
        action=InRange,
        minimum=1,
        maximum=MAX_SAMPLES,
        help=f"Monte Carlo passes per window, at most {MAX_SAMPLES} (default {DEFAULT_SAMPLES})",
    )
    mc.add_argument("--adaptive", action="store_true", help="adaptive sampling: stop once confident")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.9,
        action=InRange,
        minimum=0,
        maximum=1,
        open_min=True,
        help="adaptive: top-probability threshold, in (0, 1] (0.9)",
    )
    p.add_argument(
        "--min-samples",
        type=int,
        default=DEFAULT_MIN_SAMPLES,
        action=InRange,
        minimum=1,
        maximum=MAX_SAMPLES,
        help=f"adaptive: fewest passes ({DEFAULT_MIN_SAMPLES})",
    )
    p.add_argument(
        "--max-samples",
        type=int,
        default=DEFAULT_MAX_SAMPLES,
        action=InRange,
        minimum=1,
        maximum=MAX_SAMPLES,
        help=f"adaptive: most passes, at most {MAX_SAMPLES} ({DEFAULT_MAX_SAMPLES})",
    )
    p.add_argument(
        "--decay",
        type=float,
        default=1.0,
        action=InRange,
        minimum=0,
        maximum=1,
        open_min=True,
        help="evidence weight kept per window, in (0, 1] (1: running mean of all windows)",
    )
    p.add_argument("--out", help="write one JSON line per prediction here (flushed line by line)")
    p.add_argument("--timeline", help="write a PNG of class probabilities over time (labels shaded)")
    p.add_argument("--summary", help="write the final summary (windows, accuracy, real-time factor, latency) as JSON")
    p.add_argument(
        "--sort-chunks",
        action="store_true",
        help="sort each chunk by time instead of rejecting out-of-order timestamps",
    )
    p.add_argument(
        "--chunk-events", type=int, default=DEFAULT_CHUNK_EVENTS, help=f"events read per chunk ({DEFAULT_CHUNK_EVENTS})"
    )
    add_seed(p, "noise seed (0); the same seed gives the same predictions")
    p.add_argument(
        "--downsample", type=int, action=InRange, minimum=1, help="override the checkpoint's downsampling factor"
    )
    p.add_argument("--crop", type=_crop_arg, help="override the centre crop, WIDTHxHEIGHT (before downsampling)")
    p.add_argument(
        "--threads",
        type=int,
        action=InRange,
        minimum=1,
        maximum=os.cpu_count(),
        help="torch threads for inference, at most the number of CPUs (default: torch's own choice; "
        "1 is often faster for small networks or on a busy machine)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress line")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "stream",
        help="classify an event recording window by window with calibrated confidence",
        description="Replay an event file in chunks through a trained network: one prediction per hop once "
        "its window is complete (per-window and accumulated class probabilities, confidence, "
        "entropy, samples, latency), a live progress line, JSON lines, a summary (accuracy with "
        "--labels) and an optional timeline PNG.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    window_us, hop_us = _ms_to_us(args.window_ms, "--window-ms"), _ms_to_us(args.hop_ms, "--hop-ms")
    if args.chunk_events < 1:
        raise ValueError(f"--chunk-events must be an integer >= 1 (events read per chunk), got {args.chunk_events}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    mc = (
        {
            "adaptive": True,
            "threshold": args.threshold,
            "min_samples": args.min_samples,
            "max_samples": args.max_samples,
        }
        if args.adaptive
        else {"samples": args.samples}
    )
    replay(
        args.checkpoint,
        args.events,
        labels=args.labels,
        window_us=window_us,
        hop_us=hop_us,
        mc=mc,
        decay=args.decay,
        seed=args.seed,
        downsample=args.downsample,
        crop=args.crop,
        sort_chunks=args.sort_chunks,
        chunk_events=args.chunk_events,
        predictions=args.out,
        timeline=args.timeline,
        summary_path=args.summary,
        progress=not args.quiet,
    )
    return 0


def main(argv=None) -> int:
    """``python -m pipelines.commands.stream ...``: the ``nsm stream`` command on its own (as the benchmark runs it)."""
    parser = Parser(prog="nsm stream", description="Classify an event recording window by window.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
