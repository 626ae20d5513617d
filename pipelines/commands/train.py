"""``nsm train``: train a network on event data (``pipelines.training``)."""

from __future__ import annotations

import argparse

from events.atomic import check_output
from events.errors import InputError

from .. import config as configs
from ..runs import DEFAULT_CACHE, RunFolder
from ..training import trainer as training
from . import InRange


def add_parser(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a network on event data (resumable; torchrun for many GPUs)",
        description=training.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--config",
        default=None,
        help=f"preset name ({', '.join(configs.list_presets())}) or a TOML file; "
        "with --resume the run's own config.toml is used",
    )
    p.add_argument("--data", required=True, help="data set folder (DVS Gesture or N-MNIST layout; see README)")
    p.add_argument("--out", required=True, help="run folder to create (or to continue with --resume)")
    p.add_argument(
        "--epochs",
        type=int,
        action=InRange,
        minimum=1,
        help="number of epochs, >= 1 (overrides train.epochs; extends a resumed run)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one configuration key, e.g. --set train.lr=1e-3 --set model.neuron=gnsm",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint.pt")
    p.add_argument(
        "--init-from",
        metavar="CK",
        help="start a fresh run from the weights of a trained run of the same architecture with another "
        "neuron kind, e.g. RUN/best.pt of a dcnn run (the NSM paper's recipe: train a ReLU network, "
        "copy its weight directions into the NSM, fine-tune); prints what was mapped; not with "
        "--resume",
    )
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help=f"frame cache folder (default: {DEFAULT_CACHE})")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.resume:
        if args.set:
            raise InputError("--set cannot change a resumed run; its configuration is in its config.toml")
        cfg = configs.Config()  # replaced by the run's own configuration
    else:
        if args.config is None:
            raise InputError(f"--config is required (a preset: {', '.join(configs.list_presets())}, or a TOML file)")
        cfg = configs.load_config(args.config, args.set)
        # a fresh run writes these files: none may be the configuration file or the warm start's checkpoint
        for path in RunFolder(args.out).files:
            check_output(path, {"--config": args.config, "--init-from": args.init_from})
    training.train(
        cfg,
        args.data,
        args.out,
        cache_dir=args.cache,
        resume=args.resume,
        epochs=args.epochs,
        progress=not args.quiet,
        init_from=args.init_from,
    )
    return 0
