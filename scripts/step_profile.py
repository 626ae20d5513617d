"""Where a training step's time goes: its convolutions against everything else, for the bNSM and its reference.

    python scripts/step_profile.py [--case preset|fullwidth|both] [--rounds 5]

``preset``: the ``gestures-allconv18`` preset's bNSM step and its dcnn twin's, as the recipe trains them
(``pipelines.bench.compute.preset_steps``: bfloat16 and compiled where the preset turns them on). ``fullwidth``:
allconvnet18 at 64x64 on expected states in float32 against plain conv + hardtanh in float32
(``fullwidth_steps``, the first training row of ``nsm bench``). The two steps are profiled one after the other in
each of ``--rounds`` rounds, after two warm-up steps each, and the medians printed; convolution time is the self
time of the forward and backward convolution operators. The last column is the bound the bNSM's convolutions alone
put on the step ratio that ``nsm bench`` reports: the reference's whole step over the bNSM's convolutions (the
median over rounds), the ratio it would reach if everything but its convolutions took no time.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.profiler import profile

from pipelines.bench.compute import fullwidth_steps, preset_steps
from pipelines.runs import flushing_denormals

CONVOLUTIONS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward")


def split(step) -> tuple[float, float]:
    """(ms, ms of convolutions) of one call of ``step`` under the profiler."""
    with profile() as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e3
    conv = sum(e.self_cpu_time_total for e in events if e.key in CONVOLUTIONS) / 1e3
    return total, conv


def rounds(ours, ref, n: int) -> list[tuple[float, float, float, float]]:
    """``n`` rounds of (bNSM ms, its convolutions, reference ms, its convolutions), the two steps profiled one after
    the other in each round (the machine's speed drifts; a ratio is taken within a round), after two warm-up steps
    each."""
    for step in (ours, ref, ours, ref):
        step()
    return [split(ours) + split(ref) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=("preset", "fullwidth", "both"), default="both")
    parser.add_argument("--rounds", type=int, default=5, help="profiled rounds of one step each (default 5)")
    args = parser.parse_args()
    cases = []
    if args.case in ("preset", "both"):
        ours, twin, how = preset_steps()
        cases.append((f"gestures-allconv18 ({how['precision']}, batch {how['batch']})", "dcnn twin", ours, twin))
    if args.case in ("fullwidth", "both"):
        ours, plain = fullwidth_steps("expected", "exact")
        cases.append(("allconvnet18 expected, float32, 64x64, batch 16", "plain conv + hardtanh", ours, plain))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.rounds} rounds")
    print("| case | network | step (ms) | convolutions (ms) | rest (ms) | bound on the step ratio |")
    print("|---|---|---|---|---|---|")
    with flushing_denormals():
        for name, ref_name, ours, ref in cases:
            got = rounds(ours, ref, args.rounds)
            total, conv, ref_total, ref_conv = (statistics.median(r[i] for r in got) for i in range(4))
            bound = statistics.median(r[2] / r[1] for r in got)
            print(f"| {name} | bNSM | {total:.1f} | {conv:.1f} | {total - conv:.1f} | {bound:.2f}x |")
            print(f"| {name} | {ref_name} | {ref_total:.1f} | {ref_conv:.1f} | {ref_total - ref_conv:.1f} | |")


if __name__ == "__main__":
    main()
