"""Test accuracy and NLL per clip of trained checkpoints in the expected (moment) pass, the pass training optimizes,
against Monte Carlo with K samples at the run's fitted temperature (docs/training-study.md, section 15): whether a
network's shortfall is in the function it learned or in sampling it.

    python scripts/expected_vs_mc.py RUN/best.pt [RUN2/best.pt ...] --data g12 --cache cache --samples 16 64
"""

from __future__ import annotations

import argparse
import sys

import torch
from torch.utils.data import DataLoader

import nsm
from pipelines import config as configs
from pipelines.checkpoint import load_checkpoint
from pipelines.data import test_set
from pipelines.temperature import checkpoint_temperature


def figures(probs: torch.Tensor, labels: torch.Tensor) -> str:
    accuracy = float((probs.argmax(1) == labels).float().mean())
    nll = float(-torch.log(probs.gather(1, labels[:, None]).clamp_min(1e-12)).mean())
    return f"accuracy {accuracy:.2%}, NLL {nll:.3f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", help="checkpoints of runs trained on --data")
    p.add_argument("--data", required=True, help="the data folder the runs trained on")
    p.add_argument("--cache", required=True, help="frame cache folder")
    p.add_argument("--samples", nargs="+", type=int, default=[16, 64], help="Monte Carlo sample counts")
    p.add_argument("--seed", type=int, default=0, help="the Monte Carlo noise seed")
    args = p.parse_args(argv)
    for path in args.checkpoints:
        ck = load_checkpoint(path)
        test = test_set(configs.from_dict(ck.config, path).data, args.data, args.cache, progress=False)
        temperature, model = checkpoint_temperature(ck.state, path), ck.model.eval()
        labels = torch.cat([y for _, y in DataLoader(test, batch_size=64)])
        with torch.inference_mode(), nsm.using_mode(model, "expected"):
            logits = torch.cat([model(x).float() for x, _ in DataLoader(test, batch_size=64)])
        print(f"{path}: expected pass, T 1: {figures(torch.softmax(logits, 1), labels)}")
        print(f"{path}: expected pass, T {temperature:.3f}: {figures(torch.softmax(logits / temperature, 1), labels)}")
        for k in args.samples:
            mc, generator = nsm.MCSettings(samples=k, temperature=temperature), torch.Generator().manual_seed(args.seed)
            probs = torch.cat([mc.predict(model, x, generator=generator).probs for x, _ in DataLoader(test, 64)])
            print(f"{path}: MC {k}, T {temperature:.3f}: {figures(probs, labels)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
