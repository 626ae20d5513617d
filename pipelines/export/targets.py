"""The target report of ``nsm export``: nodes, neurons and synapses per layer, and which importers accept the
graph's node types and sizes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import nir
import numpy as np

from .metadata import decode_metadata


@dataclass(frozen=True)
class Importer:
    name: str
    accepts: frozenset
    note: str
    max_weight_layers: int | None = None
    convolutions: bool = True


IMPORTERS = (
    Importer(
        "norse",
        frozenset({"Input", "Output", "Conv2d", "SumPool2d", "Flatten", "Affine", "IF", "LIF"}),
        "simulate unbatched samples with dt = tau (this export is checked against it with --check)",
    ),
    Importer(
        "snnTorch",
        frozenset({"Input", "Output", "Conv2d", "Flatten", "Affine", "IF", "LIF"}),
        "its NIR import lacks SumPool2d (max-pools and the readout pool)",
    ),
    Importer(
        "sinabs / Speck",
        frozenset({"Input", "Output", "Conv2d", "SumPool2d", "Flatten", "Affine", "IF", "LIF"}),
        "9 convolutional cores: at most 9 weight layers (Conv2d + Affine); chips run integer weights "
        "(export with --quantize-bits)",
        max_weight_layers=9,
    ),
    Importer(
        "Xylo",
        frozenset({"Input", "Output", "Affine", "Linear", "LIF", "CubaLIF"}),
        "imports no convolutions: dense layers only",
        convolutions=False,
    ),
    Importer(
        "Loihi 2 (lava-dl)",
        frozenset({"Input", "Output", "Conv2d", "SumPool2d", "Flatten", "Affine", "IF", "LIF", "CubaLIF"}),
        "goes through lava-dl's network exchange; integer weights (export with --quantize-bits); not verified here",
    ),
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
