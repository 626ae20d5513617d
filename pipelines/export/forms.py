"""Per-target forms of an exported spike graph: what each toolchain's NIR importer runs exactly.

``target_form(graph, target)`` rewrites a graph from ``graph.to_nir`` (optionally ``quantize``-d) for one of
``TARGETS``; the network (the sign of every unit's pre-activation, the readout) stays the same.

=========  ==========================================================================================
target     form
=========  ==========================================================================================
generic    the graph as ``to_nir`` writes it (``metadata``'s docstring): one Conv2d/Affine + memoryless
           LIF (tau = dt = 2^-10, threshold -FLT_MIN) per unit layer.
norse      float graphs: every unit's synapses split into an exact part and a residual (below); integer
           graphs as generic. Import with ``norse.torch.from_nir(graph, dt=2**-10)``.
snntorch   as norse, with tau = 1e-4: snnTorch's LIF import fixes dt = 1e-4 and sets beta = 1 - dt/tau and
           the threshold scale r dt/tau, so tau = dt gives beta = 0 (memoryless) and scale 1.
sinabs     IF nodes (sinabs' importer fails on conv-shaped LIF and pins nir <= 1.0.4, which has no
           ``LIF.v_reset``) with positive thresholds; its ``IAFSqueeze`` fires when v >= threshold (with
           ``spike_fn=SingleSpike``). Integer graphs: unit bias + 1, threshold 1/2 (so v >= 1/2 and v > 1/2
           both mean p >= 0 for the integer pre-activation p); OR neurons threshold 1/2. Float graphs: split as
           norse, the unit threshold is the layer's grid step delta (below), added to the exact part's bias:
           v >= delta <=> p >= 0 (non-strict, like the NSM unit).
speck      integer graphs only (DYNAP-CNN cores hold 8-bit integer weights): IF nodes with one positive
           integer threshold per layer, 1, and unit bias + 1 (v >= 1 <=> p >= 0, non-strict as sinabs and the
           chip); OR neurons threshold 1. Whether it fits the chip is ``targets.speck_violations``' job.
spiking-   as sinabs (IF, one positive threshold per layer, non-strict: SpikingJelly 2.0.0's ``IFNode`` fires
jelly      when v - threshold >= 0), with dt = 1 and r = 1 = 1/dt (its importer refuses an IF whose r is not
           1/dt, and maps a LIF only when tau/dt > 1, so a memoryless neuron must be an IF). Import with
           ``import_from_nir(graph, dt=1)``; one step from rest (state None) per batch.
spyx       memoryless LIF with tau = dt = 1 (Spyx 1.0.0's ``from_nir(graph, x, dt=1)`` sets beta = 1 - dt/tau
           = 0), units as norse (float graphs split, threshold -FLT_MIN; integer graphs threshold -1/2), OR
           neurons threshold 0, and every dense layer on a flattened map as a convolution over the whole map
           (``layout.dense_as_conv``: Spyx runs channels-last). A Spyx neuron spikes from its potential of the
           step before (one step of latency per neuron layer) and then subtracts threshold x spike from the new
           potential: with beta = 0 that is v_t = I_t - s_t theta, s_(t+1) = [v_t > theta], so a unit fires
           at t + 1 when I_t > theta (1 + s_t). The thresholds above make that the same rule for s_t = 0 and 1
           (integers: I >= 0 either way; OR: I >= 1; float units: I > -FLT_MIN or > -2 FLT_MIN, which differ
           only for I in (-2.4e-38, -1.2e-38]). Feed the same input for ``steps`` (graph metadata: neuron
           layers + 1) steps, time-major and channels-last (T, B, H, W, C), and read the last step's output.
=========  ==========================================================================================

norse, snntorch, sinabs and spikingjelly also write every sum pool whose window is not of 2^k cells (a readout
over a 5 x 5 map) as a 0/1 convolution (``POOL_AS_CONV_TARGETS``, ``layout.pools_as_conv``): their importers run
``SumPool2d`` as ``LPPool2d(norm_type=1)``, a float32 average times the area, and 1/25 x 25 does not give back
every count. Measured before the rewrite: an 8-bit allconvnet18 at width 0.25 on 2 x 40 x 40 changed logits by up
to 4.9e-4 through norse, snnTorch and sinabs (all 200 top classes equal) and gave other outputs on 59 of 200
inputs through SpikingJelly. speck keeps its pools (the chip sums spikes in integers; its ``--check`` in sinabs is
exact for windows of 2^k cells); Spyx sums exactly.

Why float graphs are split (norse, snnTorch, sinabs, SpikingJelly and Spyx compute in float32)
----------------------------------------------------------------------------------------------
A unit fires when p = W s + c >= 0 (W = 2W', c = b' - sum W', s in {0,1}^n). Evaluated in float32, p comes
out as p + e with |e| <= E ~ n u (sum_j |W_j| + |c|) (u = 2^-24: the cast of each weight plus the rounding of
the sum), so the sign can differ from the exact float64 one when |p| <= E. No choice of bias or threshold
alone removes this: the 2^n achievable pre-activations of a unit with float weights lie far denser than E
around any threshold (n = 576 inputs give 2^576 sums in a range of about sum |W_j|), so moving the threshold
only changes which inputs flip, and with it the network. What can be made exact is the arithmetic. Each
unit layer's synapse node gets twice the outputs, an exact part and a residual per unit (interleaved), and a
second node (a 1x1 Conv2d or an Affine with weights 0 and 1) adds each pair before the neuron. The graph stays
a chain (norse's importer, nirtorch's old graph executor, runs a node with two inputs in the wrong order):

- the exact part H = round(W 2^k) 2^-k and c_H = round(c 2^k) 2^-k on one dyadic grid delta = 2^-k per layer,
  with k the largest integer such that every unit's sum_j |H_j| + |c_H| (+ delta for sinabs) stays below 2^24
  delta (``grid_exponent``). Every value is an integer multiple of delta below 2^24 delta, so every partial
  sum of H s + c_H, in any order, is exact in float32: this part has no rounding error at all.
- the residual R = W - H, c_R = c - c_H with |R_j| <= delta/2: its float32 evaluation errs by at most
  about (n + 1) u sum_j |R_j| <= (n + 1) n u delta / 2.
- the pair node adds the two currents once (its other terms are exact zeros): round-to-nearest of a sum of
  two floats has the sign of the exact sum, so the only error left is the residual's.

delta is about (sum |W| + |c|) 2^-24, so the window |p| <= E in which a unit can still flip shrinks by about
n 2^-24 / 2 against the unsplit graph (576 inputs: about 2e-5). Measured (``python -m pipelines.export.check_targets
--models allconvnet18 --seeds 0,1,2,3,4 --targets norse,generic``, 200 inputs each): through norse the generic graph
of a full-size untrained allconvnet18 changed logits at every seed (top class on 193-200 of 200), the split form
agreed within 4e-7 on every input at every seed. This is
not a proof of exactness for every input (nothing short of integer weights is: ``quantize``); integer graphs
are exact in every form, and ``--check`` measures the agreement either way.
"""

