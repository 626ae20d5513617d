"""``nsm compare``: one preset trained and evaluated with every neuron kind (``pipelines.compare``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from events.atomic import check_output
from nsm.neurons import NEURON_KINDS

from .. import compare as comparison
from .. import config as configs
from ..runs import DEFAULT_CACHE, RunFolder
from . import InRange


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="train one preset with every neuron kind and tabulate error, ECE, NLL",
        description=comparison.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, help=f"preset ({', '.join(configs.list_presets())}) or TOML file")
    p.add_argument("--data", required=True, help="data set folder")
    p.add_argument("--out", required=True, help="output folder (runs/<kind>/, comparison.md, comparison.json)")
    p.add_argument(
        "--neurons",
        default=",".join(NEURON_KINDS),
        help=f"comma-separated neuron kinds (default: {','.join(NEURON_KINDS)})",
    )
    p.add_argument(
        "--epochs", type=int, action=InRange, minimum=1, help="epochs per run, >= 1 (overrides train.epochs)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a configuration key")
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"frame cache folder (default: {DEFAULT_CACHE})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    overrides = list(args.set) + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    cfg = configs.load_config(args.config, overrides)
    kinds = [k.strip() for k in args.neurons.split(",") if k.strip()]
    out = Path(args.out)
    written = [out / "comparison.md", out / "comparison.json"]
    written += [path for kind in kinds for path in RunFolder(out / "runs" / kind).files]
    for path in written:  # none may be the configuration file the comparison reads
        check_output(path, {"--config": args.config})
    rows = comparison.compare(cfg, args.data, args.out, kinds, cache_dir=args.cache, progress=not args.quiet)
    print()
    print(comparison.table(rows))
    print(
        f"\nwrote {Path(args.out) / 'comparison.md'}; figures: nsm analyze --run {args.out} --out {args.out}/analysis"
    )
    return 0
