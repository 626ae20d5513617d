"""``nsm compare``: the seed's "Comparison with Other Training Methods", on your data.

Trains one preset with each neuron kind (``bnsm, gnsm, dcnn, ste, bd, wbd, sn, bn`` by default:
docs/design.md section 4) on the same data and seed, each for its own epochs (``train.kind_epochs``: the epochs it
needs to converge where the preset states them), evaluates each on the test split with adaptive
Monte Carlo sampling, and writes a Markdown table (epochs, error %, ECE, NLL, mean MC samples, training
time) to ``OUT/comparison.md`` (numbers also in ``OUT/comparison.json``). Each kind trains in its
own run folder ``OUT/runs/<kind>/``; a finished run is reused and an interrupted one resumed, so
the command can be re-run after a crash. ``nsm analyze --run OUT`` then draws the
weight-normalization figures from the same runs.
"""

from __future__ import annotations

import json
from pathlib import Path

from events.atomic import write_text_atomic
from events.errors import InputError
from nsm.neurons import NEURON_KINDS

from . import config as configs
from .checkpoint import load_checkpoint
from .evaluate import evaluate
from .runs import DEFAULT_CACHE, RunFolder, read_records
from .training import train


def train_kind(cfg: configs.Config, kind: str, data_root, run: Path, cache_dir, progress: bool) -> configs.Config:
    """Train ``cfg`` with ``kind`` units (``Config.with_neuron``) into ``run``: reuse a finished run, resume an
    interrupted one. Returns the kind's configuration."""
    cfg = cfg.with_neuron(kind)
    checkpoint = RunFolder(run).checkpoint
    done = load_checkpoint(checkpoint).epoch if checkpoint.is_file() else None
    if done is not None and done >= cfg.train.epochs:
        print(f"{kind}: reusing the finished run in {run}", flush=True)
        return cfg
    if done is not None:
        print(f"{kind}: resuming {run} after epoch {done}", flush=True)
    train(cfg, data_root, run, cache_dir=cache_dir, resume=done is not None, progress=progress)
    return cfg


def table(rows: list[dict]) -> str:
    lines = [
        "| neuron | epochs | error % | ECE | NLL | mean MC samples | training time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['neuron']} | {r['epochs']} | {100 * (1 - r['accuracy']):.2f} | {r['ece']:.3f} | {r['nll']:.3f} "
            f"| {r['mean_samples']:.1f} | {r['train_seconds']:.0f} |"
        )
    return "\n".join(lines)


def compare(
    cfg: configs.Config, data_root, out, kinds=NEURON_KINDS, *, cache_dir=DEFAULT_CACHE, progress: bool = True
) -> list[dict]:
    """Train and evaluate ``cfg`` with every kind in ``kinds``; write comparison.md and comparison.json."""
    unknown = [k for k in kinds if k not in NEURON_KINDS]
    if unknown:
        raise InputError(f"unknown neuron kind(s) {unknown}; choose from {', '.join(NEURON_KINDS)}")
    out = Path(out)
    rows = []
    for kind in kinds:
        run = RunFolder(out / "runs" / kind)
        epochs = train_kind(cfg, kind, data_root, run.out, cache_dir, progress).train.epochs
        m = evaluate(run.best, data_root, run.out, adaptive=True, cache_dir=cache_dir, progress=progress)
        seconds = sum(r.get("seconds", 0.0) for r in read_records(run.metrics))
        rows.append(
            {
                "neuron": kind,
                "epochs": epochs,
                "accuracy": m["accuracy"],
                "ece": m["ece"],
                "nll": m["nll"],
                "mean_samples": m["mean_samples"],
                "train_seconds": seconds,
                "gesture_accuracy": m.get("gesture_accuracy"),
                "run": str(run.out),
            }
        )
        print(
            f"{kind}: error {100 * (1 - m['accuracy']):.2f} %, ECE {m['ece']:.3f}, NLL {m['nll']:.3f}, "
            f"{m['mean_samples']:.1f} samples, trained in {seconds:.0f} s",
            flush=True,
        )
    heading = (
        f"Comparison of training methods: preset `{cfg.name}`, each kind for its epochs (train.kind_epochs), seed "
        f"{cfg.train.seed}, test split of {data_root}; adaptive MC (threshold {cfg.eval.threshold:g}, "
        f"at most {cfg.eval.max_samples} samples). Error % is per item (clip or sample)."
    )
    write_text_atomic(out / "comparison.md", f"{heading}\n\n{table(rows)}\n")
    write_text_atomic(out / "comparison.json", json.dumps({"config": cfg.to_dict(), "rows": rows}, indent=2) + "\n")
    return rows
