"""The deterministic binary network as a NIR spike graph: ``to_nir`` (the mapping: ``metadata``'s docstring and
docs/design.md section 6)."""

from __future__ import annotations

import copy
import json

import nir
import numpy as np
import torch
from torch import nn
from torch.nn.modules.utils import _pair

from nsm.affine import AffineConv2d, AffineUnit
from nsm.layers import Binarize, BinaryMaxPool2d, Readout
from nsm.neurons import BINARY_KINDS, KINDS

from ..checkpoint import project_version
from .forms import target_form
from .metadata import FORMAT, MARGIN, OR_THRESHOLD, TAU, ExportError


def _lif(shape, threshold: np.ndarray | float, metadata: dict) -> nir.LIF:
    """A memoryless LIF of ``shape``: tau = TAU, r = 1, v_leak = v_reset = 0, given threshold."""
    shape = tuple(int(s) for s in shape)
    theta = np.broadcast_to(np.asarray(threshold, dtype=np.float32), shape).copy()
    return nir.LIF(
        tau=np.full(shape, TAU, dtype=np.float32),
        r=np.ones(shape, dtype=np.float32),
        v_leak=np.zeros(shape, dtype=np.float32),
        v_threshold=theta,
        v_reset=np.zeros(shape, dtype=np.float32),
        metadata=metadata,
    )


def _spec(model: nn.Module) -> dict:
    spec = getattr(model, "spec", None)
    return dict(spec) if isinstance(spec, dict) else {}


def _unit_kind(name: str, layer: nn.Module) -> str:
    """The neuron kind the unit was built as (``nsm.neuron_kind`` tags each unit with it)."""
    kind = getattr(layer, "neuron", None)
    if kind not in BINARY_KINDS:
        raise ExportError(
            f"layer {name} ({type(layer).__name__}) has neuron kind {kind!r}; export needs units built "
            f"by nsm.neuron_kind (models.create_model) of a binary kind: {', '.join(BINARY_KINDS)}"
        )
    return kind


def _unit_nodes(name: str, layer: AffineUnit, shape: tuple) -> tuple[list, tuple]:
    """(Conv2d or Affine, LIF) of one binary unit layer (its ``preactivation_map`` W', b'), and its output shape."""
    kind = _unit_kind(name, layer)
    with torch.no_grad():  # ``layer`` is float64 here (see ``to_nir``)
        unit_map = layer.preactivation_map()
        w = unit_map.weight.detach().numpy()
        b = np.zeros(w.shape[0]) if unit_map.bias is None else unit_map.bias.detach().numpy()
    weight2 = 2.0 * w  # exact: a power-of-two scale
    bias = b - w.reshape(w.shape[0], -1).sum(axis=1)
    if isinstance(layer, AffineConv2d):
        if len(shape) != 3 or shape[0] != layer.in_channels:
            raise ExportError(
                f"layer {name} ({type(layer).__name__}) expects {layer.in_channels} input channels "
                f"of a 2-d map, but receives shape {shape}"
            )
        syn = nir.Conv2d(
            input_shape=tuple(int(s) for s in shape[1:]),
            weight=weight2,
            stride=tuple(layer.stride),
            padding=tuple(layer.padding),
            dilation=(1, 1),
            groups=1,
            bias=bias,
            metadata={"role": "synapses", "layer": name},
        )
        out_shape = tuple(int(s) for s in syn.output_type["output"])
        threshold = -MARGIN
    else:
        if len(shape) != 1 or shape[0] != layer.in_features:
            raise ExportError(
                f"layer {name} ({type(layer).__name__}) expects {layer.in_features} input "
                f"features, but receives shape {shape}"
            )
        syn = nir.Affine(weight=weight2, bias=bias, metadata={"role": "synapses", "layer": name})
        out_shape = (int(weight2.shape[0]),)
        threshold = -MARGIN
    c = out_shape[0]
    noise, beta = getattr(layer, "noise", None), getattr(layer, "beta", None)  # an NSM unit's; bd and wbd have none
    meta = {
        "role": "unit",
        "layer": name,
        "neuron": kind,
        "mode": KINDS[kind].sampling_mode,
        "noise": json.dumps(noise.to_dict()) if noise is not None else "",
        "beta": (beta.detach().numpy() if beta is not None else np.ones(c)).astype(np.float32),
        "logit_offset": np.zeros(c, dtype=np.float32),
        "logit_scale": np.ones(c, dtype=np.float32),
    }
    return [syn, _lif(out_shape, threshold, meta)], out_shape


