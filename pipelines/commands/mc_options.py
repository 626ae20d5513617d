"""The Monte Carlo options of a subcommand (``nsm evaluate``, ``nsm stream``): ``--samples K | --adaptive``,
``--threshold``, ``--min-samples``, ``--max-samples`` and ``--precision``. Each changes one field of the settings the
command starts from (``nsm.MCSettings.overridden``: ``--samples`` makes them fixed, a ``--max-samples`` below the
minimum lowers it); its help states the default that applies without it and where that comes from."""

from __future__ import annotations

import argparse

from nsm.sampling import MAX_SAMPLES, PRECISIONS, MCSettings

from . import InRange

OPTIONS = ("samples", "adaptive", "threshold", "min_samples", "max_samples", "precision")
"""The ``MCSettings`` fields the options set, each under its own name in the parsed arguments."""

RUN_EVAL = "the run's eval.{field}, {value} unless its configuration sets another"
"""``origin`` of a command whose settings are a run's ``eval`` settings (``pipelines.config.EvalConfig``)."""


def _shown(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def add_mc_options(parser: argparse.ArgumentParser, defaults: MCSettings, origin: str) -> None:
    """Add the Monte Carlo options to ``parser``, each ``None`` when not given (:func:`mc_choices`). Each help ends in
    ``(default: ORIGIN)``, ``origin`` formatted with the option's ``field`` (its ``MCSettings`` field) and ``value``
    (``defaults``' value of it, as a configuration writes it): e.g. :data:`RUN_EVAL`, or ``"{value}, the stream's"``.
    """

    def default(field: str) -> str:
        return "(default: " + origin.format(field=field, value=_shown(getattr(defaults, field))) + ")"

    count = dict(type=int, action=InRange, minimum=1, maximum=MAX_SAMPLES)
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--samples",
        **count,
        metavar="K",
        help=f"fixed number of Monte Carlo passes K per input, at most {MAX_SAMPLES} {default('samples')}",
    )
    how.add_argument(
        "--adaptive",
        action="store_true",
        default=None,
        help="adaptive sampling per input: stop once the running mean's top probability reaches --threshold "
        f"{default('adaptive')}",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        action=InRange,
        minimum=0,
        maximum=1,
        open_min=True,
        metavar="P",
        help=f"adaptive: stop once the top probability reaches this, in (0, 1] {default('threshold')}",
    )
    parser.add_argument(
        "--min-samples",
        **count,
        metavar="N",
        help=f"adaptive: fewest passes, at most {MAX_SAMPLES} {default('min_samples')}",
    )
    parser.add_argument(
        "--max-samples",
        **count,
        metavar="N",
        help=f"adaptive: most passes, at most {MAX_SAMPLES}, lowering the fewest to it when below them "
        f"{default('max_samples')}",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="float32; bfloat16: the passes' products rounded to bfloat16 under autocast (the +-1 states exact, "
        "probabilities float32), several times faster on CPUs with AMX or AVX-512 BF16 and on GPUs; int8 (CPU only): "
        "the states passed between layers as 1-byte spikes and multiplied by int8 weights (each unit's rounded to 127 "
        "levels of its largest), faster again on CPUs with AMX or AVX-512 VNNI. The accuracy each costs is measured "
        f"in docs/training-study.md, sections 14 and 20 {default('precision')}",
    )


def mc_choices(args: argparse.Namespace) -> dict:
    """The Monte Carlo options of parsed ``args`` by ``MCSettings`` field, ``None`` where not given: what
    ``MCSettings.overridden`` changes in the settings a command starts from."""
    return {field: getattr(args, field) for field in OPTIONS}
