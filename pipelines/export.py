"""``nsm export``: the deterministic binary network as a NIR spike graph (DESIGN.md section 6).

Spike domain
------------
A binary unit reads states z in {-1, +1}; the graph reads spikes s = (z + 1) / 2 in {0, 1}. The
graph's input is the spike map of the ``Binarize`` layer: s = 1 where an (input channel, y, x) bin
holds at least one event, else 0, shape ``input_shape`` = (C, H, W), unbatched.

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
so the file holds 2W' and b' - sum W' without rounding; ``pipelines.nir_runtime`` runs in float64
and reproduces the model's deterministic logits exactly. norse 1.1.0's importer casts every tensor
to float32, so through norse a unit can still flip where its exact pre-activation lies within
float32 rounding of 0 (|v| below about n u sum|W'|, n the fan-in, u = 2^-24). Measured on the
full-size untrained allconvnet18 (6x64x64, 200 check inputs): top class equal on 200/200, logits
different on 2 inputs; trained networks keep their units farther from threshold. ``--check``
measures the agreement.

With integer weights (``--quantize-bits``, ``pipelines.quantize``) the gap is provable: the
pre-activations are integers and the threshold sits at -1/2, halfway between two of them, so the
graph is exact and strict and non-strict targets agree.

Metadata
--------
NIR metadata is flat (strings, numbers, arrays); structured values are JSON strings. Graph:
``format``, ``model``, ``model_spec``, ``classes``, ``frame_spec``, ``project_version``,
``input_encoding``, ``threshold_rule``, ``dt``. Unit LIF nodes: ``role`` ("unit"), ``layer``
(module name in the model), ``neuron`` (kind), ``mode`` ("probability" for units that sample,
"deterministic" otherwise), ``noise`` (JSON of ``Noise.to_dict()``, "" for bd/wbd), ``beta`` (C,),
``logit_offset`` and ``logit_scale`` (C,): the ±1-domain logit of a unit is
v = (I + logit_offset) / logit_scale for the LIF's input current I (0 and 1 for float graphs), and a
sampling unit fires with P = 1/2 (1 + erf(v)) (``pipelines.nir_runtime``). Pool LIFs: role "or".
"""
from __future__ import annotations

import argparse
import copy
import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn
from torch.nn.modules.utils import _pair

from nsm.layers import Binarize, BinaryMaxPool2d, NSMConv2d, NSMLinear, Readout
from nsm.neurons import SignConv2d, SignLinear
from nsm.sampling import using_mode

from .files import atomic_path

TAU = 2.0 ** -10
"""Time constant and time step (s, about 1 ms) of the memoryless neurons; import with ``dt = TAU``."""

FORMAT = "nsm-events-spike-graph"
BINARY_KINDS = ("bnsm", "gnsm", "ste", "bn", "bd", "wbd")
SAMPLING_KINDS = ("bnsm", "gnsm", "ste")
MARGIN = float(np.finfo(np.float32).tiny)
"""Unit thresholds are -MARGIN: p > -MARGIN <=> p >= 0 for float32 p, and for float64 p
up to negatives within 1.2e-38 of 0 (module docstring)."""
OR_THRESHOLD = 0.5


class ExportError(ValueError):
    """The network cannot be written as a binary spike graph (the message names the layer)."""


# --------------------------------------------------------------------------------------------- graph


def _lif(shape, threshold: np.ndarray | float, metadata: dict) -> nir.LIF:
    """A memoryless LIF of ``shape``: tau = TAU, r = 1, v_leak = v_reset = 0, given threshold."""
    shape = tuple(int(s) for s in shape)
    theta = np.broadcast_to(np.asarray(threshold, dtype=np.float32), shape).copy()
    return nir.LIF(tau=np.full(shape, TAU, dtype=np.float32), r=np.ones(shape, dtype=np.float32),
                   v_leak=np.zeros(shape, dtype=np.float32), v_threshold=theta,
                   v_reset=np.zeros(shape, dtype=np.float32), metadata=metadata)


def _spec(model: nn.Module) -> dict:
    spec = getattr(model, "spec", None)
    return dict(spec) if isinstance(spec, dict) else {}