def _pool_nodes(name: str, layer: nn.MaxPool2d, shape: tuple) -> tuple[list, tuple]:
    k, s, p, d = (_pair(getattr(layer, a)) for a in ("kernel_size", "stride", "padding", "dilation"))
    if p != (0, 0) or d != (1, 1) or layer.ceil_mode:
        raise ExportError(
            f"layer {name} (BinaryMaxPool2d) uses padding={p}, dilation={d}, ceil_mode="
            f"{layer.ceil_mode}; only unpadded, undilated, floor-mode pools export as SumPool2d"
        )
    out = (shape[0],) + tuple((shape[1 + i] - k[i]) // s[i] + 1 for i in range(2))
    pool = nir.SumPool2d(
        kernel_size=np.array(k), stride=np.array(s), padding=np.array(p), metadata={"role": "pool", "layer": name}
    )
    return [pool, _lif(out, OR_THRESHOLD, {"role": "or", "layer": name})], out


def _readout_nodes(name: str, layer: Readout, shape: tuple) -> list:
    with torch.no_grad():
        weight, bias0 = layer.affine_parameters(int(np.prod(shape[1:])) if len(shape) == 3 else 1)
        a = weight.detach().double().numpy()
        a0 = bias0.detach().double().numpy() if bias0 is not None else np.zeros(a.shape[0])
    bias = a0 - a.sum(axis=1)
    meta = {"role": "readout", "layer": name, "output_scale": 1.0}
    if len(shape) == 3:
        area = shape[1] * shape[2]
        hw = np.array(shape[1:])
        return [
            nir.SumPool2d(
                kernel_size=hw, stride=hw, padding=np.array([0, 0]), metadata={"role": "readout_pool", "layer": name}
            ),
            nir.Flatten(
                input_type={"input": np.array([shape[0], 1, 1])},
                start_dim=0,
                end_dim=-1,
                metadata={"role": "readout_flatten", "layer": name},
            ),
            nir.Affine(weight=2.0 * a / area, bias=bias, metadata=meta),
        ]
    return [nir.Affine(weight=2.0 * a, bias=bias, metadata=meta)]


def to_nir(
    model: nn.Module, input_shape, *, classes=None, frame_spec: dict | None = None, target: str = "generic"
) -> nir.NIRGraph:
    """The deterministic binary network ``model`` as a NIR spike graph (the mapping: ``metadata``'s docstring).

    ``model`` is a sequence (``models.Network`` / ``nn.Sequential``) starting with ``Binarize`` and
    ending with ``Readout``, with binary units in between (neuron kinds ``BINARY_KINDS``);
    ``input_shape`` = (C, H, W) of the binarized input. ``classes`` and ``frame_spec`` go into the
    graph metadata. ``target``: the form written (``forms.TARGETS``; ``forms.target_form``: "generic" is the
    graph described here, "speck" needs integer weights, so quantize the generic graph and call ``target_form``).
    Raises ``ExportError`` naming the first layer that is not a binary spike layer.
    """
    if not isinstance(model, nn.Sequential):
        raise ExportError(
            f"{type(model).__name__} is not a sequence of layers; export reads models.Network "
            "(Binarize -> binary units and pools -> Readout)"
        )
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
        if isinstance(layer, AffineUnit) and layer.binary:
            new, shape = _unit_nodes(name, layer, shape)
            tags = ["syn", "lif"]
        elif isinstance(layer, BinaryMaxPool2d):
            if len(shape) != 3:
                raise ExportError(f"layer {name} (BinaryMaxPool2d) receives shape {shape}, not a 2-d map")
            new, shape = _pool_nodes(name, layer, shape)
            tags = ["sumpool", "or"]
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise ExportError(f"layer {name} (Flatten) must flatten every non-batch dimension")
            new = [
                nir.Flatten(
                    input_type={"input": np.array(shape)},
                    start_dim=0,
                    end_dim=-1,
                    metadata={"role": "flatten", "layer": name},
                )
            ]
            shape = (int(np.prod(shape)),)
            tags = ["flatten"]
        elif isinstance(layer, Readout):
            if shape[0] != layer.linear.in_features:
                raise ExportError(
                    f"layer {name} (Readout) reads {layer.linear.in_features} features, receives shape {shape}"
                )
            new = _readout_nodes(name, layer, shape)
            tags = ["readout_pool", "readout_flatten", "readout"][-len(new) :]
            shape = (int(layer.linear.out_features),)
            done = True
        else:
            kind = _spec(model).get("neuron", "unknown")
            raise ExportError(
                f"layer {name} ({type(layer).__name__}, neuron kind {kind!r}) is not a binary spike layer; "
                f"export supports networks of {', '.join(BINARY_KINDS)} units (Binarize, NSM/sign units, "
                "BinaryMaxPool2d, Flatten, Readout)"
            )
        for tag, node in zip(tags, new):
            key = f"{tag}{name}" if tag != "readout" else "readout"
            nodes[key] = node
            order.append(key)
    if not done:
        raise ExportError("the model has no Readout layer (global average pool + linear) to give class logits")
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    order.append("output")
    edges = list(zip(order[:-1], order[1:]))
    metadata = _graph_metadata(model, children[0][1].levels, classes, frame_spec)
    graph = nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata)
    return target_form(graph, target)


