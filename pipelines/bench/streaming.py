"""Benchmarks of streaming: the classifier's machinery, allconvnet18 and ``tiny`` streaming a simulated recording
in real time, trained checkpoints, and the peak memory of a long against a short recording."""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import events
import models
import nsm
from events.errors import InputError

from ..stream import STREAM_MC, StreamingClassifier
from .common import Row
from .compute import mc_precisions, tiny_model

STREAM_FRAMES = {"time_window_us": 16_000, "polarity": "merge", "frames_per_clip": 6}  # 96 ms windows
CAMERA_PACKET_US = 5_000  # the stream benchmarks push events as a camera delivers them: 5 ms packets
_GESTURES = {}


def _gesture_recording() -> events.Recording:
    """One simulated DVS Gesture recording (11 gestures, about 13 s, 128x128), simulated once per process."""
    if "rec" not in _GESTURES:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            root = events.simulate_gestures(tmp, seed=0, users=1, per_class=1, gesture_s=(0.55, 0.6), progress=False)
            _GESTURES["rec"] = events.read(next(Path(root).glob("*.aedat")))
    return _GESTURES["rec"]


def _stream_row(name: str, make_classifier, seconds: float, goal: float, threads: int | None = None) -> Row:
    """Push ``seconds`` of the simulated recording through ``make_classifier(sensor_size)`` (a
    ``StreamingClassifier``) in camera packets; the real-time factor is recording time / wall time, latency
    is per window from packet to prediction."""
    rec = _gesture_recording()
    ev = rec.events[rec.events["t"] < rec.events["t"][0] + int(seconds * 1e6)]
    clf = make_classifier(rec.sensor_size)
    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        clf.push(ev[: len(ev) // 20])  # warm-up: kernels compiled, allocator and caches primed
        clf.flush()
        cuts = np.searchsorted(ev["t"], np.arange(ev["t"][0], ev["t"][-1] + 1, CAMERA_PACKET_US)[1:])
        start = time.perf_counter()
        preds = [p for packet in np.split(ev, cuts) for p in clf.push(packet)] + clf.flush()
        wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(saved)
    span = (preds[-1].end_us - preds[0].start_us) * 1e-6
    lat = np.array([p.latency_ms for p in preds])
    rtf = span / wall
    return Row(
        name,
        "x real time",
        rtf,
        "real time",
        1.0,
        rtf,
        f">= {goal:g}x real time",
        f"{len(preds)} windows of {span:.1f} s, latency p50 {np.percentile(lat, 50):.1f} ms / "
        f"p99 {np.percentile(lat, 99):.1f} ms, mean {np.mean([p.samples for p in preds]):.1f} samples",
    )


def _classifier(model, frame_spec, mc: nsm.MCSettings):
    """``sensor_size -> StreamingClassifier`` of ``model`` predicting as ``mc`` says, with noise seed 0."""
    return lambda sensor_size: StreamingClassifier(model, frame_spec, sensor_size, mc=mc, seed=0)


_ADAPTIVE = STREAM_MC.overridden(adaptive=True)
_ADAPTIVE_NAME = f"adaptive {_ADAPTIVE.min_samples}-{_ADAPTIVE.max_samples}"
_FIXED = STREAM_MC.overridden(samples=_ADAPTIVE.min_samples)  # adaptive sampling's best case
_FIXED_NAME = f"K={_FIXED.samples}"


def stream_machinery(quick: bool) -> Row:
    """Real-time factor of the streaming machinery alone: camera packets through ``SlidingWindows`` and
    every window binned into its six 16 ms frames at 64x64, without a network."""
    from events.stream import SlidingWindows, window_frames

    rec = _gesture_recording()
    ev = rec.events
    spec = events.FrameSpec(downsample=2, **STREAM_FRAMES)
    cuts = np.searchsorted(ev["t"], np.arange(ev["t"][0], ev["t"][-1] + 1, CAMERA_PACKET_US)[1:])
    packets = np.split(ev, cuts)

    def run() -> int:
        windows = SlidingWindows(96_000, 48_000, sensor_size=rec.sensor_size)
        n = 0
        for packet in packets + [None]:
            for w in windows.push(packet) if packet is not None else windows.flush():
                window_frames(w.events, rec.sensor_size, spec, w.start_us, w.end_us, 6)
                n += 1
        return n

    run()  # warm-up (numba kernels)
    times = []
    for _ in range(2 if quick else 5):
        start = time.perf_counter()
        n = run()
        times.append(time.perf_counter() - start)
    wall = statistics.median(times)
    span = (ev["t"][-1] - ev["t"][0]) * 1e-6
    return Row(
        "stream windowing + binning only (no network), 64x64",
        "x real time",
        span / wall,
        "real time",
        1.0,
        span / wall,
        ">= 100x real time",
        f"{n} windows of {span:.1f} s, {len(packets)} packets of 5 ms, {wall / n * 1e3:.3f} ms a window",
    )


def _stream_rows(label: str, net, downsample: int, seconds: float, goal: float, quick: bool) -> list[Row]:
    """The stream's adaptive sampling (``STREAM_MC``) and K = its minimum on one thread, and at torch's default thread
    count (adaptive there only without --quick). The networks are untrained, so adaptive sampling never reaches its
    threshold and always draws max_samples: its worst case; K = min_samples is its best case."""
    default = torch.get_num_threads()
    adaptive = (f"{_ADAPTIVE_NAME} (untrained: {_ADAPTIVE.max_samples})", _ADAPTIVE)
    runs = [(1, *adaptive), (1, _FIXED_NAME, _FIXED)]
    if default != 1:
        runs += [(default, *adaptive)] if not quick else []
        runs += [(default, _FIXED_NAME, _FIXED)]
    spec = events.FrameSpec(downsample=downsample, **STREAM_FRAMES)
    return [
        _stream_row(
            f"stream {label}, {what}, {_threads(threads)}", _classifier(net, spec, mc), seconds, goal, threads=threads
        )
        for threads, what, mc in runs
    ]


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n > 1 else ''}"


def stream_checkpoint(path, quick: bool) -> list[Row]:
    """Real-time factor and latency of streaming a trained checkpoint (with its frame spec) over the simulated
    recording with the stream's adaptive sampling (``STREAM_MC``), at torch's default thread count and on one
    thread: what adaptive sampling costs once the network is confident on most windows. The goal is the issue's: 1x
    real time for allconvnet18, 10x for smaller networks."""
    from pipelines.checkpoint import load_checkpoint

    ck = load_checkpoint(path)
    if ck.frame_spec is None:
        raise InputError(f"{path}: the checkpoint holds no frame spec, so its input cannot be binned")
    name = ck.model.spec["name"]
    make = _classifier(ck.model, ck.frame_spec, _ADAPTIVE)
    default = torch.get_num_threads()
    return [
        _stream_row(
            f"stream {Path(path).name} ({name}), {_ADAPTIVE_NAME}, {_threads(threads)}",
            make,
            3.0 if quick else 13.0,
            1 if name == "allconvnet18" else 10,
            threads=threads,
        )
        for threads in dict.fromkeys([default, 1])
    ]


def _allconvnet18():
    """The untrained full-width allconvnet18 the stream rows time (made from torch seed 0)."""
    torch.manual_seed(0)
    return models.create_model("allconvnet18")


def _allconvnet18_seconds(quick: bool) -> float:
    """Seconds of the simulated recording the allconvnet18 stream rows push."""
    return 0.75 if quick else 6.0


def stream_allconvnet18_k16(precision: str, quick: bool, net=None) -> Row:
    """Real-time factor and latency of streaming allconvnet18 at 64x64 with 16 samples a window in ``precision``
    (``MCSettings.precision``) at torch's thread count (``net``: that network, made here when None)."""
    mc = STREAM_MC.overridden(samples=16, precision=precision)
    make = _classifier(_allconvnet18() if net is None else net, events.FrameSpec(downsample=2, **STREAM_FRAMES), mc)
    name = f"stream allconvnet18 64x64, K=16, {precision}, {_threads(torch.get_num_threads())}"
    return _stream_row(name, make, _allconvnet18_seconds(quick), 1)


def stream_allconvnet18(quick: bool) -> list[Row]:
    """Real-time factor and latency of streaming allconvnet18 (6x64x64, 96 ms windows, 48 ms hop); also 16 samples a
    window in each faster precision this CPU has (``mc_precisions``: ``--precision bfloat16``, ``int8``)."""
    net = _allconvnet18()
    rows = _stream_rows("allconvnet18 64x64", net, 2, _allconvnet18_seconds(quick), 1, quick)
    return rows + [stream_allconvnet18_k16(precision, quick, net) for precision in mc_precisions()[1:]]


def stream_tiny(quick: bool) -> list[Row]:
    """Real-time factor and latency of streaming the tiny preset (6x32x32, width 0.25)."""
    torch.manual_seed(0)
    return _stream_rows("tiny 32x32", tiny_model(), 4, 3.0 if quick else 13.0, 10, quick)


_LAUNCHER = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def _child_peak_mb(argv: list[str]) -> float:
    """Peak resident memory (ru_maxrss, MB) of ``python -m pipelines.commands.stream ARGV`` run as a child.

    Linux carries a process's memory high-water mark across exec, so a child forked straight from this
    (large) process would report at least this process's size. A small launcher process therefore
    starts the child and reports the ru_maxrss of its own (only) child.
    """
    import subprocess

    cmd = [sys.executable, "-c", _LAUNCHER, sys.executable, "-m", "pipelines.commands.stream", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode:
        raise RuntimeError(f"nsm stream failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return int(proc.stdout.split()[-1]) / 1024  # kB on Linux


def stream_memory(quick: bool) -> Row:
    """Peak memory of ``nsm stream`` (tiny preset, K=1, one thread) on a recording and on one ten times longer:
    random events at 20 k events/s on a 128x128 sensor, written as AEDAT 3.1, read in chunks of 8192 events."""
    import tempfile

    from events.formats.aedat3 import write_aedat3
    from pipelines.checkpoint import save_checkpoint

    seconds = 3 if quick else 10
    rate = 20_000
    rng = np.random.default_rng(0)
    peaks = {}
    with tempfile.TemporaryDirectory() as tmp:
        ck = Path(tmp) / "tiny.pt"
        torch.manual_seed(0)
        save_checkpoint(
            ck,
            tiny_model(),
            classes=[str(k) for k in range(11)],
            frame_spec=events.FrameSpec(downsample=4, **STREAM_FRAMES).to_dict(),
        )
        for factor in (1, 10):
            n = seconds * factor * rate
            ev = events.make_events(
                rng.integers(0, 128, n),
                rng.integers(0, 128, n),
                np.sort(rng.integers(0, seconds * factor * 1_000_000, n)),
                rng.integers(0, 2, n),
            )
            path = Path(tmp) / f"rec{factor}x.aedat"
            write_aedat3(path, ev, events.SensorSize(128, 128, 2))
            del ev
            peaks[factor] = _child_peak_mb(
                [
                    "--checkpoint",
                    str(ck),
                    "--events",
                    str(path),
                    "--samples",
                    "1",
                    "--chunk-events",
                    "8192",
                    "--threads",
                    "1",
                    "--quiet",
                    "--out",
                    str(Path(tmp) / "p.jsonl"),
                ]
            )
    return Row(
        f"nsm stream peak memory, {10 * seconds} s vs {seconds} s recording",
        "MB",
        peaks[10],
        f"{seconds} s recording",
        peaks[1],
        peaks[10] / peaks[1],
        "about 1.0x (lower is better)",
        f"ru_maxrss of the child process; {rate // 1000} k events/s",
    )