def _unit_kind(model: nn.Module, layer: nn.Module) -> str:
    if isinstance(layer, (SignConv2d, SignLinear)):
        return "wbd" if layer.g is not None else "bd"
    spec_kind = _spec(model).get("neuron")
    if spec_kind in ("bnsm", "gnsm", "ste", "bn"):
        return spec_kind
    if layer.estimator == "ste":
        return "ste"
    if layer.mode == "deterministic":
        return "bn"
    return "gnsm" if layer.noise.kind == "gaussian" else "bnsm"


def _unit_nodes(model, name: str, layer: nn.Module, shape: tuple) -> tuple[list, tuple]:
    """(Conv2d or Affine, LIF) of one binary unit layer, and its output shape."""
    with torch.no_grad():                                  # ``layer`` is float64 here (see ``to_nir``)
        if isinstance(layer, (NSMConv2d, NSMLinear)):
            w_eff, b_eff = layer.effective_weight()
            beta = layer.beta.detach().numpy()
        else:
            w_eff, b_eff = layer.effective_weight(), layer.bias
            beta = None
        w = w_eff.detach().numpy()
        b = np.zeros(w.shape[0]) if b_eff is None else b_eff.detach().numpy()
    weight2 = 2.0 * w                                                        # exact: a power-of-two scale
    bias = b - w.reshape(w.shape[0], -1).sum(axis=1)
    kind = _unit_kind(model, layer)
    if isinstance(layer, (NSMConv2d, SignConv2d)):
        if len(shape) != 3 or shape[0] != layer.in_channels:
            raise ExportError(f"layer {name} ({type(layer).__name__}) expects {layer.in_channels} input channels "
                              f"of a 2-d map, but receives shape {shape}")
        syn = nir.Conv2d(input_shape=tuple(int(s) for s in shape[1:]), weight=weight2,
                         stride=tuple(layer.stride), padding=tuple(layer.padding), dilation=(1, 1), groups=1,
                         bias=bias, metadata={"role": "synapses", "layer": name})
        out_shape = tuple(int(s) for s in syn.output_type["output"])
        threshold = -MARGIN
    else:
        if len(shape) != 1 or shape[0] != layer.in_features:
            raise ExportError(f"layer {name} ({type(layer).__name__}) expects {layer.in_features} input "
                              f"features, but receives shape {shape}")
        syn = nir.Affine(weight=weight2, bias=bias, metadata={"role": "synapses", "layer": name})
        out_shape = (int(weight2.shape[0]),)
        threshold = -MARGIN
    c = out_shape[0]
    meta = {"role": "unit", "layer": name, "neuron": kind,
            "mode": "probability" if kind in SAMPLING_KINDS else "deterministic",
            "noise": json.dumps(layer.noise.to_dict()) if beta is not None else "",
            "beta": (beta if beta is not None else np.ones(c)).astype(np.float32),
            "logit_offset": np.zeros(c, dtype=np.float32),
            "logit_scale": np.ones(c, dtype=np.float32)}
    return [syn, _lif(out_shape, threshold, meta)], out_shape