def input_encoding(levels: tuple[int, ...]) -> str:
    """How the graph's input spikes code the event counts (``nsm.Binarize``'s levels), in words."""
    if levels == (1,):
        return "spikes s = 1 where an (input channel, y, x) bin holds >= 1 event, else 0; unbatched (C, H, W)"
    return (
        f"spikes of a thermometer code of the event counts at levels {list(levels)}: input channel k C + c "
        "(k from 0, C count channels) is 1 where count channel c's bin holds >= levels[k] events, else 0; "
        "unbatched (len(levels) C, H, W)"
    )


def spike_input(model: nn.Module, counts: torch.Tensor) -> torch.Tensor:
    """The graph's input for event-count frames ``counts`` (B, C, H, W): the spikes (z + 1) / 2 of the model's
    ``Binarize`` states (B, L C, H, W), float64."""
    with torch.inference_mode():
        return (model[0](counts.double()) + 1.0) / 2.0


def _graph_metadata(model, levels, classes, frame_spec) -> dict:
    spec = _spec(model)
    return {
        "format": FORMAT,
        "model": str(spec.get("name", type(model).__name__)),
        "model_spec": json.dumps(spec, default=str),
        "classes": json.dumps(list(classes) if classes is not None else []),
        "frame_spec": json.dumps(frame_spec),
        "project_version": project_version(),
        "input_encoding": input_encoding(levels),
        "input_levels": json.dumps(list(levels)),
        "threshold_rule": "strict: a LIF fires when v > v_threshold; unit thresholds are -FLT_MIN, i.e. v >= 0",
        "dt": TAU,
    }


def as_float64(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` (the original is left as it is).

    Export and its checks compute in float64: the file then holds 2W' and b' - sum W' without rounding,
    and a unit flips between graph and model only if its exact pre-activation lies within about 1e-16
    (relative) of its threshold, instead of float32's 1e-7.
    """
    return copy.deepcopy(model).double()