from __future__ import annotations

import math

import nir
import numpy as np

from events.errors import InputError

from .layout import dense_as_conv, pools_as_conv
from .metadata import TAU, ExportError, decode_metadata

TARGETS = ("generic", "norse", "snntorch", "sinabs", "speck", "spikingjelly", "spyx")
SNNTORCH_DT = 1e-4
"""snnTorch's NIR import uses this fixed time step (``snntorch.import_nir``: ``dt = 1e-4``)."""
UNIT_DT = 1.0
"""The time step (and the spyx LIFs' tau) of the spikingjelly and spyx forms: import with ``dt=1``."""
_IF_TARGETS = ("sinabs", "speck", "spikingjelly")
POOL_AS_CONV_TARGETS = ("norse", "snntorch", "sinabs", "spikingjelly")
"""Targets whose importer runs ``SumPool2d`` as an ``LPPool2d(norm_type=1)`` (a float32 average times the window's
area, which miscounts some sums of windows that are not 2^k cells; measured through each importer): their forms
write such pools as 0/1 convolutions (``layout.pools_as_conv``)."""
_F32_EXACT = 2**24
HALF = 0.5


def _topological(graph: nir.NIRGraph) -> list[str]:
    preds = {k: 0 for k in graph.nodes}
    succ: dict[str, list[str]] = {k: [] for k in graph.nodes}
    for a, b in graph.edges:
        succ[a].append(b)
        preds[b] += 1
    ready = [k for k, n in preds.items() if n == 0]
    order = []
    while ready:
        k = ready.pop(0)
        order.append(k)
        for b in succ[k]:
            preds[b] -= 1
            if preds[b] == 0:
                ready.append(b)
    if len(order) != len(graph.nodes):
        raise InputError("the graph has a cycle")
    return order


