"""``make check-targets``: every export target's ``--check`` on a trained ``tiny``, an untrained allconvnet18 and an
untrained specknet.

    python -m pipelines.export.check_targets --out build/targets/runs \
        --importer-python sinabs=build/targets/sinabs/bin/python \
        --importer-python spikingjelly=build/targets/spikingjelly/bin/python \
        --importer-python spyx=build/targets/spyx/bin/python

Simulates a small gesture set, trains ``tiny`` on it (CPU, a few epochs), builds untrained full-size allconvnet18s
(6 x 64 x 64, torch seeds ``--seeds``, default 0) and an untrained specknet (6 x 32 x 32 in the four-level input
code of ``gestures-speck``), then exports each in every form, float and ``--quantize-bits 8``; the speck form only
8-bit and only for the Speck-sized network (``SPECK_SIZED``: the others do not fit the chip, which their reports
say), with ``--check`` on ``--samples`` inputs; a toolchain missing here runs under the interpreter
``--importer-python TOOLCHAIN=PYTHON`` names for it (or under a plain ``--importer-python PYTHON``, for every
toolchain not named). Prints one line per export and exits 1 if any check did not pass (a toolchain that was not
run counts as not passed), except the ``generic`` form's, which is run as the control: its float32 threshold flips
are reported, not failed on.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from events.types import SEED_MAX

from .check import TARGET_TOOLCHAIN
from .forms import TARGETS
from .importers import IMPORTER_TOOLCHAINS
from .write import export_checkpoint


def interpreters(values: list[str] | None) -> dict[str | None, str]:
    """``--importer-python`` values as {toolchain: interpreter}; a plain ``PYTHON`` is the default (key None).
    ``SystemExit`` naming the option for a toolchain that ``importers`` does not know, or an empty interpreter."""
    out: dict[str | None, str] = {}
    for value in values or []:
        name, sep, python = value.partition("=")
        if sep and name in IMPORTER_TOOLCHAINS:
            key = name
        elif sep and os.sep not in name:
            raise SystemExit(
                f"--importer-python {value}: no toolchain {name!r}; choose one of {', '.join(IMPORTER_TOOLCHAINS)}"
            )
        else:
            key, python = None, value
        if not python:
            raise SystemExit(f"--importer-python {value}: no interpreter given")
        out[key] = python
    return out


def _listed(parser, option: str, value: str, choices) -> list[str]:
    """The comma-separated names of ``value``; the parser's one-line error for a name not in ``choices``."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown or not names:
        parser.error(f"{option} {value}: choose from {', '.join(choices)} (got {', '.join(unknown) or 'none'})")
    return names


def _tiny(out: Path, epochs: int) -> Path:
    import events
    from pipelines import config as configs
    from pipelines.training import train

    data, cache, run = out / "gestures", out / "cache", out / "tiny"
    if not (run / "best.pt").exists():
        events.simulate_gestures(data, seed=0, users=4, per_class=1, progress=False)
        cfg = configs.load_config("tiny", [f"train.epochs={epochs}", "train.workers=0", "train.device=cpu"])
        for split in (True, False):
            events.FrameCache(cache).get(events.DVSGesture(data, train=split), cfg.data.frame_spec(), progress=False)
        train(cfg, data, run, cache_dir=cache, progress=False)
    return run / "best.pt"


MODELS = ("tiny", "allconvnet18", "specknet")
SPECK_SIZED = "specknet (untrained)"
"""The one network the speck form is checked on: it fits Speck's cores by the report's rules."""


def _untrained(out: Path, name: str, seed: int, **options) -> Path:
    """An untrained ``name`` (``models.create_model``, torch seed ``seed``) saved as a checkpoint under ``out``."""
    import models
    from pipelines.checkpoint import save_checkpoint

    path = out / (f"{name}-untrained.pt" if seed == 0 else f"{name}-untrained-s{seed}.pt")
    if not path.exists():
        torch.manual_seed(seed)
        model = models.create_model(name, **options)
        save_checkpoint(path, model, classes=[f"class{i}" for i in range(model.spec["num_classes"])])
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.export.check_targets", description=__doc__.split("\n")[0])
    p.add_argument("--out", default="build/targets/runs")
    p.add_argument(
        "--importer-python",
        action="append",
        metavar="[TOOLCHAIN=]PYTHON",
        help="the interpreter of a venv that holds TOOLCHAIN (repeatable; without TOOLCHAIN=, every other toolchain)",
    )
    p.add_argument("--samples", type=int, default=200)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument(
        "--models", default=",".join(MODELS), help=f"which of {', '.join(MODELS)} to export (comma-separated)"
    )
    p.add_argument("--seeds", default="0", help="torch seeds of the untrained allconvnet18s, e.g. 0,1,2,3,4")
    args = p.parse_args(argv)
    wanted, targets = _listed(p, "--models", args.models, MODELS), _listed(p, "--targets", args.targets, TARGETS)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        seeds = [-1]
    if any(not 0 <= s <= SEED_MAX for s in seeds):
        p.error(f"--seeds {args.seeds}: give whole numbers 0..{SEED_MAX} separated by commas, e.g. 0,1,2")
    pythons = interpreters(args.importer_python)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = {}
    if "tiny" in wanted:
        checkpoints["tiny (trained)"] = _tiny(out, args.epochs)
    if "allconvnet18" in wanted:
        for seed in seeds:
            checkpoints[f"allconvnet18 (untrained, seed {seed})"] = _untrained(out, "allconvnet18", seed)
    if "specknet" in wanted:
        checkpoints[SPECK_SIZED] = _untrained(out, "specknet", 0, input_levels=[1, 2, 4, 8])
    rows = []
    for label, ck in checkpoints.items():
        for target in targets:
            for bits in (None, 8):
                if target == "speck" and (bits is None or label != SPECK_SIZED):
                    continue
                name = f"{ck.stem}-{target}{'-q8' if bits else ''}.nir"
                print(f"== {label}, target {target}, {'8-bit' if bits else 'float'}", flush=True)
                result = export_checkpoint(
                    ck,
                    out / name,
                    check=True,
                    check_samples=args.samples,
                    quantize_bits=bits,
                    target=target,
                    importer_python=pythons.get(TARGET_TOOLCHAIN.get(target), pythons.get(None)),
                )
                rows.append((label, target, bits, result))
    print("\nsummary:")
    for label, target, bits, result in rows:
        print(f"  {label:<34} {target:<12} {'8-bit' if bits else 'float':<6} {result}")
    return 0 if all(r.ok for _, target, _, r in rows if target != "generic") else 1


if __name__ == "__main__":
    sys.exit(main())