def _pool_nodes(name: str, layer: nn.MaxPool2d, shape: tuple) -> tuple[list, tuple]:
    k, s, p, d = (_pair(getattr(layer, a)) for a in ("kernel_size", "stride", "padding", "dilation"))
    if p != (0, 0) or d != (1, 1) or layer.ceil_mode:
        raise ExportError(f"layer {name} (BinaryMaxPool2d) uses padding={p}, dilation={d}, ceil_mode="
                          f"{layer.ceil_mode}; only unpadded, undilated, floor-mode pools export as SumPool2d")
    out = (shape[0],) + tuple((shape[1 + i] - k[i]) // s[i] + 1 for i in range(2))
    pool = nir.SumPool2d(kernel_size=np.array(k), stride=np.array(s), padding=np.array(p),
                         metadata={"role": "pool", "layer": name})
    return [pool, _lif(out, OR_THRESHOLD, {"role": "or", "layer": name})], out


def _readout_nodes(name: str, layer: Readout, shape: tuple) -> list:
    with torch.no_grad():
        a = layer.linear.weight.detach().double().numpy()
        a0 = layer.linear.bias.detach().double().numpy() if layer.linear.bias is not None else np.zeros(a.shape[0])
    bias = a0 - a.sum(axis=1)
    meta = {"role": "readout", "layer": name, "output_scale": 1.0}
    if len(shape) == 3:
        area = shape[1] * shape[2]
        hw = np.array(shape[1:])
        return [nir.SumPool2d(kernel_size=hw, stride=hw, padding=np.array([0, 0]),
                              metadata={"role": "readout_pool", "layer": name}),
                nir.Flatten(input_type={"input": np.array([shape[0], 1, 1])}, start_dim=0, end_dim=-1,
                            metadata={"role": "readout_flatten", "layer": name}),
                nir.Affine(weight=2.0 * a / area, bias=bias, metadata=meta)]
    return [nir.Affine(weight=2.0 * a, bias=bias, metadata=meta)]


def to_nir(model: nn.Module, input_shape, *, classes=None, frame_spec: dict | None = None) -> nir.NIRGraph:
    """The deterministic binary network ``model`` as a NIR spike graph (see the module docstring).

    ``model`` is a sequence (``models.Network`` / ``nn.Sequential``) starting with ``Binarize`` and
    ending with ``Readout``, with binary units in between (neuron kinds ``BINARY_KINDS``);
    ``input_shape`` = (C, H, W) of the binarized input. ``classes`` and ``frame_spec`` go into the
    graph metadata. Raises ``ExportError`` naming the first layer that is not a binary spike layer.
    """
    if not isinstance(model, nn.Sequential):
        raise ExportError(f"{type(model).__name__} is not a sequence of layers; export reads models.Network "
                          "(Binarize -> binary units and pools -> Readout)")
    model = as_float64(model)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ExportError(f"input_shape must be (C, H, W) with positive sizes (got {tuple(input_shape)})")
    children = list(model.named_children())
    if not children or not isinstance(children[0][1], Binarize):
        first = f"{children[0][0]} ({type(children[0][1]).__name__})" if children else "none"
        raise ExportError(f"layer {first} is not Binarize: the spike graph's input is the binarized event map")
    nodes = {"input": nir.Input(input_type={"input": np.array(shape)})}
    order = ["input"]
    done = False
    for name, layer in children[1:]:
        if done:
            raise ExportError(f"layer {name} ({type(layer).__name__}) follows the Readout; nothing may")
        if isinstance(layer, (NSMConv2d, NSMLinear, SignConv2d, SignLinear)):
            new, shape = _unit_nodes(model, name, layer, shape)
            tags = ["syn", "lif"]
        elif isinstance(layer, BinaryMaxPool2d):
            if len(shape) != 3:
                raise ExportError(f"layer {name} (BinaryMaxPool2d) receives shape {shape}, not a 2-d map")
            new, shape = _pool_nodes(name, layer, shape)
            tags = ["sumpool", "or"]
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise ExportError(f"layer {name} (Flatten) must flatten every non-batch dimension")
            new = [nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1,
                               metadata={"role": "flatten", "layer": name})]
            shape = (int(np.prod(shape)),)
            tags = ["flatten"]
        elif isinstance(layer, Readout):
            if shape[0] != layer.linear.in_features:
                raise ExportError(f"layer {name} (Readout) reads {layer.linear.in_features} features, "
                                  f"receives shape {shape}")
            new = _readout_nodes(name, layer, shape)
            tags = ["readout_pool", "readout_flatten", "readout"][-len(new):]
            shape = (int(layer.linear.out_features),)
            done = True
        else:
            kind = _spec(model).get("neuron", "unknown")
            raise ExportError(
                f"layer {name} ({type(layer).__name__}, neuron kind {kind!r}) is not a binary spike layer; "
                f"export supports networks of {', '.join(BINARY_KINDS)} units (Binarize, NSM/sign units, "
                "BinaryMaxPool2d, Flatten, Readout)")
        for tag, node in zip(tags, new):
            key = f"{tag}{name}" if tag != "readout" else "readout"
            nodes[key] = node
            order.append(key)
    if not done:
        raise ExportError("the model has no Readout layer (global average pool + linear) to give class logits")
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    order.append("output")
    edges = list(zip(order[:-1], order[1:]))
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=_graph_metadata(model, classes, frame_spec))


