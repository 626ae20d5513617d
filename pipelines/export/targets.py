"""The target report of ``nsm export``: nodes, neurons and synapses per layer, and per toolchain one of

- verified: this export's ``--check`` imported and ran the file in that toolchain (N/N equal); the toolchains
  that ``--check`` can run are ``CHECKED`` (norse, snnTorch, sinabs, SpikingJelly, Spyx; ``make check-targets``);
- rules only: the importer's or chip's published rules, checked on the graph, each ok or FAILED (for the
  ``CHECKED`` toolchains when this export did not run them; Speck unless ``--check --target speck`` ran sinabs'
  DYNAP-CNN backend on the file, ``chip.map_onto_speck``: there is no chip here);
- not a target: ``NOT_TARGETS``, with the reason, measured (rockpool 3.1.0 and lava-dl 0.6.0, each tried in its
  own venv: rockpool's ``from_nir`` raises NotImplementedError on Conv2d, SumPool2d, Flatten and IF; lava-dl 0.6.0
  declares Requires-Python < 3.11 and ships no NIR code).

Nothing is claimed that was not run or checked.

DYNAP-CNN (Speck) limits, as published in sinabs 3.1.3 (``sinabs/backend/dynapcnn``):

- ``chips/dynapcnn.py`` (``get_constraints``): 9 cores with kernel memory 16, 16, 16, 32, 32, 64, 64, 16,
  16 Ki entries and neuron memory 64, 64, 64, 32, 32, 16, 16, 16, 16 Ki entries, 1 Ki biases each;
- ``dynapcnn_layer.py`` (``memory_summary``): a layer (f output channels, c input channels, kernel h x w,
  output map H x W) needs kernel memory c 2^(ceil log2(h w) + ceil log2 f) and neuron memory
  f 2^(ceil log2 H + ceil log2 W); a dense layer is mapped as a convolution over its whole input map;
- ``chips/dynapcnn.py`` (``get_dynapcnn_layer_config_dict``): one ``threshold_high = int(spike_threshold)`` per
  core, so one integer threshold per layer (positive: spikes when v >= threshold); biases written as
  integers with ``leak_enable`` (applied as a leak);
- ``discretize.py``: weights and biases of ``DYNAPCNN_WEIGHT_PRECISION_BITS = 8`` bits, state 16 bits;
- ``chips/dynapcnn.py`` (``pooling`` per destination) and ``dynapcnn_layer.py``: pooling is summing of a core's
  output spikes on the way to the next core; only ``IAFSqueeze`` neurons map to a core.
"""

from __future__ import annotations

import math
from collections import Counter

import nir
import numpy as np

from .forms import _topological
from .metadata import decode_metadata

SPECK_CORES = 9
SPECK_KERNEL_MEMORY = (16, 16, 16, 32, 32, 64, 64, 16, 16)  # Ki entries per core
SPECK_NEURON_MEMORY = (64, 64, 64, 32, 32, 16, 16, 16, 16)
SPECK_BITS = 8
SPECK_BIAS_LIMIT = 2 ** (SPECK_BITS - 1) - 2
"""The largest |unit bias| ``quantize`` may write for the speck form, which adds 1 to every unit bias (``forms``)."""
SPECK_SOURCE = "sinabs 3.1.3 sinabs/backend/dynapcnn (chips/dynapcnn.py, dynapcnn_layer.py, discretize.py)"

