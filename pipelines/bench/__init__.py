"""``nsm bench``: performance measured side by side in one run, printed as a Markdown table.

Every row times our implementation and a reference doing the same work in the same process,
interleaved round by round so that both see the same machine state; the ratio is the median of
the per-round ratios. Nothing here is asserted by tests: the numbers are for people to read.
"""

from .common import Row, interleaved, machine, to_markdown
from .compute import binning, mc_inference, preset_training, training
from .streaming import stream_allconvnet18, stream_checkpoint, stream_machinery, stream_memory, stream_tiny

SECTIONS = [
    mc_inference,
    training,
    preset_training,
    binning,
    stream_machinery,
    stream_allconvnet18,
    stream_tiny,
    stream_memory,
]
"""The benchmarks ``nsm bench`` runs, in order (``stream_checkpoint`` runs once per ``--checkpoint``)."""

__all__ = [
    "SECTIONS",
    "Row",
    "binning",
    "interleaved",
    "machine",
    "mc_inference",
    "preset_training",
    "stream_allconvnet18",
    "stream_checkpoint",
    "stream_machinery",
    "stream_memory",
    "stream_tiny",
    "to_markdown",
    "training",
]
