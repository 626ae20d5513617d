"""``nsm export``: write a checkpoint's binary network as a NIR spike graph, optionally quantized and checked."""

from __future__ import annotations

import argparse

from nsm.neurons import BINARY_KINDS

from ..export.check import CHECK_INPUT_BYTES, MAX_CHECK_SAMPLES
from ..export.forms import TARGETS
from ..export.quantize import MAX_BITS, MIN_BITS
from ..export.write import export_checkpoint
from ..runs import DEFAULT_CACHE
from . import InRange, add_seed


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export",
        help="write a trained binary network as a NIR spike graph",
        description="Write the deterministic network of a checkpoint in the {0,1} spike domain as a NIR graph "
        "(HDF5): binarized input, each binary unit layer as Conv2d/Affine + a memoryless LIF, "
        "max-pools as SumPool2d + an OR neuron, the readout as sum pool + Affine. NSM noise and beta "
        "are kept in node metadata so pipelines.export.runtime can run the stochastic network. Prints "
        "a target report (nodes, neurons, synapses, which importers accept the graph). Only binary "
        "neuron kinds export: " + ", ".join(BINARY_KINDS) + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (RUN/checkpoint.pt or RUN/best.pt)")
    p.add_argument(
        "--out",
        required=True,
        help="NIR file to write (written atomically; a regular file or a new path, never the checkpoint itself)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="read the file back, run it through the target's own importer (generic and norse: norse; snntorch; "
        "sinabs and speck: sinabs; spikingjelly; spyx) and compare its top class and logits with the deterministic "
        "PyTorch model (with --quantize-bits: exactly, with the quantized graph's reference runtime) on random event "
        "frames; a toolchain that is not installed is reported as not checked (exit status 1)",
    )
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="generic",
        help="the graph form to write: generic (one LIF per layer), norse and snntorch (float32-exact split "
        "synapses; snntorch with tau = 1e-4), sinabs (IF neurons), speck (integer IF, needs --quantize-bits), "
        "spikingjelly (IF neurons, dt = 1), spyx (memoryless LIF, dt = 1, channels-last dense layers as convolutions; "
        "feed the input for the graph's `steps` metadata steps)",
    )
    p.add_argument(
        "--importer-python",
        default=None,
        metavar="PYTHON",
        help="for --check: an interpreter whose environment holds the target's toolchain, used when it is not "
        "installed here (e.g. build/targets/sinabs/bin/python, .../spikingjelly/bin/python or .../spyx/bin/python from "
        "make check-targets); checked before the export "
        "runs, and an importer that exits without writing its outputs is reported as a check not run",
    )
    p.add_argument(
        "--check-samples",
        type=int,
        default=200,
        action=InRange,
        minimum=1,
        maximum=MAX_CHECK_SAMPLES,
        help=f"number of random inputs (with --data: the most test clips) for --check and --quantize-bits, at most "
        f"{MAX_CHECK_SAMPLES} and at most as many as fit in {CHECK_INPUT_BYTES >> 20} MiB as float32 frames of the "
        "network's input",
    )
    p.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help="for --check and --quantize-bits: use the first --check-samples clips of this data set's test split "
        "(binned as the run was) instead of random frames, and their labels for the quantization report",
    )
    p.add_argument("--cache", default=str(DEFAULT_CACHE), help="frame cache folder for --data")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--quantize-bits",
        type=int,
        default=None,
        action=InRange,
        minimum=MIN_BITS,
        maximum=MAX_BITS,
        metavar="N",
        help=f"write integer weights of N bits ({MIN_BITS}..{MAX_BITS}) and integer biases (unit thresholds -1/2, "
        "between two integer pre-activations: exact on any target) and report the accuracy change on the check "
        "inputs (labels: the float model's own predictions, or with --data the clips' labels)",
    )
    add_seed(p, "seed of the random check inputs")
    p.set_defaults(func=run)


def run(args) -> int:
    result = export_checkpoint(
        args.checkpoint,
        args.out,
        check=args.check,
        check_samples=args.check_samples,
        quantize_bits=args.quantize_bits,
        seed=args.seed,
        target=args.target,
        importer_python=args.importer_python,
        data=args.data,
        cache_dir=args.cache,
        progress=not args.quiet,
    )
    return 0 if result is None or result.ok else 1