def _graph_metadata(model, classes, frame_spec) -> dict:
    from .checkpoint import project_version
    spec = _spec(model)
    return {
        "format": FORMAT,
        "model": str(spec.get("name", type(model).__name__)),
        "model_spec": json.dumps(spec, default=str),
        "classes": json.dumps(list(classes) if classes is not None else []),
        "frame_spec": json.dumps(frame_spec),
        "project_version": project_version(),
        "input_encoding": "spikes s = 1 where an (input channel, y, x) bin holds >= 1 event, else 0; unbatched (C, H, W)",
        "threshold_rule": "strict: a LIF fires when v > v_threshold; unit thresholds are -FLT_MIN, i.e. v >= 0",
        "dt": TAU,
    }


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
        if key in ("model_spec", "classes", "frame_spec", "noise") and isinstance(value, str):
            value = json.loads(value) if value else None
        out[key] = value
    return out


def write_nir(graph: nir.NIRGraph, path) -> Path:
    """``nir.write`` to a temporary file beside ``path``, then rename over ``path`` (atomic)."""
    with atomic_path(path) as tmp:
        nir.write(tmp, graph)
    return Path(path)


def read_nir(path) -> nir.NIRGraph:
    """``nir.read`` with a clear error for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such NIR file")
    try:
        return nir.read(path)
    except Exception as err:  # h5py and nir raise several types for foreign or damaged files
        raise ValueError(f"{path}: not a readable NIR graph ({type(err).__name__}: {err})") from None


# --------------------------------------------------------------------------------------------- check


def as_float64(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` (the original is left as it is).

    Export and its checks compute in float64: the file then holds 2W' and b' - sum W' without rounding,
    and a unit flips between graph and model only if its exact pre-activation lies within about 1e-16
    (relative) of its threshold, instead of float32's 1e-7.
    """
    return copy.deepcopy(model).double()


