"""Rewrites of a spike graph that keep the network, for importers that would otherwise compute it differently:
``dense_as_conv`` (importers that run channels-last) and ``pools_as_conv`` (importers that average to sum).

NIR shapes are channels-first, (C, H, W), and a ``Flatten`` of a map orders its outputs c H W + h W + w. An
importer that keeps maps channels-last (Spyx 1.0.0: ``spyx.nn.Flatten`` is ``x.reshape(B, -1)`` of a
(B, H, W, C) array) flattens the same map as (h W + w) C + c, so the ``Affine`` after it would read permuted
inputs. A dense layer on a flattened map is the same as a convolution whose kernel covers the whole map:

    Flatten (C, H, W) -> Affine (F x C H W)  ==  Conv2d (kernel H x W, no padding) -> (F, 1, 1) -> Flatten

and a (F, 1, 1) map flattens to the same order in either layout. The neuron after the dense layer, if any, keeps
its place (between the convolution and the moved ``Flatten``), reshaped to (F, 1, 1).

nirtorch 2.6 (SpikingJelly 2.0.0's importer) maps ``SumPool2d`` to ``torch.nn.LPPool2d(norm_type=1)``, which
computes the float32 average and multiplies it by the window's area. For a window of 2^k cells both steps are
exact; for others the count can come back rounded (measured, torch 2.13 CPU: a 5 x 5 window returns a wrong
sum for 1 of its 26 possible spike counts, 7 x 7 for 4 of 50). ``pools_as_conv`` writes such a pool as a
``Conv2d`` with weights 1 from each channel to itself (dense: SpikingJelly refuses grouped convolutions),
whose float32 sums of {0, 1} spikes are exact.
"""

from __future__ import annotations

import nir
import numpy as np


def _successors(edges, key: str) -> list[str]:
    return [b for a, b in edges if a == key]


def _reshaped_neuron(node, shape: tuple):
    """The LIF or IF ``node`` with every per-neuron array reshaped to ``shape`` (metadata kept)."""
    meta = dict(node.metadata or {})
    if isinstance(node, nir.IF):
        return nir.IF(
            r=np.asarray(node.r).reshape(shape),
            v_threshold=np.asarray(node.v_threshold).reshape(shape),
            v_reset=np.asarray(node.v_reset).reshape(shape),
            metadata=meta,
        )
    return nir.LIF(
        tau=np.asarray(node.tau).reshape(shape),
        r=np.asarray(node.r).reshape(shape),
        v_leak=np.asarray(node.v_leak).reshape(shape),
        v_threshold=np.asarray(node.v_threshold).reshape(shape),
        v_reset=np.asarray(node.v_reset).reshape(shape),
        metadata=meta,
    )


def dense_as_conv(graph: nir.NIRGraph) -> nir.NIRGraph:
    """``graph`` with every ``Flatten`` of a map (C, H, W), H W > 1, that feeds exactly one ``Affine`` rewritten as
    above (module docstring): the Affine becomes a ``Conv2d`` of kernel (H, W) with the same weights reshaped to
    (F, C, H, W) and the same bias and metadata; the Flatten (same key) moves after the neuron that followed the
    Affine (or after the convolution when none did). Other nodes are kept; the node order is left to the caller.
    A graph without such a Flatten is returned as it is."""
    nodes, edges = dict(graph.nodes), list(graph.edges)
    changed = False
    for key, node in graph.nodes.items():
        if not isinstance(node, nir.Flatten):
            continue
        shape = tuple(int(s) for s in np.asarray(node.input_type["input"]).reshape(-1))
        after = _successors(edges, key)
        if len(shape) != 3 or shape[1] * shape[2] == 1 or len(after) != 1:
            continue
        dense_key = after[0]
        dense = nodes[dense_key]
        if not isinstance(dense, nir.Affine):
            continue
        weight = np.asarray(dense.weight)
        f = int(weight.shape[0])
        bias = np.zeros(f) if dense.bias is None else np.asarray(dense.bias)
        nodes[dense_key] = nir.Conv2d(
            input_shape=shape[1:],
            weight=weight.reshape(f, *shape),
            stride=(1, 1),
            padding=(0, 0),
            dilation=(1, 1),
            groups=1,
            bias=bias,
            metadata=dict(dense.metadata or {}),
        )
        tail = dense_key
        nxt = _successors(edges, dense_key)
        if len(nxt) == 1 and isinstance(nodes[nxt[0]], (nir.LIF, nir.IF)):
            tail = nxt[0]
            nodes[tail] = _reshaped_neuron(nodes[tail], (f, 1, 1))
        nodes[key] = nir.Flatten(
            input_type={"input": np.array([f, 1, 1])}, start_dim=0, end_dim=-1, metadata=dict(node.metadata or {})
        )
        sources = [a for a, b in edges if b == key]
        targets = _successors(edges, tail)
        edges = [(a, b) for a, b in edges if a != key and b != key and a != tail]
        edges += [(a, dense_key) for a in sources] + [(tail, key)] + [(key, b) for b in targets]
        changed = True
    if not changed:
        return graph
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=dict(graph.metadata or {}), type_check=False)


def pools_as_conv(graph: nir.NIRGraph) -> nir.NIRGraph:
    """``graph`` with every unpadded ``SumPool2d`` whose window is not of 2^k cells written as a ``Conv2d`` of the
    same window and stride, weights 1 from channel c to channel c and 0 elsewhere, bias 0 (module docstring); its
    input shape is read from the node before it. Other nodes are kept; a graph without such a pool is returned as
    it is."""
    nodes = dict(graph.nodes)
    changed = False
    for key, node in graph.nodes.items():
        if not isinstance(node, nir.SumPool2d):
            continue
        kh, kw = (int(v) for v in np.broadcast_to(np.asarray(node.kernel_size).reshape(-1), (2,)))
        area = kh * kw
        if area & (area - 1) == 0 or np.any(np.asarray(node.padding) != 0):
            continue
        sources = [a for a, b in graph.edges if b == key]
        if len(sources) != 1:
            continue
        before = graph.nodes[sources[0]]
        shape = before.output_type["output"] if not isinstance(before, nir.Input) else before.input_type["input"]
        c, h, w = (int(v) for v in np.asarray(shape).reshape(-1))
        weight = np.zeros((c, c, kh, kw))
        weight[np.arange(c), np.arange(c)] = 1.0
        nodes[key] = nir.Conv2d(
            input_shape=(h, w),
            weight=weight,
            stride=tuple(int(v) for v in np.broadcast_to(np.asarray(node.stride).reshape(-1), (2,))),
            padding=(0, 0),
            dilation=(1, 1),
            groups=1,
            bias=np.zeros(c),
            metadata=dict(node.metadata or {}),
        )
        changed = True
    if not changed:
        return graph
    return nir.NIRGraph(nodes=nodes, edges=list(graph.edges), metadata=dict(graph.metadata or {}), type_check=False)
