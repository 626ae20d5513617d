"""Streaming the full-width network with 16 samples a window in each Monte Carlo precision, alternated.

    python scripts/stream_precisions.py [--rounds 4] [--precisions bfloat16 int8]

Each round streams ``nsm bench``'s simulated recording through the untrained allconvnet18 at 64x64 once per
precision, one after the other (``pipelines.bench.streaming.stream_allconvnet18_k16``, the bench's row), so that the
shared machine's drift, tens of percent within minutes, falls on every precision alike. Prints each round's
real-time factors and their ratio to the first precision's, then the medians.
"""

from __future__ import annotations

import argparse
import statistics

from nsm.sampling import PRECISIONS
from pipelines.bench.streaming import stream_allconvnet18_k16


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="alternations (default: 4)")
    parser.add_argument(
        "--precisions", nargs="+", choices=PRECISIONS, default=["bfloat16", "int8"], help="default: bfloat16 int8"
    )
    args = parser.parse_args()
    factors = {p: [] for p in args.precisions}
    first = args.precisions[0]
    for r in range(args.rounds):
        for precision in args.precisions:
            factors[precision].append(stream_allconvnet18_k16(precision, quick=False).ratio)
        cells = [f"{p} {factors[p][-1]:.2f}x ({factors[p][-1] / factors[first][-1]:.2f})" for p in args.precisions]
        print(f"round {r + 1}: " + ", ".join(cells), flush=True)
    for precision, values in factors.items():
        ratios = [v / f for v, f in zip(values, factors[first])]
        print(
            f"{precision}: median {statistics.median(values):.2f}x real time ({min(values):.2f}-{max(values):.2f}), "
            f"{statistics.median(ratios):.2f} times {first} ({min(ratios):.2f}-{max(ratios):.2f})"
        )


if __name__ == "__main__":
    main()
