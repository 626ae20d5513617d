"""How often a run's integer graph gives its float deterministic network's top class, by weight bits, with and
without the bound on unit biases that ``--target speck`` applies (docs/training-study.md, section 16).

On the first ``--clips`` test clips of ``--data`` (binned as the run was), both graphs run in the float64 reference
runtime (``pipelines.export.NIRRuntime``); prints, per bits and bound, the agreement and the accuracy.

    python scripts/quantization_agreement.py RUN/best.pt --data g12 --cache cache
"""

from __future__ import annotations

import argparse

from pipelines.checkpoint import load_checkpoint
from pipelines.export import NIRRuntime, quantize, spike_input, to_nir
from pipelines.export.targets import SPECK_BIAS_LIMIT
from pipelines.export.write import held_out_clips


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--clips", type=int, default=1000)
    p.add_argument("--bits", type=int, nargs="+", default=[8, 10, 12, 16])
    args = p.parse_args()
    ck = load_checkpoint(args.checkpoint)
    counts, labels = held_out_clips(ck, args.checkpoint, args.data, args.cache, args.clips, progress=False)
    x = spike_input(ck.model, counts)
    graph = to_nir(ck.model, tuple(x.shape[1:]))
    ref = NIRRuntime(graph).outputs(x).argmax(1)
    print(f"{len(labels)} clips; float deterministic accuracy {float((ref == labels).float().mean()):.1%}")
    print("| bits | unit biases | top class agreement | accuracy |\n|---|---|---|---|")
    for bits in args.bits:
        for bound in (None, SPECK_BIAS_LIMIT):
            out = NIRRuntime(quantize(graph, bits, bound)).outputs(x).argmax(1)
            agree, acc = float((out == ref).float().mean()), float((out == labels).float().mean())
            print(f"| {bits} | {'free' if bound is None else f'bounded to {bound}'} | {agree:.1%} | {acc:.1%} |")


if __name__ == "__main__":
    main()
