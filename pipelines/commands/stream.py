"""``nsm stream``: classify an event recording or a live source window by window with calibrated confidence
(``pipelines.replay``; live sources: ``events.live``).

Exit status with a live ``--source``: 0 when the stream ended (the server closed the connection, the camera
stopped, or Ctrl-C, the first of which ends the stream as its end would and the second aborts); 1 when the
source was lost (it stalled for ``--stall-timeout`` s, or with ``--reconnect`` did not come back in time), after
the summary and timeline are written; 2 for a mistake (the extra not installed, no server or camera, events out
of time order), as every command's errors.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from contextlib import contextmanager

import torch
from tqdm import tqdm

from events.errors import InputError
from events.live import DEFAULT_STALL_S, INSTALL_HINT, LiveSource, SourceLost, open_source

from ..replay import replay
from ..stream import DEFAULT_CHUNK_EVENTS, STREAM_MC
from . import InRange, Parser, add_seed
from .mc_options import add_mc_options, mc_choices

MAX_MS = 2**53 / 1000  # the longest window or hop: 2^53 µs (285 years), whole µs that a float holds exactly
DEFAULT_RECONNECT_S = 60.0  # --reconnect without a value: how long to wait for a lost source
MAX_WAIT_S = 7 * 24 * 3600.0  # the longest --stall-timeout or --reconnect: a week
STREAM_ORIGIN = "{value}, the stream's own"
"""Where the Monte Carlo options' defaults come from (``mc_options.add_mc_options``): ``STREAM_MC``."""


def _ms_to_us(value: float | None, name: str) -> int | None:
    """``value`` ms (positive and finite, as ``InRange`` parsed it) as whole µs; an error unless it is whole µs."""
    if value is None:
        return None
    us = round(value * 1000)
    if us < 1 or abs(us - value * 1000) > 1e-6:
        raise InputError(f"{name} must be a positive whole number of µs in ms (e.g. 96 or 0.5), got {value}")
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
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", help="event file: AEDAT 3.1/4, N-MNIST .bin, .npy, HDF5, Prophesee RAW/DAT")
    source.add_argument(
        "--source",
        help="live source instead of a file: dv://HOST:PORT (a dv-processing network event stream) or "
        f"camera[:NAME] (an attached iniVation camera, NAME its MODEL_SERIAL or serial); needs {INSTALL_HINT}",
    )
    wait = dict(type=float, action=InRange, minimum=0, maximum=MAX_WAIT_S, open_min=True)
    p.add_argument(
        "--stall-timeout",
        **wait,
        metavar="S",
        help=f"--source: seconds without a packet (or, connecting, without an answer) before the source counts as "
        f"stalled and the stream stops, exit status 1 ({DEFAULT_STALL_S:g})",
    )
    p.add_argument(
        "--reconnect",
        **wait,
        nargs="?",
        const=DEFAULT_RECONNECT_S,
        metavar="S",
        help="--source: when the connection is lost, wait up to S seconds (default "
        f"{DEFAULT_RECONNECT_S:g}) for it to come back, retrying with backoff, instead of ending the stream",
    )
    p.add_argument("--labels", help="DVS Gesture labels CSV (class,startTime_usec,endTime_usec) for accuracy")
    ms = dict(type=float, action=InRange, minimum=0, maximum=MAX_MS, open_min=True)
    p.add_argument("--window-ms", **ms, help="window length in ms (default: frames_per_clip x the frame length)")
    p.add_argument("--hop-ms", **ms, help="hop between window starts in ms (default: half a window)")
    add_mc_options(p, STREAM_MC, STREAM_ORIGIN)
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
        help="classify an event recording or a live source window by window with calibrated confidence",
        description="Replay an event file in chunks, or read a live source (a dv-processing network stream or "
        "an iniVation camera), through a trained network: one prediction per hop once "
        "its window is complete (per-window and accumulated class probabilities, confidence, "
        "entropy, samples, latency), a live progress line, JSON lines, a summary (accuracy with "
        "--labels) and an optional timeline PNG. With --source, Ctrl-C ends the stream (exit 0); "
        "a lost source exits 1 after the summary. Its Monte Carlo settings are its own, with fewer passes than "
        "nsm evaluate's: they bound a window's latency.",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def _notify(message: str) -> None:
    """A live source's progress line, on stderr above the progress bar."""
    tqdm.write(message, file=sys.stderr)


@contextmanager
def _ctrl_c_ends(source: LiveSource):
    """While streaming ``source`` (from the main thread), the first Ctrl-C stops it, so that the stream ends as
    its end would; the handler in place before is back for a second one."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def stop(signum, frame):
        signal.signal(signal.SIGINT, previous)
        source.stop()

    signal.signal(signal.SIGINT, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def run(args) -> int:
    window_us, hop_us = _ms_to_us(args.window_ms, "--window-ms"), _ms_to_us(args.hop_ms, "--hop-ms")
    if args.source is None and (args.stall_timeout is not None or args.reconnect is not None):
        raise InputError("--stall-timeout and --reconnect apply to a live --source only")
    if args.chunk_events < 1:
        raise InputError(f"--chunk-events must be an integer >= 1 (events read per chunk), got {args.chunk_events}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    settings = dict(
        labels=args.labels,
        window_us=window_us,
        hop_us=hop_us,
        mc=mc_choices(args),
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
    if args.source is None:
        replay(args.checkpoint, args.events, **settings)
        return 0
    source = open_source(
        args.source,
        stall_timeout_s=DEFAULT_STALL_S if args.stall_timeout is None else args.stall_timeout,
        reconnect_s=args.reconnect,
        notify=_notify,
    )
    try:
        with _ctrl_c_ends(source):
            replay(args.checkpoint, source, **settings)
    except SourceLost as err:
        print(f"nsm stream: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """``python -m pipelines.commands.stream ...``: the ``nsm stream`` command on its own (as the benchmark runs it)."""
    parser = Parser(prog="nsm stream", description="Classify an event recording window by window.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
