"""Integer weights for targets that need them: n-bit quantization of an exported spike graph.

Each unit layer's spike-domain weights W_s = 2W' and bias c = b' - sum W' (``graph``) are
scaled per output unit and rounded:

    k_i = Q / max_j |W_s,ij|   (Q = 2^(bits-1) - 1; k_i = Q / |c_i| for a unit with all-zero weights)
    q_ij = round(k_i W_s,ij) in [-Q, Q],        c_q,i = round(k_i c_i)

A positive per-unit scale does not change the sign of a unit's pre-activation, so this costs nothing
beyond the rounding. A graph exported from a network on an n-bit weight grid (``nsm.grid``: quantization-aware
training) is kept as it is: where the power-of-two scales of ``nsm.grid.power_of_two_scale`` make every weight
and bias of a layer (or of the readout) an integer within the bounds, those scales are used, so the integers are
the ones the network computed with and its deterministic outputs are the graph's exactly.
Pre-activations q.s + c_q are then integers and the unit LIF's threshold is -1/2:
halfway between two achievable values, so the strict (v > theta) and non-strict (v >= theta) rules
agree and float32 evaluation is exact while |q.s + c_q| < 2^24 (checked). Biases are integers on the
same scale; a target that takes integer thresholds uses theta_i = -c_q,i with the non-strict rule (or
-c_q,i - 1 with the strict rule) and no bias; ``QuantizationReport.bias_bits`` gives the width they need.
Targets whose biases have a width of their own (DYNAP-CNN: 8 bits, like its weights) pass ``bias_limit`` B: then

    k_i = min(Q / max_j |W_s,ij|, B / |c_i|)

so that |c_q,i| <= B; a unit whose |c_i| is large against its weights then keeps fewer weight levels
(``QuantizationReport`` measures what that costs).
The readout Affine is quantized with one scale k for all classes (argmax and, after dividing by k,
the logits are preserved up to rounding); k is stored as the readout's ``output_scale`` metadata.
Each unit's ``logit_scale`` metadata becomes k_i, so ``pipelines.export.runtime`` still recovers the
±1-domain logit v = I / k_i for stochastic runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import nir
import numpy as np
import torch

from events.errors import InputError
from nsm.grid import MAX_BITS, MIN_BITS, power_of_two_scale

from .metadata import decode_metadata
from .runtime import NIRRuntime

INTEGER_THRESHOLD = -0.5
_EXACT_LIMIT = 2**24  # integers up to this magnitude are exact in float32


def _per_unit_scale(w: np.ndarray, c: np.ndarray, q: int, bias_limit: int | None = None) -> np.ndarray:
    """k_i = q / max_j |w_ij|; for all-zero weights q / |c_i| (the unit keeps its constant sign), else 1; with
    ``bias_limit`` B also at most B / |c_i|."""
    wmax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1).astype(np.float64)
    cabs = np.abs(c.astype(np.float64))
    ref = np.where(wmax > 0, wmax, cabs)
    k = np.where(ref > 0, q / np.where(ref > 0, ref, 1.0), 1.0)
    if bias_limit is not None:
        k = np.where(cabs > 0, np.minimum(k, bias_limit / np.where(cabs > 0, cabs, 1.0)), k)
    return k


def _grid_scale(w: np.ndarray, c: np.ndarray, q: int, bias_limit: int | None) -> np.ndarray | None:
    """The power-of-two scales of ``nsm.grid`` per row of ``w`` when they make every weight and bias an integer
    (a graph on a weight grid, module docstring), else None."""
    k = power_of_two_scale(
        torch.from_numpy(np.asarray(w, np.float64)), torch.from_numpy(np.asarray(c, np.float64)), q, bias_limit
    ).numpy()
    scaled_w = w.astype(np.float64) * k.reshape((-1,) + (1,) * (w.ndim - 1))
    scaled_c = c.astype(np.float64) * k
    if np.array_equal(scaled_w, np.rint(scaled_w)) and np.array_equal(scaled_c, np.rint(scaled_c)):
        return k
    return None


def _scaled(weight: np.ndarray, bias: np.ndarray, k: np.ndarray):
    shape = (-1,) + (1,) * (weight.ndim - 1)
    q = np.rint(weight.astype(np.float64) * k.reshape(shape)).astype(np.float32)
    c = np.rint(bias.astype(np.float64) * k).astype(np.float32)
    return q, c


def _with(node, **changes):
    """A copy of ``node`` with some fields replaced (metadata merged)."""
    meta = dict(node.metadata or {})
    meta.update(changes.pop("metadata", {}))
    if isinstance(node, nir.Conv2d):
        return nir.Conv2d(
            input_shape=node.input_shape,
            weight=changes.get("weight", node.weight),
            stride=node.stride,
            padding=node.padding,
            dilation=node.dilation,
            groups=node.groups,
            bias=changes.get("bias", node.bias),
            metadata=meta,
        )
    if isinstance(node, nir.Affine):
        return nir.Affine(weight=changes.get("weight", node.weight), bias=changes.get("bias", node.bias), metadata=meta)
    if isinstance(node, nir.LIF):
        theta = changes.get("v_threshold", node.v_threshold)
        return nir.LIF(
            tau=node.tau, r=node.r, v_leak=node.v_leak, v_threshold=theta, v_reset=node.v_reset, metadata=meta
        )
    raise TypeError(type(node).__name__)


def quantize(graph: nir.NIRGraph, bits: int, bias_limit: int | None = None) -> nir.NIRGraph:
    """A copy of ``graph`` (from ``pipelines.export.to_nir``) with ``bits``-bit integer weights (module docstring);
    ``bias_limit``: the largest |integer unit bias| allowed (``None``: no bound of its own).

    Raises ``ValueError`` for bits outside MIN_BITS..MAX_BITS (2..16), a ``bias_limit`` below 1, for graphs not
    written by the export, and when an integer pre-activation could exceed 2^24 (float32 would no longer add it
    exactly).
    """
    if not MIN_BITS <= int(bits) <= MAX_BITS:
        raise InputError(f"quantization needs {MIN_BITS} <= bits <= {MAX_BITS} (got {bits})")
    if bias_limit is not None and int(bias_limit) < 1:
        raise InputError(f"quantization needs a bias limit >= 1 (got {bias_limit})")
    q = 2 ** (int(bits) - 1) - 1
    runtime = NIRRuntime(graph)  # validates the chain and gives the order
    order = runtime.order
    nodes = dict(graph.nodes)
    for pre, post in zip(order[:-1], order[1:]):
        syn, unit = graph.nodes[pre], graph.nodes[post]
        unit_meta = decode_metadata(unit.metadata or {})
        if isinstance(unit, nir.LIF) and unit_meta.get("role") == "unit":
            if not isinstance(syn, (nir.Conv2d, nir.Affine)):
                raise InputError(f"unit {post!r} is fed by {type(syn).__name__}, not Conv2d/Affine")
            k = _grid_scale(syn.weight, syn.bias, q, bias_limit)
            k = _per_unit_scale(syn.weight, syn.bias, q, bias_limit) if k is None else k
            w, c = _scaled(syn.weight, syn.bias, k)
            bound = float(np.abs(w.reshape(w.shape[0], -1)).sum(axis=1).max() + np.abs(c).max())
            if bound >= _EXACT_LIMIT:
                raise InputError(
                    f"layer {unit_meta.get('layer')}: {bits}-bit pre-activations reach {bound:.3g} "
                    f">= 2^24, beyond exact float32 integers; use fewer bits"
                )
            nodes[pre] = _with(syn, weight=w, bias=c, metadata={"quantized_bits": int(bits)})
            nodes[post] = _with(
                unit,
                v_threshold=np.full_like(unit.v_threshold, INTEGER_THRESHOLD),
                metadata={"logit_scale": k.astype(np.float32), "logit_offset": np.zeros_like(k, dtype=np.float32)},
            )
        elif isinstance(syn, nir.Affine) and decode_metadata(syn.metadata or {}).get("role") == "readout":
            wmax = float(np.abs(syn.weight).max())
            k = q / wmax if wmax > 0 else 1.0
            grid = _grid_scale(syn.weight.reshape(1, -1), np.zeros(1), q, None)  # one scale for every class
            if grid is not None and np.array_equal(syn.bias * grid[0], np.rint(syn.bias * grid[0])):
                k = float(grid[0])
            w, c = _scaled(syn.weight, syn.bias, np.full(syn.weight.shape[0], k))
            nodes[pre] = _with(syn, weight=w, bias=c, metadata={"output_scale": float(k), "quantized_bits": int(bits)})
    meta = dict(graph.metadata or {})
    meta["quantized_bits"] = int(bits)
    meta["threshold_rule"] = "integer pre-activations; unit thresholds -1/2 (strict and non-strict rules agree)"
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=meta)


def _signed_bits(values: np.ndarray) -> int:
    m = float(np.abs(values).max()) if values.size else 0.0
    return int(math.ceil(math.log2(m + 1))) + 1


@dataclass
class QuantizationReport:
    """Deterministic accuracy on (inputs, labels) before and after quantization, and their agreement."""

    bits: int
    n: int
    accuracy_before: float
    accuracy_after: float
    agreement: float
    bias_bits: int  # the width the unit layers' integer biases need (the readout's are the host's)
    label_source: str = "labels"

    def __str__(self) -> str:
        return (
            f"quantization to {self.bits}-bit weights ({self.bias_bits}-bit biases/thresholds) on {self.n} "
            f"inputs (labels: {self.label_source}): accuracy {100 * self.accuracy_before:.2f}% -> "
            f"{100 * self.accuracy_after:.2f}% ({100 * (self.accuracy_after - self.accuracy_before):+.2f} "
            f"points), top class agreement {100 * self.agreement:.2f}%"
        )


def quantization_report(
    float_graph: nir.NIRGraph,
    quantized_graph: nir.NIRGraph,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    label_source: str = "labels",
) -> QuantizationReport:
    """Run both graphs deterministically (``NIRRuntime``) on ``inputs`` (event counts or spikes, batched)."""
    labels = torch.as_tensor(labels).reshape(-1)
    if labels.shape[0] != inputs.shape[0]:
        raise InputError(f"{inputs.shape[0]} inputs but {labels.shape[0]} labels")
    before = NIRRuntime(float_graph).outputs(inputs).argmax(dim=1)
    after = NIRRuntime(quantized_graph).outputs(inputs).argmax(dim=1)
    biases = [  # the units' (the readout's bias is the host's, of any width)
        n.bias
        for n in quantized_graph.nodes.values()
        if isinstance(n, (nir.Conv2d, nir.Affine))
        and n.bias is not None
        and decode_metadata(n.metadata or {}).get("role") == "synapses"
    ]
    n = int(labels.shape[0])
    return QuantizationReport(
        bits=int(decode_metadata(quantized_graph.metadata or {}).get("quantized_bits", 0)),
        n=n,
        accuracy_before=float((before == labels).float().mean()) if n else 0.0,
        accuracy_after=float((after == labels).float().mean()) if n else 0.0,
        agreement=float((before == after).float().mean()) if n else 0.0,
        bias_bits=max((_signed_bits(np.asarray(b)) for b in biases), default=0),
        label_source=label_source,
    )
