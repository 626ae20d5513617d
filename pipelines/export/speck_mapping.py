"""Map an exported ``--target speck`` graph onto DYNAP-CNN cores with sinabs' own chip backend (a script).

Run under an interpreter whose environment holds sinabs (``make check-targets`` builds build/targets/sinabs):

    build/targets/sinabs/bin/python pipelines/export/speck_mapping.py model.nir

It imports only torch, nir, sinabs and ``importers.read_graph`` (never the rest of the project) and does what a
user deploying to Speck does: ``sinabs.from_nir``; the chain from the input up to the last IF node as an
``nn.Sequential`` (the readout after it runs on the host); each ``IAFSqueeze``'s per-neuron threshold (as
``from_nir`` writes it) as the one value it holds (the chip takes one per core; a layer with several is refused);
``DynapcnnNetwork(net, input_shape, discretize=False)``; its ``memory_summary()``; and sinabs' core mapper
(``ChipFactory("speck2fmodule").get_config_builder().map_layers_to_cores``, Edmonds' matching of layers to cores
under ``get_constraints()``). Where samna is installed it then calls ``make_config(device="speck2fmodule")``, the
chip configuration itself.

sinabs' chip backend imports samna (and samnagui) at module level though its layer construction and mapper never
call it, and samna's PyPI package is a stub whose import pip-installs the real one from an index this project
cannot reach. Where the real samna is absent (its package holds no compiled extension), samna's modules are stood
in by empty placeholders for the import only, and ``make_config`` is not run (the result says so).

The graph already holds the chip's integers, so they go to the chip as they are (``discretize=False``;
``make_config`` writes each weight's and bias's ``int()``). sinabs' discretization (``discretize=True``, meant for
float networks) would rescale each layer by one factor that makes its largest weight or bias the largest 8-bit
integer, and so change a graph whose largest integer is smaller (a network trained on a power-of-two weight grid,
``nsm.grid``); instead the script checks, with the precisions sinabs' ``discretize.py`` defines
(``DYNAPCNN_WEIGHT_PRECISION_BITS``, ``DYNAPCNN_STATE_PRECISION_BITS``), that every weight and bias is an integer
within the weights' signed range and every threshold an integer within the neuron state's.

Prints one line ``result: {json}`` with ``layers`` (sinabs' layer count), ``cores`` (layer -> core, or null),
``memory`` (kernel / neuron / bias per layer), ``refused`` (sinabs' error, or null), ``out_of_range`` (the chip
layers whose weights, biases or threshold are not integers within those ranges, each with what is wrong: empty
when all fit; null when sinabs refused the network), ``config`` ("made", or why not).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
import types

SAMNA_MODULES = ("samna", "samnagui")
DEVICE = "speck2fmodule"


def real_samna() -> bool:
    """Whether samna is installed for real: its package holds a compiled extension (the PyPI stub holds only an
    ``__init__.py``, which must not be imported: it runs pip)."""
    spec = importlib.util.find_spec("samna")
    if spec is None or not spec.submodule_search_locations:
        return False
    for folder in spec.submodule_search_locations:
        for _root, _dirs, files in os.walk(folder):
            if any(f.endswith((".so", ".pyd", ".dylib")) for f in files):
                return True
    return False


class _Placeholder(types.ModuleType):
    """An empty module whose every attribute is another placeholder (names used in annotations and imports)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(f"{self.__name__}.{name}")


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in SAMNA_MODULES:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Placeholder(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def chip_chain(graph, module):
    """The imported modules from the graph's input to its last IF node, in order."""
    import nir

    succ = dict(graph.edges)
    key, chain = "input", []
    while key in succ:
        key = succ[key]
        chain.append(key)
    ifs = [i for i, k in enumerate(chain) if isinstance(graph.nodes[k], nir.IF)]
    if not ifs:
        raise ValueError("the graph has no IF node: export it with --target speck")
    return [getattr(module, k) for k in chain[: ifs[-1] + 1]]


def one_threshold(layer) -> None:
    """Replace an ``IAFSqueeze``'s per-neuron threshold and floor by the one value each holds."""
    import torch

    for name in ("spike_threshold", "min_v_mem"):
        t = getattr(layer, name)
        if not torch.is_tensor(t) or t.numel() == 1:
            continue
        values = torch.unique(t)
        if values.numel() != 1:
            raise ValueError(f"an IAF layer's {name} holds {values.numel()} values; a core takes one")
        scalar = values.reshape(()).clone()
        if isinstance(t, torch.nn.Parameter):
            scalar = torch.nn.Parameter(scalar, requires_grad=False)
        setattr(layer, name, scalar)


def out_of_range(index: int, layer) -> list[str]:
    """What of chip layer ``index`` (a ``DynapcnnLayer``) is not an integer within the chip's ranges: weights and
    biases in [-2^(b-1), 2^(b-1) - 1] for sinabs' weight precision b, the threshold in the neuron state's."""
    import torch
    from sinabs.backend.dynapcnn.discretize import DYNAPCNN_STATE_PRECISION_BITS, DYNAPCNN_WEIGHT_PRECISION_BITS

    def fits(t, bits) -> bool:
        t = torch.as_tensor(t).detach().double()
        return bool(torch.equal(t, torch.round(t)) and t.min() >= -(2 ** (bits - 1)) and t.max() <= 2 ** (bits - 1) - 1)

    conv, spike = layer.conv_layer, layer.spk_layer
    problems = []
    if not fits(conv.weight, DYNAPCNN_WEIGHT_PRECISION_BITS):
        problems.append(f"layer {index}: weights not {DYNAPCNN_WEIGHT_PRECISION_BITS}-bit integers")
    if conv.bias is not None and not fits(conv.bias, DYNAPCNN_WEIGHT_PRECISION_BITS):
        problems.append(f"layer {index}: biases not {DYNAPCNN_WEIGHT_PRECISION_BITS}-bit integers")
    if not fits(spike.spike_threshold, DYNAPCNN_STATE_PRECISION_BITS):
        problems.append(f"layer {index}: threshold not a {DYNAPCNN_STATE_PRECISION_BITS}-bit integer")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: speck_mapping.py GRAPH.nir", file=sys.stderr)
        return 2
    samna_installed = real_samna()
    if not samna_installed:
        sys.meta_path.insert(0, _PlaceholderFinder())
    import sinabs
    from importers import read_graph
    from torch import nn

    graph = read_graph(argv[0])
    net = nn.Sequential(*chip_chain(graph, sinabs.from_nir(graph, batch_size=1))).float()
    for layer in net:
        if isinstance(layer, sinabs.layers.IAFSqueeze):
            one_threshold(layer)
    shape = tuple(int(v) for v in graph.nodes["input"].input_type["input"])
    from sinabs.backend.dynapcnn import DynapcnnNetwork
    from sinabs.backend.dynapcnn.chip_factory import ChipFactory

    result = {"layers": None, "cores": None, "memory": None, "refused": None, "out_of_range": None}
    try:
        chip = DynapcnnNetwork(net, input_shape=shape, discretize=False)
        result["layers"] = len(chip.dynapcnn_layers)
        result["memory"] = {
            kind: {str(k): int(v) for k, v in per.items()} for kind, per in chip.memory_summary().items()
        }
        layers = chip.dynapcnn_layers
        result["out_of_range"] = [p for k in sorted(layers) for p in out_of_range(int(k), layers[k])]
        cores = ChipFactory(DEVICE).get_config_builder().map_layers_to_cores(chip.dynapcnn_layers)
        result["cores"] = {str(k): int(v) for k, v in cores.items()}
    except Exception as err:  # sinabs' refusals (InvalidModel, InvalidEdge, "No valid mapping found") are the result
        result["refused"] = f"{type(err).__name__}: {err}"
    if result["refused"] is not None:
        result["config"] = "not made (sinabs refused the network)"
    elif not samna_installed:
        result["config"] = "not made: samna is not installed (its PyPI package is a stub that downloads the real one)"
    else:
        chip.make_config(device=DEVICE)
        result["config"] = "made"
    print(f"version: {getattr(sinabs, '__version__', 'unknown')}")
    print("result: " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
