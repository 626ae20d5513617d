"""``nsm bench``: performance measured side by side in one run, printed as a Markdown table.

Every row times our implementation and a reference doing the same work in the same process,
interleaved round by round so that both see the same machine state; the ratio is the median of
the per-round ratios. Nothing here is asserted by tests: the numbers are for people to read.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import events
import models
import nsm


@dataclass
class Row:
    """One benchmark: ``ours`` and ``reference`` in ``unit`` (higher is better), the ratio and the goal."""

    name: str
    unit: str
    ours: float
    reference_name: str
    reference: float
    ratio: float
    goal: str


def interleaved(ours: Callable[[], None], reference: Callable[[], None], rounds: int):
    """Time both callables alternately; return (median seconds ours, median seconds reference, median ratio ref/ours)."""
    ours(), reference()                       # warm-up: compilation, allocator, caches
    t_ours, t_ref = [], []
    for _ in range(rounds):
        for fn, acc in ((ours, t_ours), (reference, t_ref)):
            start = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - start)
    ratios = [r / o for o, r in zip(t_ours, t_ref)]
    return statistics.median(t_ours), statistics.median(t_ref), statistics.median(ratios)


def mc_inference(quick: bool) -> Row:
    """MC samples per second of allconvnet18 (bnsm) vs the same layout of nn.Conv2d + hardtanh, 64x64, batch 16."""
    batch, k = 16, 4
    torch.manual_seed(0)
    x = torch.randint(0, 2, (batch, 6, 64, 64)).float()
    net = models.create_model("allconvnet18", neuron="bnsm")
    plain = models.create_model("allconvnet18", neuron=nsm.neurons.BENCH_REFERENCE)
    t_nsm, t_plain, ratio = interleaved(lambda: nsm.mc_predict(net, x, samples=k),
                                        lambda: nsm.mc_predict(plain, x, samples=k), 3 if quick else 10)
    n = batch * k
    return Row("allconvnet18 MC inference, 64x64, batch 16", "samples/s", n / t_nsm,
               "plain conv + hardtanh", n / t_plain, ratio, ">= 0.8x (NSM costs at most 1.25x plain)")


def binning(quick: bool) -> Row:
    """Events per second binned into frames: events.to_frames vs tonic.transforms.ToFrame on 2 M events, 128x128."""
    import tonic.transforms

    n = 2_000_000
    rng = np.random.default_rng(0)
    ev = events.make_events(rng.integers(0, 128, n), rng.integers(0, 128, n),
                            np.sort(rng.integers(0, 6_000_000, n)), rng.integers(0, 2, n))
    sensor = events.SensorSize(128, 128, 2)
    tonic_frames = tonic.transforms.ToFrame(sensor_size=tuple(sensor), time_window=16_000)
    t_ours, t_ref, ratio = interleaved(lambda: events.to_frames(ev, sensor, time_window_us=16_000),
                                       lambda: tonic_frames(ev), 3 if quick else 5)
    return Row("event binning, 2 M events, 128x128, 16 ms frames", "M events/s", n / t_ours / 1e6,
               "tonic ToFrame", n / t_ref / 1e6, ratio, ">= 25x tonic")


SECTIONS = [mc_inference, binning]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"Python {platform.python_version()}")


def to_markdown(rows: list[Row]) -> str:
    lines = ["| benchmark | ours | reference | ratio (ours/ref) | goal |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.name} | {r.ours:.1f} {r.unit} | {r.reference_name}: {r.reference:.1f} {r.unit} "
                     f"| {r.ratio:.2f}x | {r.goal} |")
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure speed against reference implementations",
                       description="Run each benchmark side by side with its reference in one process and print "
                                   "a Markdown table of throughputs and ratios (higher is better).")
    p.add_argument("--quick", action="store_true", help="fewer rounds and smaller inputs (about a minute)")
    p.add_argument("--out", help="also write the table to this Markdown file")
    p.set_defaults(func=run)


def run(args) -> int:
    print(f"machine: {machine()}", flush=True)
    rows = []
    for section in SECTIONS:
        print(f"running {section.__name__} ...", flush=True)
        rows.append(section(args.quick))
    table = to_markdown(rows)
    print()
    print(table)
    if args.out:
        Path(args.out).write_text(f"Machine: {machine()}\n\n{table}\n")
    return 0
