"""NIR export of binary spike networks (docs/design.md section 6).

``metadata``: the graph's contract (spike domain, threshold rule, metadata) and NIR file I/O; ``layout``: rewrites
that keep the network for importers that would compute it differently (dense layers on maps as convolutions, sum
pools as convolutions); ``forms``: the graph each target's importer runs exactly (``target_form``); ``graph``: the
network as a graph (``to_nir``); ``runtime``: runs a graph without the checkpoint, deterministically or sampling;
``quantize``: integer weights; ``importers``: norse, snnTorch, sinabs, SpikingJelly and Spyx run a file (also as a
script under another interpreter); ``check``: agreement of a target's import with the model; ``targets``: the
report of what was verified, checked by rule or is not a target; ``write``: a checkpoint exported (what ``nsm
export`` runs). Each module imports only ``metadata`` and the
modules before it in this list. The ``nsm export`` command is ``pipelines.commands.export``."""

from .check import (
    TARGET_TOOLCHAIN,
    CheckResult,
    check_file,
    check_inputs,
    compare_logits,
    deterministic_logits,
    norse_logits,
    norse_module,
)
from .forms import TARGETS, is_integer_graph, target_form
from .graph import as_float64, spike_input, to_nir
from .metadata import MARGIN, TAU, ExportError, decode_metadata, read_nir, write_nir
from .quantize import INTEGER_THRESHOLD, QuantizationReport, quantization_report, quantize
from .runtime import NIRRuntime
from .targets import IMPORTERS, speck_memory, speck_violations, target_report
from .write import export_checkpoint

__all__ = [
    "CheckResult",
    "TARGETS",
    "TARGET_TOOLCHAIN",
    "check_file",
    "is_integer_graph",
    "speck_memory",
    "speck_violations",
    "target_form",
    "ExportError",
    "IMPORTERS",
    "INTEGER_THRESHOLD",
    "MARGIN",
    "NIRRuntime",
    "QuantizationReport",
    "TAU",
    "as_float64",
    "check_inputs",
    "compare_logits",
    "decode_metadata",
    "deterministic_logits",
    "export_checkpoint",
    "norse_logits",
    "norse_module",
    "quantization_report",
    "quantize",
    "read_nir",
    "target_report",
    "spike_input",
    "to_nir",
    "write_nir",
]
