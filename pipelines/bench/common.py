"""What every benchmark shares: a table row, the interleaved timer, the machine line and the Markdown table."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Row:
    """One benchmark: ``ours`` and ``reference`` in ``unit`` (higher is better unless the goal says otherwise),
    the ratio, the goal and free-text ``detail``."""

    name: str
    unit: str
    ours: float
    reference_name: str
    reference: float
    ratio: float
    goal: str
    detail: str = ""


def interleaved(ours: Callable[[], None], reference: Callable[[], None], rounds: int):
    """Time both callables alternately; return (median seconds ours, median seconds reference, median ratio
    ref/ours)."""
    ours(), reference()  # warm-up: compilation, allocator, caches
    t_ours, t_ref = [], []
    for _ in range(rounds):
        for fn, acc in ((ours, t_ours), (reference, t_ref)):
            start = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - start)
    ratios = [r / o for o, r in zip(t_ours, t_ref)]
    return statistics.median(t_ours), statistics.median(t_ref), statistics.median(ratios)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"Python {platform.python_version()}"
    )


def to_markdown(rows: list[Row]) -> str:
    lines = ["| benchmark | ours | reference | ratio (ours/ref) | goal | details |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.ours:.1f} {r.unit} | {r.reference_name}: {r.reference:.1f} {r.unit} "
            f"| {r.ratio:.2f}x | {r.goal} | {r.detail} |"
        )
    return "\n".join(lines)
