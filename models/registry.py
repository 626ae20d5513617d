"""Model registry: ``create_model(name, ...)`` builds any registered architecture with any neuron kind."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from events.errors import InputError
from nsm.grid import WeightGrid
from nsm.layers import Binarize, Readout, check_input_levels
from nsm.neurons import KINDS, NEURON_KINDS, neuron_kind

from .allconvnet import allconvnet12, allconvnet18
from .cnn import nmnist_cnn
from .network import Network
from .specknet import specknet

NEURON_OPTIONS = ("noise_p", "conv_noise_p", "noise_sigma", "sn_sigma")
INPUT_OPTION = "input_levels"
GRID_OPTIONS = ("weight_bits", "bias_limit")
_SIZE_ARGS = ("in_channels", "input_size", "num_classes", "kind")
MAX_PARAMETERS = 1 << 28
"""The most parameters a network may have: 2^28 float32 weights are 1 GiB, and training holds four times that
(gradients and Adam's two moments); the full-width ``allconvnet18`` has about 1.1 million."""


@dataclass(frozen=True)
class ModelEntry:
    build: Callable
    in_channels: int
    input_size: tuple[int, int]
    num_classes: int
    summary: str


_MODELS = {
    "allconvnet18": ModelEntry(
        allconvnet18, 6, (64, 64), 11, "18-layer all-convolutional net for DVS Gesture (six 16 ms frames, 64x64)"
    ),
    "allconvnet12": ModelEntry(allconvnet12, 3, (32, 32), 10, "12-layer all-convolutional net (CIFAR-style, seed)"),
    "specknet": ModelEntry(
        specknet, 6, (32, 32), 11, "9-convolution NSM sized for Speck (DYNAP-CNN): stride-2 convs, no pools, 32x32"
    ),
    "nmnist_cnn": ModelEntry(nmnist_cnn, 10, (34, 34), 10, "32c5-p2-64c5-p2-1024-10 for N-MNIST (seed)"),
}


def list_models() -> list[str]:
    """Names accepted by ``create_model``."""
    return sorted(_MODELS)


def model_summary(name: str) -> str:
    return _entry(name).summary


def check_parameter_count(net: Network, what: str) -> None:
    """``ValueError`` naming ``what`` (the options or file the network came from) when ``net`` has more than
    ``MAX_PARAMETERS`` parameters; build it on torch's meta device first, which allocates nothing."""
    n = sum(p.numel() for p in net.parameters())
    if n > MAX_PARAMETERS:
        name = net.spec["name"]
        raise InputError(f"{what}: {name} would have {n} parameters, more than the {MAX_PARAMETERS} allowed")


def _entry(name: str) -> ModelEntry:
    if name not in _MODELS:
        raise InputError(f"unknown model {name!r}; available: {', '.join(list_models())}")
    return _MODELS[name]


def create_model(
    name: str,
    *,
    in_channels: int | None = None,
    input_size=None,
    num_classes: int | None = None,
    neuron: str = "bnsm",
    **kw,
) -> Network:
    """Build model ``name`` with ``neuron`` units (``nsm.NEURON_KINDS``).

    Sizes default to the architecture's own (see ``list_models``). Neuron options ``noise_p``,
    ``conv_noise_p`` (the convolutions' own Bernoulli p), ``noise_sigma``, ``sn_sigma`` go to
    ``nsm.neuron_kind``; ``input_levels`` (event counts, default [1]) sets the input's thermometer code
    (``nsm.Binarize``: ``in_channels`` count channels become ``in_channels`` x levels state channels);
    ``weight_bits`` (and ``bias_limit``) put every unit and the readout on an n-bit integer weight grid
    (``nsm.grid``: the network is then the one an n-bit target runs; NSM kinds only); other
    keywords (e.g. ``width``) go to the architecture. The returned network's ``spec`` rebuilds it
    (``create_model(**net.spec)``), the neuron and input options included.
    """
    entry = _entry(name)
    in_channels = entry.in_channels if in_channels is None else int(in_channels)
    input_size = tuple(int(s) for s in (entry.input_size if input_size is None else input_size))
    num_classes = entry.num_classes if num_classes is None else int(num_classes)
    kind = neuron_kind(neuron, **{k: kw[k] for k in NEURON_OPTIONS if k in kw})
    arch_kw = {k: v for k, v in kw.items() if k not in (*NEURON_OPTIONS, INPUT_OPTION, *GRID_OPTIONS)}
    allowed = [p for p in inspect.signature(entry.build).parameters if p not in _SIZE_ARGS]
    unknown = sorted(set(arch_kw) - set(allowed))
    if unknown:
        valid = allowed + list(NEURON_OPTIONS) + [INPUT_OPTION] + list(GRID_OPTIONS)
        raise InputError(f"unknown option(s) {unknown} for model {name!r}; valid: {valid}")
    binarize = Binarize(check_input_levels(kw.get(INPUT_OPTION, (1,)), f"model option {INPUT_OPTION}"))
    # Every architecture starts with its own default Binarize: built for the coded channels, it takes this one.
    layers = entry.build(binarize.out_channels(in_channels), input_size, num_classes, kind, **arch_kw)
    layers[0] = binarize
    if "weight_bits" in kw:
        _put_on_grid(layers, WeightGrid(kw["weight_bits"], kw.get("bias_limit")), neuron)
    elif "bias_limit" in kw:
        raise InputError("model option bias_limit needs weight_bits (the grid it bounds the biases of)")
    spec = dict(
        name=name, in_channels=in_channels, input_size=list(input_size), num_classes=num_classes, neuron=neuron, **kw
    )
    return Network(layers, spec)


def _put_on_grid(layers, grid: WeightGrid, neuron: str) -> None:
    """Every NSM unit (``firing_logit``) and the readout of ``layers`` on ``grid``; ``ValueError`` for units of
    another kind."""
    modules = [m for layer in layers for m in layer.modules()]
    readout_parts = {id(part) for m in modules if isinstance(m, Readout) for part in m.children()}
    for module in modules:
        if isinstance(module, Readout) or getattr(module, "firing_logit", False):
            module.grid = grid
        elif next(module.parameters(recurse=False), None) is not None and id(module) not in readout_parts:
            nsm_kinds = ", ".join(name for name in NEURON_KINDS if KINDS[name].conv.firing_logit)
            raise InputError(
                f"model option weight_bits needs NSM units ({nsm_kinds}); {neuron} units "
                f"({type(module).__name__}) have no weight grid"
            )
