"""The spike graph's contract: the spike domain, the threshold rule and the metadata that ``graph`` writes and
``runtime``, ``quantize``, ``check`` and ``targets`` read (docs/design.md section 6); reading and writing NIR files.

Spike domain
------------
A binary unit reads states z in {-1, +1}; the graph reads spikes s = (z + 1) / 2 in {0, 1}. The
graph's input is the spike map of the ``Binarize`` layer: s = 1 where an (input channel, y, x) bin
holds at least one event, else 0, shape ``input_shape`` = (C, H, W), unbatched; with the model's
``input_levels`` l_1 < ... < l_L, L C channels, channel k C + c spiking where count channel c holds at least
l_(k+1) events (``graph.spike_input``; the graph's metadata ``input_levels`` and ``input_encoding`` say so).

With W', b' the unit's effective mean weights (``layer.effective_weight()``: W_eff = beta w/||w||,
b_eff = b / (sqrt(2) s ||w||) for NSM units, the (weight-normalized) weight and bias for bd/wbd) and
-1 padding in the model, every unit's logit is

    v = W' (*) z + b' = 2W' (*) s + (b' - sum W'),      sum over (C_in, kH, kW) per output unit,

with ordinary zero padding in the spike domain. The unit fires (z = +1) when v >= 0. A negative
beta needs no special case: it is already in W' (it flips the unit's sign). Written graph:

=================  ==================================================================================
model layer        NIR nodes
=================  ==================================================================================
Binarize           ``Input`` (C, H, W) of spikes
NSMConv2d,         ``Conv2d(weight=2W', bias=b' - sum W', zero padding)`` -> ``LIF`` (unit)
SignConv2d
NSMLinear,         ``Affine(weight=2W', bias=b' - sum W')`` -> ``LIF`` (unit)
SignLinear
BinaryMaxPool2d    ``SumPool2d`` -> ``LIF`` with threshold 0.5 (an OR of the window's spikes)
nn.Flatten         ``Flatten`` (start_dim shifted by one: NIR shapes have no batch dimension)
Readout            on maps: ``SumPool2d`` over the whole (H, W) -> ``Flatten`` -> ``Affine`` with
                   weight 2A/(H W) and bias a - sum_j A_j (average pool and spike domain folded in);
                   on vectors: ``Affine(2A, a - sum_j A_j)``. Then ``Output`` (class logits).
=================  ==================================================================================

Every LIF is memoryless: tau = dt = TAU, r = 1, v_leak = 0, v_reset = 0. One Euler step from rest,
v <- v + dt/tau (v_leak - v + r I), gives v = I exactly (TAU is a power of two, so dt/tau is exactly
1 in floating point). Importers must be run with ``dt = tau`` on one time step per input.

Threshold semantics
-------------------
NIR's LIF and norse 1.1.0 (``heaviside``: ``x > 0``) fire when v > v_threshold (strict); the NSM
unit fires when v >= 0 (non-strict, sgn(0) = +1). The export relies on the strict rule and sets
every unit's threshold to ``-MARGIN`` with MARGIN = the smallest normal float32 (about 1.2e-38): a
float32 pre-activation p satisfies p > -MARGIN exactly when p >= 0 (subnormal negatives, which
flush-to-zero hardware reads as 0, count as 0). So the graph applies the NSM's own non-strict rule
to its float32 pre-activation, and exact ties (v = 0, e.g. a unit with zero weights and bias, or
cancelling weights with the untrained zero bias) fire as in PyTorch.

Why no larger margin: for +-1/{0,1} inputs the achievable pre-activations of a unit are the 2^fan-in
sums 2W'.s + c; the smallest gap between them and 0 is a subset-sum question, and for float weights
it is typically of the order of rounding itself (on an untrained allconvnet18, width 0.25, a margin
of 4e-6 already flips units that the model leaves silent, and the deterministic network amplifies
one flipped unit into a different class). Nothing larger than the rounding error is provably safe.

Precision: export computes on a float64 copy of the model and writes float64 weights and biases,
so the file holds 2W' and b' - sum W' without rounding; ``pipelines.export.runtime`` runs in float64
and reproduces the model's deterministic logits exactly. norse 1.1.0's importer casts every tensor
to float32, so through norse a unit can still flip where its exact pre-activation lies within
float32 rounding of 0 (|v| below about n u sum|W'|, n the fan-in, u = 2^-24). Measured on the
full-size untrained allconvnet18 (6x64x64, 200 check inputs): top class equal on 200/200, logits
different on 2 inputs; trained networks keep their units farther from threshold. ``--check``
measures the agreement.

With integer weights (``--quantize-bits``, ``pipelines.export.quantize``) the gap is provable: the
pre-activations are integers and the threshold sits at -1/2, halfway between two of them, so the
graph is exact and strict and non-strict targets agree.

Metadata
--------
NIR metadata is flat (strings, numbers, arrays); structured values are JSON strings. Graph:
``format``, ``model``, ``model_spec``, ``classes``, ``frame_spec``, ``project_version``,
``input_encoding``, ``input_levels`` (JSON list of event counts), ``threshold_rule``, ``dt``. Unit LIF nodes:
``role`` ("unit"), ``layer``
(module name in the model), ``neuron`` (kind), ``mode`` ("probability" for units that sample,
"deterministic" otherwise), ``noise`` (JSON of ``Noise.to_dict()``, "" for bd/wbd), ``beta`` (C,),
``logit_offset`` and ``logit_scale`` (C,): the ±1-domain logit of a unit is
v = (I + logit_offset) / logit_scale for the LIF's input current I (0 and 1 for float graphs), and a
sampling unit fires with P = 1/2 (1 + erf(v)) (``pipelines.export.runtime``). Pool LIFs: role "or".
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import nir
import numpy as np

from events import h5attrs
from events.atomic import atomic_file, remove_dead_temps
from events.errors import InputError, MissingInputError

TAU = 2.0**-10
"""Time constant and time step (s, about 1 ms) of the memoryless neurons; import with ``dt = TAU``."""

FORMAT = "nsm-events-spike-graph"
MARGIN = float(np.finfo(np.float32).tiny)
"""Unit thresholds are -MARGIN: p > -MARGIN <=> p >= 0 for float32 p, and for float64 p
up to negatives within 1.2e-38 of 0 (module docstring)."""
OR_THRESHOLD = 0.5


class ExportError(InputError):
    """The network cannot be written as a binary spike graph (the message names the layer)."""


def decode_metadata(metadata: dict) -> dict:
    """Metadata as written by ``to_nir``, with HDF5's bytes turned back into str and JSON fields parsed."""
    out = {}
    for key, value in metadata.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "SO" and value.ndim == 0:
            value = value.item()
        if isinstance(value, bytes):
            value = value.decode("utf8")
        if isinstance(value, np.generic):
            value = value.item()
        if key in ("model_spec", "classes", "frame_spec", "input_levels", "noise") and isinstance(value, str):
            value = json.loads(value) if value else None
        out[key] = value
    return out