_SPIKING = {"Input", "Output", "Conv2d", "SumPool2d", "Flatten", "Affine", "IF", "LIF"}
IMPORTER_NODES = {
    "norse": _SPIKING,
    "snnTorch": _SPIKING,
    "sinabs": _SPIKING,
    "SpikingJelly": _SPIKING | {"Linear", "CubaLIF", "AvgPool2d"},  # SumPool2d through nirtorch's LPPool2d
    "Spyx": _SPIKING | {"Linear", "CubaLIF"},  # any other node is skipped without a word
}
CHECKED = {"norse": "norse", "snnTorch": "snntorch", "sinabs": "sinabs", "SpikingJelly": "spikingjelly", "Spyx": "spyx"}
"""The toolchains ``--check`` runs (report name: ``check.TARGET_TOOLCHAIN``'s name)."""
ROCKPOOL_NODES = {"Input", "Output", "Affine", "Linear", "LI", "LIF", "CubaLIF"}
NOT_TARGETS = {
    "Xylo (rockpool)": "rockpool 3.1.0's from_nir maps only LI, LIF, CubaLIF, Linear and Affine (measured: "
    "NotImplementedError on Conv2d, SumPool2d, Flatten and IF)",
    "Loihi 2 (lava-dl)": "lava-dl 0.6.0 has no NIR importer, and requires Python < 3.11 (it does not install here)",
}
IMPORTERS = tuple(IMPORTER_NODES) + ("Speck (DYNAP-CNN)",) + tuple(NOT_TARGETS)


def _node_cost(node) -> tuple[int, int]:
    """(neurons, synapses) of one node: neurons for LIF/IF, connections for weight and pool nodes."""
    if isinstance(node, (nir.LIF, nir.IF)):
        return int(np.prod(node.v_threshold.shape)), 0
    out = node.output_type.get("output") if node.output_type else None
    if isinstance(node, nir.Conv2d):
        return 0, int(np.prod(out)) * int(np.prod(node.weight.shape[1:]))
    if isinstance(node, nir.Affine):
        return 0, int(node.weight.size)
    if isinstance(node, nir.SumPool2d) and out is not None:
        return 0, int(np.prod(out)) * int(np.prod(node.kernel_size))
    return 0, 0


def _role(node) -> dict:
    return decode_metadata(node.metadata) if node.metadata else {}


def _layers(graph: nir.NIRGraph) -> dict[str, list[tuple[str, object]]]:
    rows: dict[str, list] = {}
    for key in _topological(graph):
        node = graph.nodes[key]
        layer = _role(node).get("layer")
        if layer is not None and str(layer) != "":
            rows.setdefault(str(layer), []).append((key, node))
    return rows


def _log2ceil(v: int) -> int:
    return int(math.ceil(math.log2(max(int(v), 1))))


def _fits_cores(needs: list[tuple[int, int]]) -> bool:
    """Whether layers with (kernel, neuron) memory needs can each take a distinct core (bipartite matching)."""
    cores = list(zip(SPECK_KERNEL_MEMORY, SPECK_NEURON_MEMORY))
    owner: dict[int, int] = {}

    def place(i, seen):
        for j, (km, nm) in enumerate(cores):
            if j in seen or needs[i][0] > km * 1024 or needs[i][1] > nm * 1024:
                continue
            seen.add(j)
            if j not in owner or place(owner[j], seen):
                owner[j] = i
                return True
        return False

    return all(place(i, set()) for i in range(len(needs)))


def speck_violations(graph: nir.NIRGraph) -> list[str]:
    """Every way ``graph`` breaks the published DYNAP-CNN limits (module docstring), by layer; [] if it fits."""
    return _speck_scan(graph)[0]


def speck_memory(graph: nir.NIRGraph) -> list[tuple[int, int]]:
    """(kernel, neuron) memory entries of each neuron layer a core would hold, in order (module docstring)."""
    return _speck_scan(graph)[1]