def is_integer_graph(graph: nir.NIRGraph) -> bool:
    """Whether ``graph`` was quantized (``quantize``): integer weights and biases, exact in float32."""
    return bool(decode_metadata(graph.metadata or {}).get("quantized_bits"))


def _units(graph: nir.NIRGraph) -> list[tuple[str, str]]:
    """(synapse node, unit LIF) pairs of a generic graph, in order."""
    out = []
    for a, b in graph.edges:
        node = graph.nodes[b]
        if isinstance(node, (nir.LIF, nir.IF)) and decode_metadata(node.metadata or {}).get("role") == "unit":
            out.append((a, b))
    return out


def grid_exponent(weight: np.ndarray, bias: np.ndarray, extra_steps: int = 0) -> int:
    """The largest k with every unit's sum_j |round(w_j 2^k)| + |round(c 2^k)| + extra_steps < 2^24: on the grid
    2^-k every partial sum of the exact part (and its threshold shift of ``extra_steps`` grid steps) is a float32."""
    w = np.asarray(weight, dtype=np.float64).reshape(weight.shape[0], -1)
    c = np.asarray(bias, dtype=np.float64)
    total = float((np.abs(w).sum(axis=1) + np.abs(c)).max())
    if total == 0:
        return 0
    k = math.floor(math.log2((_F32_EXACT - w.shape[1] - extra_steps - 2) / total))
    while True:
        s = 2.0**k
        m = np.abs(np.rint(w * s)).sum(axis=1) + np.abs(np.rint(c * s)) + extra_steps
        if float(m.max()) < _F32_EXACT:
            return k
        k -= 1


def _synapse(node, weight, bias, metadata):
    meta = dict(node.metadata or {})
    meta.update(metadata)
    if isinstance(node, nir.Conv2d):
        return nir.Conv2d(
            input_shape=node.input_shape,
            weight=weight,
            stride=node.stride,
            padding=node.padding,
            dilation=node.dilation,
            groups=node.groups,
            bias=bias,
            metadata=meta,
        )
    return nir.Affine(weight=weight, bias=bias, metadata=meta)


def _split(syn, hi, c_hi, lo, c_lo, k: int):
    """(synapses with interleaved outputs 2i = exact part, 2i + 1 = residual of unit i; the node adding each pair)."""
    c = hi.shape[0]
    w2 = np.stack([hi, lo], axis=1).reshape(2 * c, *hi.shape[1:])
    b2 = np.stack([c_hi, c_lo], axis=1).reshape(2 * c)
    first = _synapse(syn, w2, b2, {"part": "exact and residual, interleaved", "grid_exponent": int(k)})
    meta = {"role": "pair_sum", "layer": (syn.metadata or {}).get("layer", "")}
    weight = np.zeros((c, 2 * c))
    weight[np.arange(c), 2 * np.arange(c)] = 1.0
    weight[np.arange(c), 2 * np.arange(c) + 1] = 1.0
    if isinstance(syn, nir.Conv2d):  # dense 1x1 (importers read in_channels from weight.shape[1]: no groups)
        out = tuple(int(v) for v in first.output_type["output"][1:])
        pair = nir.Conv2d(
            input_shape=out,
            weight=weight[:, :, None, None],
            stride=(1, 1),
            padding=(0, 0),
            dilation=(1, 1),
            groups=1,
            bias=np.zeros(c),
            metadata=meta,
        )
    else:
        pair = nir.Affine(weight=weight, bias=np.zeros(c), metadata=meta)
    return first, pair


def _neuron(node: nir.LIF, kind: str, threshold: float, tau: float | None = None, rule: str = "strict"):
    shape = node.v_threshold.shape
    meta = dict(node.metadata or {})
    meta["threshold_rule"] = rule
    theta = np.full(shape, threshold, dtype=np.float64)
    if kind == "IF":
        return nir.IF(r=np.ones(shape), v_threshold=theta, v_reset=np.zeros(shape), metadata=meta)
    t = np.full(shape, TAU if tau is None else tau, dtype=np.float64)
    zeros = np.zeros(shape)
    return nir.LIF(tau=t, r=np.ones(shape), v_leak=zeros, v_threshold=theta, v_reset=zeros.copy(), metadata=meta)


