"""One NSM layer's product in each Monte Carlo precision: float32, bfloat16 (autocast) and int8 (spikes).

    python scripts/layer_precisions.py [--calls 30]

For allconvnet18's 3x3 layers at their sizes (16 samples, as one stream window of 16 samples computes them), the
firing logits of random +-1 states through ``AffineConv2d.affine`` (the -1 border's corrections included): in
float32, under bfloat16 autocast (states in bfloat16, as the layers pass them), and from spikes with int8 weights
(``nsm.spikes``, weights packed once inside an ``nsm.WeightCache``). Prints the median milliseconds of
``--calls`` calls each, the three precisions alternated call by call (the machine's speed drifts).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import nsm
from nsm import spikes
from nsm.layers import NSMConv2d

LAYERS = [(64, 64, 64), (96, 96, 32), (128, 128, 16), (128, 256, 8)]  # (in, out, size) of allconvnet18's 3x3 layers


def layer_times(c_in: int, c_out: int, size: int, calls: int) -> dict[str, float]:
    """Median seconds of one 3x3 NSM layer's logits for 16 samples of ``size`` x ``size`` states, per precision."""
    unit = NSMConv2d(c_in, c_out, 3, padding=1)
    z = torch.where(torch.rand(16, c_in, size, size) < 0.5, 1.0, -1.0).contiguous(memory_format=torch.channels_last)
    z16, fired = z.bfloat16(), spikes.encode(z)
    with torch.inference_mode(), nsm.WeightCache(unit):
        w, b = unit.effective_weight()
        runs = {
            "float32": lambda: unit.affine(z, w, b),
            "bfloat16": lambda: _autocast(lambda: unit.affine(z16, w, b)),
            "int8": lambda: unit.affine(fired, w, b),
        }
        times = {name: [] for name in runs}
        for _ in range(3):
            for run in runs.values():
                run()
        for _ in range(calls):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="calls per precision and layer (default: 30)")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("layer | float32 ms | bfloat16 ms | int8 ms")
    for c_in, c_out, size in LAYERS:
        cells = " | ".join(f"{t * 1e3:.2f}" for t in layer_times(c_in, c_out, size, args.calls).values())
        print(f"{c_in} -> {c_out} at {size}x{size} | {cells}", flush=True)


def _autocast(fn):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn()


if __name__ == "__main__":
    main()