def _speck_scan(graph: nir.NIRGraph) -> tuple[list[str], list[tuple[int, int]]]:
    out = []
    needs = []
    flat_in = None
    units = 0
    lim = 2 ** (SPECK_BITS - 1)
    for layer, nodes in _layers(graph).items():
        roles = [_role(n).get("role") for _, n in nodes]
        if "or" in roles:
            out.append(
                f"layer {layer} (max-pool): DYNAP-CNN sums a core's output spikes on the way to the next core; the OR "
                "neuron after the pool (one spike when >= 1 arrive) has no place on a core"
            )
            continue
        if "readout" in roles:
            continue  # real-valued logits: the host reads the last core's spikes (a note in the report)
        if "flatten" in roles:
            flat_in = next(n for _, n in nodes if isinstance(n, nir.Flatten)).input_type["input"]
            continue
        syn = [n for _, n in nodes if isinstance(n, (nir.Conv2d, nir.Affine)) and _role(n).get("role") != "pair_sum"]
        neurons = [n for _, n in nodes if isinstance(n, (nir.LIF, nir.IF))]
        if not syn or not neurons:
            continue
        units += 1
        syn, neuron = syn[0], neurons[0]
        if len([n for _, n in nodes if isinstance(n, (nir.Conv2d, nir.Affine))]) > 1:
            out.append(f"layer {layer}: split float form (two weight nodes); a core holds one convolution")
        if isinstance(neuron, nir.LIF):
            out.append(f"layer {layer}: LIF neuron; cores run integrate-and-fire (IF) neurons (export --target speck)")
        theta = np.unique(np.asarray(neuron.v_threshold, dtype=np.float64))
        if theta.size != 1 or theta[0] <= 0 or theta[0] != np.rint(theta[0]):
            shown = ", ".join(f"{t:.3g}" for t in theta[:3]) + (" ..." if theta.size > 3 else "")
            out.append(f"layer {layer}: thresholds {shown}; a core takes one positive integer threshold")
        w = np.asarray(syn.weight, dtype=np.float64)
        b = np.asarray(syn.bias, dtype=np.float64)
        if not np.array_equal(w, np.rint(w)) or np.abs(w).max(initial=0) > lim - 1:
            out.append(
                f"layer {layer}: weights not {SPECK_BITS}-bit integers (max |w| {np.abs(w).max():.3g}; "
                "export with --quantize-bits 8)"
            )
        if not np.array_equal(b, np.rint(b)) or np.abs(b).max(initial=0) > lim - 1:
            out.append(f"layer {layer}: biases not {SPECK_BITS}-bit integers (max |b| {np.abs(b).max():.3g})")
        if isinstance(syn, nir.Conv2d):
            f, c, kh, kw = w.shape
            oh, ow = (int(v) for v in syn.output_type["output"][1:])
        else:
            f = w.shape[0]
            c, kh, kw = (int(v) for v in flat_in) if flat_in is not None and len(flat_in) == 3 else (w.shape[1], 1, 1)
            oh = ow = 1
        kernel = c * 2 ** (_log2ceil(kh * kw) + _log2ceil(f))
        neuron_mem = f * 2 ** (_log2ceil(oh) + _log2ceil(ow))
        needs.append((kernel, neuron_mem))
        if kernel > max(SPECK_KERNEL_MEMORY) * 1024:
            out.append(f"layer {layer}: kernel memory {kernel:,} > the largest core's {max(SPECK_KERNEL_MEMORY)} Ki")
        if neuron_mem > max(SPECK_NEURON_MEMORY) * 1024:
            big = max(SPECK_NEURON_MEMORY)
            out.append(f"layer {layer}: neuron memory {neuron_mem:,} > the largest core's {big} Ki")
        flat_in = None
    if units > SPECK_CORES:
        out.append(f"network: {units} neuron layers > {SPECK_CORES} cores")
    elif needs and not _fits_cores(needs):
        out.append("network: no assignment of the layers to distinct cores meets every core's memory")
    return out, needs


def _dt(graph: nir.NIRGraph) -> float | None:
    dt = (graph.metadata or {}).get("dt")
    return None if dt is None else float(np.asarray(dt).reshape(-1)[0])


def _neurons(graph: nir.NIRGraph, role: str | None = None) -> list:
    return [
        n
        for n in graph.nodes.values()
        if isinstance(n, (nir.LIF, nir.IF)) and (role is None or _role(n).get("role") == role)
    ]


def _uniform(node) -> bool:
    fields = ("r", "v_threshold", "v_reset") if isinstance(node, nir.IF) else ("tau", "r", "v_threshold", "v_reset")
    return all(np.unique(np.asarray(getattr(node, f))).size == 1 for f in fields)