def check_inputs(input_shape, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random event-count frames (n, C, H, W), seeded, with varied event densities.

    Sample i draws Poisson counts with mean rate lambda_i log-spaced over [0.01, 2], so the fraction of
    active bins 1 - exp(-lambda) ranges from about 1 % to 86 %. Until the data pipeline exists these stand
    in for recorded inputs: they exercise every unit with many spike patterns.
    """
    g = torch.Generator().manual_seed(seed)
    rates = torch.logspace(math.log10(0.01), math.log10(2.0), n)[torch.randperm(n, generator=g)]
    shape = (n, *(int(s) for s in input_shape))
    return torch.poisson(rates.reshape(-1, 1, 1, 1).expand(shape).contiguous(), generator=g)


def deterministic_logits(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Float64 logits of the deterministic (mean-field) network, ``nsm.using_mode(model, "deterministic")``."""
    model = as_float64(model).eval()
    with torch.inference_mode(), using_mode(model, "deterministic"):
        return torch.cat([model(x[i:i + batch].double()) for i in range(0, x.shape[0], batch)])


def norse_module(graph: nir.NIRGraph) -> nn.Module:
    """The graph imported by ``norse.torch.from_nir`` with dt = TAU (one step = one memoryless pass)."""
    import warnings

    from norse.torch import from_nir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # nirtorch.load's deprecation notice
        return from_nir(graph, dt=TAU).double()


def norse_logits(graph: nir.NIRGraph, x: torch.Tensor) -> torch.Tensor:
    """Run ``x`` (counts or spikes, (B, C, H, W)) through norse's import, one unbatched sample at a time."""
    module = norse_module(graph)
    spikes = (x > 0).double()
    outs = []
    with torch.no_grad():
        for s in spikes:
            out, _ = module(s)
            outs.append(out.reshape(-1))
    return torch.stack(outs)


@dataclass
class CheckResult:
    """Agreement of an imported graph with a reference on ``n`` inputs."""

    n: int
    top_class_agree: int
    max_abs_logit_diff: float
    logits_close: bool

    @property
    def ok(self) -> bool:
        return self.top_class_agree == self.n and self.logits_close

    def __str__(self) -> str:
        return (f"norse check on {self.n} inputs: top class equal on {self.top_class_agree}/{self.n}, "
                f"max |logit difference| {self.max_abs_logit_diff:.3g} -> {'OK' if self.ok else 'FAILED'}")


def compare_logits(got: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-4) -> CheckResult:
    """Top class equality per input and ``allclose(got, ref, rtol, atol)`` over all logits."""
    agree = int((got.argmax(dim=1) == ref.argmax(dim=1)).sum())
    diff = float((got - ref).abs().max()) if got.numel() else 0.0
    return CheckResult(int(ref.shape[0]), agree, diff, bool(torch.allclose(got, ref, rtol=rtol, atol=atol)))


# --------------------------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Importer:
    name: str
    accepts: frozenset
    note: str
    max_weight_layers: int | None = None
    convolutions: bool = True


IMPORTERS = (
    Importer("norse", frozenset({"Input", "Output", "Conv2d", "SumPool2d", "Flatten", "Affine", "IF", "LIF"}),
             "simulate unbatched samples with dt = tau (this export is checked against it with --check)"),
    Importer("snnTorch", frozenset({"Input", "Output", "Conv2d", "Flatten", "Affine", "IF", "LIF"}),
             "its NIR import lacks SumPool2d (max-pools and the readout pool)"),
    Importer("sinabs / Speck", frozenset({"Input", "Output", "Conv2d", "SumPool2d", "Flatten", "Affine", "IF",
                                          "LIF"}),
             "9 convolutional cores: at most 9 weight layers (Conv2d + Affine); chips run integer weights "
             "(export with --quantize-bits)", max_weight_layers=9),
    Importer("Xylo", frozenset({"Input", "Output", "Affine", "Linear", "LIF", "CubaLIF"}),
             "imports no convolutions: dense layers only", convolutions=False),
    Importer("Loihi 2 (lava-dl)", frozenset({"Input", "Output", "Conv2d", "SumPool2d", "Flatten", "Affine", "IF",
                                             "LIF", "CubaLIF"}),
             "goes through lava-dl's network exchange; integer weights (export with --quantize-bits); not "
             "verified here"),
)


def _node_cost(node) -> tuple[int, int]:
    """(neurons, synapses) of one node: neurons for LIFs, connections for weight and pool nodes."""
    if isinstance(node, nir.LIF):
        return int(np.prod(node.v_threshold.shape)), 0
    out = node.output_type.get("output") if node.output_type else None
    if isinstance(node, nir.Conv2d):
        return 0, int(np.prod(out)) * int(np.prod(node.weight.shape[1:]))
    if isinstance(node, nir.Affine):
        return 0, int(node.weight.size)
    if isinstance(node, nir.SumPool2d) and out is not None:
        return 0, int(np.prod(out)) * int(np.prod(node.kernel_size))
    return 0, 0


def _chain(graph: nir.NIRGraph) -> list[str]:
    nxt = dict(graph.edges)
    start = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)][0]
    order = [start]
    while order[-1] in nxt:
        order.append(nxt[order[-1]])
    return order


