"""The harness of docs/training-study.md, sections 13-18: the NSM against its deterministic twin, each trained to
convergence, at several seeds (issue 27).

For every variant and seed it runs the library's own commands, one after the other, into ``--out``:

  nsm train --config gestures-allconv18 --data DATA --cache CACHE --out OUT/VARIANT-sSEED --set train.seed=SEED ...
  nsm evaluate --checkpoint OUT/VARIANT-sSEED/best.pt --data DATA --cache CACHE --samples 16

(``nsm train`` refits the readout and fits the Monte Carlo temperature on the validation clips, and ``nsm
evaluate`` reports the test users' figures at that temperature and at 1), skipping runs that already have their
``metrics.json``, then prints one Markdown table of the test figures: per variant and seed, Monte Carlo (16
samples, at the fitted temperature, and at 1) against one sample and the deterministic network, and the means
over the seeds. The variants are the rows of section 13:

  dcnn        the deterministic twin: 30 epochs, cosine schedule
  expected    bnsm on expected states: 24 epochs, cosine (the curriculum's first phase, on its own)
  curriculum  bnsm: the same 24 epochs, then 6 on sampled states (train.sampled_share = 0.2), the rate restarted
  lrt         bnsm on sampled logits (train.forward = "sampled-logit") for 24 epochs, then the same sampled phase
  gnsm        gnsm with the recipe of ``curriculum``

and those of section 14 (the preset's input then coded the counts at levels 1, 2, 4, 8; ``-bf16``: bfloat16
autocast and compiled training steps, ``train.cpu_bf16``, ``train.compile``):

  levels, levels-dcnn             bnsm 24 epochs / dcnn 30 epochs, the thermometer input, float32, eager
  levels-bf16, levels-bf16-dcnn   the same in bfloat16 with compiled steps

and those of sections 15 and 16 (the thermometer input, bfloat16, compiled steps; width 0.5 unless named):

  wide, wide-dcnn     width 0.75 instead of 0.5: the preset's recipe since section 16
  zoom, zoom-dcnn     train.augment.scale = 0.25 (zooms by 0.8-1.25)
  levels-gnsm         gnsm, 24 epochs

and those of section 17: full, full-dcnn   the preset's recipe (wide, wide-dcnn) at width 1.0

and that of section 18: window-mean   the preset's recipe (wide) with train.variance = "window-mean"

    python scripts/parity_study.py --data g12 --cache cache --out parity --variants dcnn expected curriculum
    python scripts/parity_study.py --data g12 --cache cache --out parity --seeds 0 1 2 --dry-run
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

COSINE = ["train.lr_schedule=cosine"]
HALF = ["model.options.width=0.5"]  # the preset's width until section 16 (0.75 since)
# Section 13's runs: binarized input, float32, eager (what the preset trained then)
SECTION_13 = ["model.options.input_levels=[1]", "train.cpu_bf16=false", "train.compile=false", *COSINE, *HALF]
CODE = ["model.options.input_levels=[1,2,4,8]"]
LEVELS = [*CODE, *HALF]
WIDE = [*CODE, "model.options.width=0.75"]  # the preset since section 16
FULL = [*CODE, "model.options.width=1.0"]  # the paper's width (section 17)
FAST = ["train.cpu_bf16=true", "train.compile=true"]
EAGER = ["train.cpu_bf16=false", "train.compile=false"]
VARIANTS = {
    "dcnn": ["model.neuron=dcnn", "train.epochs=30", *SECTION_13],
    "expected": ["train.epochs=24", "train.sampled_share=0", *SECTION_13],
    "curriculum": ["train.epochs=30", "train.sampled_share=0.2", *SECTION_13],
    "lrt": ["train.epochs=30", "train.sampled_share=0.2", "train.forward=sampled-logit", *SECTION_13],
    "gnsm": ["model.neuron=gnsm", "train.epochs=30", "train.sampled_share=0.2", *SECTION_13],
    # section 14: the counts' thermometer code, float32 and eager, then in bfloat16 with compiled steps
    "levels": ["train.epochs=24", *LEVELS, *EAGER, *COSINE],
    "levels-dcnn": ["model.neuron=dcnn", "train.epochs=30", *LEVELS, *EAGER, *COSINE],
    "levels-bf16": ["train.epochs=24", *LEVELS, *FAST, *COSINE],
    "levels-bf16-dcnn": ["model.neuron=dcnn", "train.epochs=30", *LEVELS, *FAST, *COSINE],
    # section 15: the same code at width 0.75, with zooms, and gnsm
    "wide": ["train.epochs=24", *WIDE, *FAST, *COSINE],
    "wide-dcnn": ["model.neuron=dcnn", "train.epochs=30", *WIDE, *FAST, *COSINE],
    "zoom": ["train.epochs=24", "train.augment.scale=0.25", *LEVELS, *FAST, *COSINE],
    "zoom-dcnn": ["model.neuron=dcnn", "train.epochs=30", "train.augment.scale=0.25", *LEVELS, *FAST, *COSINE],
    "levels-gnsm": ["model.neuron=gnsm", "train.epochs=24", *LEVELS, *FAST, *COSINE],
    # section 17: the preset's recipe at full width
    "full": ["train.epochs=24", *FULL, *FAST, *COSINE],
    "full-dcnn": ["model.neuron=dcnn", "train.epochs=30", *FULL, *FAST, *COSINE],
    # section 18: the variance estimated over each receptive field (its twin is wide-dcnn)
    "window-mean": ["train.epochs=24", *WIDE, *FAST, *COSINE, "train.variance=window-mean"],
}
PRESET = "gestures-allconv18"
SAMPLES = 16
MEANS = ("accuracy", "nll", "ece", "gesture_accuracy")  # the Monte Carlo figures averaged over the seeds


def commands(variant: str, seed: int, args) -> tuple[Path, list[list[str]]]:
    """The run folder of (variant, seed) and the two ``nsm`` command lines that make and evaluate it."""
    run = args.out / f"{variant}-s{seed}"
    sets = [a for s in VARIANTS[variant] + [f"train.seed={seed}"] for a in ("--set", s)]
    common = ["--data", str(args.data), "--cache", str(args.cache), "--quiet"]
    nsm = [sys.executable, "-m", "pipelines.cli"]
    return run, [
        nsm + ["train", "--config", PRESET, "--out", str(run), *common, *sets],
        nsm + ["evaluate", "--checkpoint", str(run / "best.pt"), "--samples", str(SAMPLES), *common],
    ]


def row(name: str, m: dict) -> str:
    """One table row: accuracy, NLL and ECE of Monte Carlo (at T, at 1), one sample and the deterministic network."""
    raw = m.get("at_temperature_1", m)
    parts = [
        f"{m['accuracy']:.1%} / {m['single_sample']['accuracy']:.1%} / {m['deterministic']['accuracy']:.1%}",
        f"{m['nll']:.3f} ({raw['nll']:.3f}) / {m['single_sample']['nll']:.3f} / {m['deterministic']['nll']:.3f}",
        f"{m['ece']:.3f} ({raw['ece']:.3f}) / {m['single_sample']['ece']:.3f} / {m['deterministic']['ece']:.3f}",
        f"{m.get('gesture_accuracy', float('nan')):.1%}",
        f"{m.get('temperature', 1.0):.3f}",
    ]
    return f"| {name} | " + " | ".join(parts) + " |"


def table(results: dict[str, dict[int, dict]]) -> str:
    lines = [
        "| run | accuracy MC 16 / 1 sample / det. | NLL MC 16 (T 1) / 1 / det. | ECE MC 16 (T 1) / 1 / det. "
        "| per gesture | T |",
        "|---|---|---|---|---|---|",
    ]
    for variant, by_seed in results.items():
        for seed, m in sorted(by_seed.items()):
            lines.append(row(f"{variant}, seed {seed}", m))
        if len(by_seed) > 1:
            runs = list(by_seed.values())
            mean = {k: statistics.mean(m.get(k, float("nan")) for m in runs) for k in MEANS}
            lines.append(
                f"| {variant}, mean of {len(runs)} | {mean['accuracy']:.1%} | {mean['nll']:.3f} | {mean['ece']:.3f} "
                f"| {mean['gesture_accuracy']:.1%} | |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="a DVS-Gesture-style data folder (nsm simulate gestures)")
    p.add_argument("--cache", type=Path, required=True, help="frame cache folder")
    p.add_argument("--out", type=Path, required=True, help="folder of the run folders")
    p.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=["dcnn", "expected", "curriculum"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--dry-run", action="store_true", help="print the commands instead of running them")
    args = p.parse_args(argv)
    results: dict[str, dict[int, dict]] = {}
    for variant in args.variants:
        for seed in args.seeds:
            run, lines = commands(variant, seed, args)
            metrics = run / "metrics.json"
            for line in lines:
                if args.dry_run:
                    print(" ".join(line))
                elif not metrics.is_file():
                    subprocess.run(line, check=True)
            if metrics.is_file():
                results.setdefault(variant, {})[seed] = json.loads(metrics.read_text())
    if results:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