def _pool_rule(graph: nir.NIRGraph, target: str) -> list[str]:
    """norse, snnTorch, sinabs and SpikingJelly run ``SumPool2d`` as ``LPPool2d(norm_type=1)`` (a float32 average
    times the area: exact for windows of 2^k cells; ``forms.POOL_AS_CONV_TARGETS`` rewrites the others)."""
    areas = [
        int(np.prod(np.broadcast_to(np.asarray(n.kernel_size).reshape(-1), (2,))))
        for n in graph.nodes.values()
        if isinstance(n, nir.SumPool2d)
    ]
    odd = [a for a in areas if a & (a - 1)]
    if not areas:
        return []
    return [
        "SumPool2d windows of 2^k cells (LPPool2d averages, then multiplies): "
        + ("ok" if not odd else f"FAILED for {len(odd)} (sums can round; use --target {target})")
    ]


def _spikingjelly_rules(graph: nir.NIRGraph) -> list[str]:
    """SpikingJelly 2.0.0's ``import_from_nir(graph, dt)``, with dt the graph's: per-node uniform neuron parameters,
    IF r = 1/dt, LIF tau/dt > 1 (its pools: ``_pool_rule``)."""
    dt = _dt(graph) or 1e-4
    rules = []
    ifs = [n for n in graph.nodes.values() if isinstance(n, nir.IF)]
    lifs = [n for n in graph.nodes.values() if isinstance(n, nir.LIF)]
    if ifs:
        ok = all(np.allclose(n.r, 1.0 / dt, rtol=1e-6) for n in ifs)
        rules.append(f"IF r = 1/dt (dt = {dt:g}): " + ("ok" if ok else "FAILED (its import refuses it)"))
    if lifs:
        ok = all(float(np.min(n.tau)) / dt > 1 for n in lifs)
        why = "FAILED (memoryless LIF: tau/dt = 1 is refused; use --target spikingjelly)"
        rules.append(f"LIF tau/dt > 1: {'ok' if ok else why}")
    if ifs or lifs:
        ok = all(_uniform(n) for n in ifs + lifs)
        rules.append("one threshold, r and reset per node: " + ("ok" if ok else "FAILED (it needs them uniform)"))
    return rules


def _spyx_rules(graph: nir.NIRGraph) -> list[str]:
    """Spyx 1.0.0's ``from_nir(graph, x, dt)``: a chain from ``input`` to ``output``; channels-last (a Flatten of a
    map with H W > 1 permutes the next layer's inputs); neurons that spike from the step before and reset by
    subtraction (``forms``: unit thresholds <= 0, OR thresholds in [0, 1/2)); LIF tau = dt (beta = 0)."""
    rules = []
    chain = {"input", "output"} <= set(graph.nodes) and all(
        sum(a == k for a, _ in graph.edges) == 1 for k in graph.nodes if k != "output"
    )
    rules.append("a chain from 'input' to 'output': " + ("ok" if chain else "FAILED (it reads the edges as one)"))
    maps = [
        n
        for n in graph.nodes.values()
        if isinstance(n, nir.Flatten) and np.prod(np.asarray(n.input_type["input"]).reshape(-1)[1:]) > 1
    ]
    if maps:
        rules.append(f"{len(maps)} Flatten of a map: FAILED (it flattens channels-last; use --target spyx)")
    dt = _dt(graph) or 1.0
    lifs = [n for n in graph.nodes.values() if isinstance(n, nir.LIF)]
    if lifs:
        ok = all(np.allclose(n.tau, dt) for n in lifs)
        rules.append(f"LIF tau = dt (dt = {dt:g}, memoryless): " + ("ok" if ok else "FAILED"))
    units, ors = _neurons(graph, "unit"), _neurons(graph, "or")
    ok = all(float(np.max(n.v_threshold)) <= 0 for n in units) and all(
        0 <= float(np.min(n.v_threshold)) and float(np.max(n.v_threshold)) < 0.5 for n in ors
    )
    rules.append(
        "thresholds its subtractive reset leaves exact (units <= 0, OR neurons in [0, 1/2)): "
        + ("ok" if ok else "FAILED (a unit that fired can miss its next spike; use --target spyx)")
    )
    return rules