def target_form(graph: nir.NIRGraph, target: str) -> nir.NIRGraph:
    """``graph`` (from ``to_nir``, possibly ``quantize``-d) in the form ``target`` runs exactly (module docstring).

    Raises ``ExportError`` for an unknown target, and for ``speck`` on a float graph (quantize it first).
    """
    if target not in TARGETS:
        raise ExportError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
    if target == "generic":
        return graph
    integer = is_integer_graph(graph)
    if target == "speck" and not integer:
        raise ExportError(
            "target speck needs integer weights (DYNAP-CNN cores hold 8-bit integers): export with "
            "--quantize-bits 8 (pipelines.export.quantize(graph, 8) before target_form)"
        )
    if target == "spyx":
        graph = dense_as_conv(graph)
    if target in POOL_AS_CONV_TARGETS:
        graph = pools_as_conv(graph)
    nodes = dict(graph.nodes)
    edges = list(graph.edges)
    split = not integer
    neuron_kind = "IF" if target in _IF_TARGETS else "LIF"
    tau = {"snntorch": SNNTORCH_DT, "spyx": UNIT_DT}.get(target)
    for syn_key, unit_key in _units(graph):
        syn, unit = graph.nodes[syn_key], graph.nodes[unit_key]
        w = np.asarray(syn.weight, dtype=np.float64)
        c = np.asarray(syn.bias, dtype=np.float64)
        k = grid_exponent(w, c, extra_steps=1 if neuron_kind == "IF" else 0) if split else 0
        if neuron_kind == "IF":
            if integer:
                threshold, shift = (1.0, 1.0) if target == "speck" else (HALF, 1.0)
                rule = "non-strict (v >= threshold)" if target == "speck" else "either (v > or >= threshold)"
            else:
                threshold, shift = 2.0**-k, 2.0**-k
                rule = "non-strict (v >= threshold)"
        else:
            threshold, shift = float(np.asarray(unit.v_threshold).flat[0]), 0.0
            rule = "strict (v > threshold)"
        if split:
            s = 2.0**k
            hi, c_hi = np.rint(w * s) / s, np.rint(c * s) / s
            nodes[syn_key], sum_node = _split(syn, hi, c_hi + shift, w - hi, c - c_hi, k)
            sum_key = f"sum{syn_key[3:]}" if syn_key.startswith("syn") else f"{syn_key}_sum"
            nodes[sum_key] = sum_node
            edges = [e for e in edges if e != (syn_key, unit_key)] + [(syn_key, sum_key), (sum_key, unit_key)]
        elif shift:
            nodes[syn_key] = _synapse(syn, w, c + shift, {"threshold_shift": shift})
        nodes[unit_key] = _neuron(unit, neuron_kind, threshold, tau, rule)
    for key, node in graph.nodes.items():
        if isinstance(node, nir.LIF) and decode_metadata(node.metadata or {}).get("role") == "or":
            threshold = {"speck": 1.0, "spyx": 0.0}.get(target, HALF)
            rule = {"speck": "non-strict (v >= threshold)", "spyx": "strict (v > threshold)"}
            nodes[key] = _neuron(node, neuron_kind, threshold, tau, rule.get(target, "either (v > or >= threshold)"))
    meta = dict(graph.metadata or {})
    meta["target"] = target
    meta["dt"] = {"snntorch": SNNTORCH_DT, "spikingjelly": UNIT_DT, "spyx": UNIT_DT}.get(target, TAU)
    if target == "spyx":
        meta["steps"] = 1 + sum(isinstance(n, (nir.LIF, nir.IF)) for n in nodes.values())
    if split:
        meta["threshold_rule"] = (
            "each unit sums an exact dyadic part and a small residual (pipelines.export.forms); "
            + ("fires when v >= the layer's grid step" if neuron_kind == "IF" else "fires when v > -FLT_MIN")
        )
    elif neuron_kind == "IF":
        meta["threshold_rule"] = "integer pre-activations, unit biases + 1; " + (
            "thresholds 1, fires when v >= 1" if target == "speck" else "thresholds 1/2 (strict and non-strict agree)"
        )
    if target == "spyx":
        meta["threshold_rule"] += (
            "; OR neurons fire when v > 0; Spyx: one step of latency per neuron layer, so feed the input for "
            "`steps` steps and read the last output"
        )
    order = _topological(nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta, type_check=False))
    return nir.NIRGraph(nodes={k: nodes[k] for k in order}, edges=edges, metadata=meta)
