"""How close a trained network's expected pass stays to itself when its units estimate the logit variance by another
rule (``train.variance``, ``nsm.moments.VARIANCE_RULES``), and, for scale, when they drop it (the ``mean-input``
pass) (docs/training-study.md, section 18).

On the first ``--clips`` test clips of ``--data`` (binned as the run was), the network's ``expected`` pass with the
exact variance is the reference; prints, per pass, the top-class agreement with it, the mean total variation
sum_k |p_k - p_k^exact| of the softmax, and the pass's accuracy.

    python scripts/variance_rule_fidelity.py RUN/best.pt --data g12 --cache cache
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack

import torch

import nsm
from pipelines.checkpoint import load_checkpoint
from pipelines.export.write import held_out_clips


def softmax_of(model, counts: torch.Tensor, mode: str, rule: str) -> torch.Tensor:
    """The softmax of ``model``'s pass in ``mode`` with its units' variance by ``rule``, on ``counts``."""
    with ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        stack.enter_context(nsm.using_mode(model, mode))
        stack.enter_context(nsm.using_variance_rule(model, rule))
        return model(counts.float()).softmax(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--data", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--clips", type=int, default=1000)
    args = p.parse_args()
    ck = load_checkpoint(args.checkpoint)
    model = ck.model.eval()
    counts, labels = held_out_clips(ck, args.checkpoint, args.data, args.cache, args.clips, progress=False)
    exact = softmax_of(model, counts, "expected", "exact")
    accuracy = float((exact.argmax(1) == labels).float().mean())
    print(f"{len(labels)} clips; expected pass, exact variance: accuracy {accuracy:.1%}")
    print("| pass | top class agreement | mean sum_k abs(p_k - p_k exact) | accuracy |\n|---|---|---|---|")
    passes = [(f"expected, {rule}", "expected", rule) for rule in nsm.moments.VARIANCE_RULES if rule != "exact"]
    for name, mode, rule in passes + [("mean-input (no variance)", "mean-input", "exact")]:
        probs = softmax_of(model, counts, mode, rule)
        agree = float((probs.argmax(1) == exact.argmax(1)).float().mean())
        spread = float((probs - exact).abs().sum(1).mean())
        print(f"| {name} | {agree:.2%} | {spread:.4f} | {float((probs.argmax(1) == labels).float().mean()):.1%} |")


if __name__ == "__main__":
    main()