def target_report(graph: nir.NIRGraph, check=None) -> str:
    """Node counts, neurons and synapses per layer, and per toolchain what was verified or checked by rule.

    ``check``: the ``CheckResult`` of ``--check`` (its toolchain's row then says what was run and how it agreed).
    """
    counts = Counter(type(n).__name__ for n in graph.nodes.values())
    meta = decode_metadata(graph.metadata or {})
    form = meta.get("target", "generic")
    lines = [f"form: {form}; nodes: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
    lines.append(f"{'layer':<10} {'nodes':<34} {'neurons':>10} {'synapses':>12}")
    tot_n = tot_s = 0
    for layer, nodes in _layers(graph).items():
        costs = [_node_cost(n) for _, n in nodes]
        neurons, synapses = sum(c[0] for c in costs), sum(c[1] for c in costs)
        tot_n, tot_s = tot_n + neurons, tot_s + synapses
        lines.append(f"{layer:<10} {' + '.join(type(n).__name__ for _, n in nodes):<34} {neurons:>10,} {synapses:>12,}")
    lines.append(f"{'total':<10} {'':<34} {tot_n:>10,} {tot_s:>12,}")
    lines.append(
        "toolchains (verified = imported and run here by --check; rules only = published rules checked on this "
        "graph, not run; not a target = no importer to run):"
    )
    lifs = [n for n in graph.nodes.values() if isinstance(n, nir.LIF)]
    for name, accepted in IMPORTER_NODES.items():
        missing = sorted(set(counts) - accepted)
        if check is not None and CHECKED[name] == check.toolchain:
            lines.append(f"  {name:<18} {'verified' if check.ok else 'NOT verified'}: {check}")
            continue
        rules = [f"node types {'all imported' if not missing else 'NOT imported: ' + ', '.join(missing)}"]
        if name == "snnTorch" and lifs:
            bad_tau = any(not np.allclose(n.tau, 1e-4) for n in lifs)
            rules.append("LIF tau = 1e-4 (its fixed dt): " + ("FAILED, thresholds would scale" if bad_tau else "ok"))
        if name == "sinabs" and lifs:
            rules.append("LIF nodes: FAILED (its import fails on conv-shaped LIF; use --target sinabs)")
        if name == "SpikingJelly":
            rules += _spikingjelly_rules(graph)
        if name != "Spyx":
            rules += _pool_rule(graph, CHECKED[name])
        if name == "Spyx":
            rules += _spyx_rules(graph)
        target = CHECKED[name]
        lines.append(f"  {name:<18} not run here (--check --target {target} runs it); rules: {'; '.join(rules)}")
    violations = speck_violations(graph)
    mapping = getattr(check, "mapping", None)
    if mapping is not None:
        state = "mapped onto cores" if mapping.ok else "NOT mapped"
        rules = "fits every rule checked" if not violations else f"{len(violations)} rule violations"
        lines.append(f"  {'Speck (DYNAP-CNN)':<18} {state} by sinabs' chip backend ({rules}): {mapping}")
        lines += [f"      - {v}" for v in violations]
    elif violations:
        lines.append(
            f"  {'Speck (DYNAP-CNN)':<18} rules only, does NOT fit ({len(violations)} violations of {SPECK_SOURCE}):"
        )
        lines += [f"      - {v}" for v in violations]
    else:
        lines.append(
            f"  {'Speck (DYNAP-CNN)':<18} rules only: fits every rule checked ({SPECK_SOURCE}); not run on a chip"
        )
    lines.append(f"  {'':<18} (the readout, real-valued logits from the last core's spikes, runs on the host)")
    for name, why in NOT_TARGETS.items():
        extra = ""
        if name == "Xylo (rockpool)" and set(counts) - ROCKPOOL_NODES:
            extra = "; this graph has " + ", ".join(f"{counts[k]} {k}" for k in sorted(set(counts) - ROCKPOOL_NODES))
        lines.append(f"  {name:<18} not a target: {why}{extra}")
    return "\n".join(lines)