def target_report(graph: nir.NIRGraph) -> str:
    """Node counts, neurons and synapses per layer, and which known importers accept the graph."""
    counts = Counter(type(n).__name__ for n in graph.nodes.values())
    lines = ["nodes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    lines.append(f"{'layer':<10} {'nodes':<26} {'neurons':>10} {'synapses':>12}")
    rows: dict[str, list] = {}
    for key in _chain(graph):
        node = graph.nodes[key]
        layer = decode_metadata(node.metadata).get("layer") if node.metadata else None
        if layer is None:
            continue
        neurons, synapses = _node_cost(node)
        row = rows.setdefault(str(layer), [[], 0, 0])
        row[0].append(type(node).__name__)
        row[1] += neurons
        row[2] += synapses
    for layer, (types, neurons, synapses) in rows.items():
        lines.append(f"{layer:<10} {' + '.join(types):<26} {neurons:>10,} {synapses:>12,}")
    tot_n = sum(r[1] for r in rows.values())
    tot_s = sum(r[2] for r in rows.values())
    lines.append(f"{'total':<10} {'':<26} {tot_n:>10,} {tot_s:>12,}")
    weight_layers = counts.get("Conv2d", 0) + counts.get("Affine", 0)
    lines.append("importers:")
    for imp in IMPORTERS:
        problems = sorted(set(counts) - imp.accepts)
        reasons = [f"unsupported node types {', '.join(problems)}"] if problems else []
        if not imp.convolutions and counts.get("Conv2d"):
            reasons.append(f"{counts['Conv2d']} convolution(s)")
        if imp.max_weight_layers is not None and weight_layers > imp.max_weight_layers:
            reasons.append(f"{weight_layers} weight layers > {imp.max_weight_layers}")
        verdict = "accepts" if not reasons else "does not accept (" + "; ".join(reasons) + ")"
        lines.append(f"  {imp.name:<18} {verdict}; {imp.note}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- CLI


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a trained binary network as a NIR spike graph",
        description="Write the deterministic network of a checkpoint in the {0,1} spike domain as a NIR graph "
                    "(HDF5): binarized input, each binary unit layer as Conv2d/Affine + a memoryless LIF, "
                    "max-pools as SumPool2d + an OR neuron, the readout as sum pool + Affine. NSM noise and beta "
                    "are kept in node metadata so pipelines.nir_runtime can run the stochastic network. Prints "
                    "a target report (nodes, neurons, synapses, which importers accept the graph). Only binary "
                    "neuron kinds export: " + ", ".join(BINARY_KINDS) + ".",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint file (RUN/checkpoint.pt or RUN/best.pt)")
    p.add_argument("--out", required=True, help="NIR file to write (written atomically)")
    p.add_argument("--check", action="store_true",
                   help="read the file back, import it with norse.torch.from_nir and compare its top class and "
                        "logits with the deterministic PyTorch model (or, with --quantize-bits, with the "
                        "quantized graph's reference runtime) on random event frames")
    p.add_argument("--check-samples", type=int, default=200, help="number of random inputs for --check")
    p.add_argument("--quantize-bits", type=int, default=None, metavar="N",
                   help="write integer weights of N bits (2..16) and integer biases (unit thresholds -1/2, between two "
                        "integer pre-activations: exact on any target) and report the accuracy change on the check "
                        "inputs (labels: the float model's own predictions)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random check inputs")
    p.set_defaults(func=run)


def run(args) -> int:
    from .checkpoint import load_checkpoint
    from .nir_runtime import NIRRuntime
    from .quantize import quantization_report, quantize

    if args.check_samples < 1:
        raise ValueError(f"--check-samples must be >= 1 (got {args.check_samples})")
    ck = load_checkpoint(args.checkpoint)
    model = ck.model
    input_shape = (int(model.spec["in_channels"]), *(int(s) for s in model.spec["input_size"]))
    graph = to_nir(model, input_shape, classes=ck.classes, frame_spec=ck.frame_spec)
    inputs = check_inputs(input_shape, args.check_samples, args.seed) if (args.check or args.quantize_bits) else None
    if args.quantize_bits is not None:
        float_graph = graph
        graph = quantize(float_graph, args.quantize_bits)
        labels = deterministic_logits(model, inputs).argmax(dim=1)
        print(quantization_report(float_graph, graph, inputs, labels, label_source="float model predictions"))
    out = write_nir(graph, args.out)
    print(f"wrote {out} ({out.stat().st_size:,} bytes): model {model.spec['name']} ({model.spec['neuron']}), "
          f"input {input_shape}, {len(ck.classes)} classes")
    print(target_report(graph))
    if not args.check:
        return 0
    written = read_nir(out)
    got = norse_logits(written, inputs)
    if args.quantize_bits is None:
        ref = deterministic_logits(model, inputs)
    else:
        ref = NIRRuntime(graph).forward(inputs)
    result = compare_logits(got, ref)
    print(result)
    return 0 if result.ok else 1