def write_nir(graph: nir.NIRGraph, path) -> Path:
    """``nir.write`` into memory, then those bytes to ``path`` atomically (``events.atomic.atomic_file``: a
    refused write, e.g. a full disk, is an ``OutputError`` naming ``path``, where HDF5 writing to the disk itself
    can crash the process). First removes the temporary files that exports to ``path`` killed mid-write left
    (``events.atomic.remove_dead_temps``)."""
    path = Path(path)
    remove_dead_temps(path.parent, path.name)
    buffer = io.BytesIO()
    nir.write(buffer, graph)
    with atomic_file(path) as f:
        f.write(buffer.getbuffer())
    return path


_NIR_READER = "import sys, nir\nnir.read(sys.argv[1])\n"


def read_nir(path) -> nir.NIRGraph:
    """``nir.read`` with a clear error for missing or unreadable files. NIR keeps its strings in the HDF5 file's global
    heap, on some damages of which libhdf5 (2.0.0) loops forever or crashes, so a child interpreter reads the file
    first (``events.h5attrs.read_in_child``): one that runs out of time or is killed by a signal is an
    ``InputError`` naming the file, and only a file it could read or whose error it raised is read here."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such NIR file")
    child = h5attrs.read_in_child(_NIR_READER, path)
    if child is None:
        raise InputError(
            f"{path}: not a readable NIR graph (reading it did not finish within {h5attrs.HEAP_READ_TIMEOUT_S:g} s: "
            f"the HDF5 global heap that holds its strings is damaged)"
        )
    if child.returncode < 0:
        raise InputError(
            f"{path}: not a readable NIR graph (reading it killed the reader with signal {-child.returncode})"
        )
    try:
        return nir.read(path)
    except Exception as err:  # h5py and nir raise several types for foreign or damaged files
        raise InputError(f"{path}: not a readable NIR graph ({type(err).__name__}: {err})") from None
