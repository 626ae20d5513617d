"""Neuron kinds: the NSM and the seed's comparison methods behind one ``neuron=`` switch.

Every model is built from the ``conv`` and ``linear`` builders of a kind (``neuron_kind``) and ``pool_unit``, so
the same layout can be trained with each method (docs/design.md section 4). ``KINDS`` holds one record (``Kind``)
per kind, and every fact about a kind is written there once: its label, its unit classes and their options, whether
it samples, and its row of the table below, which is rendered from the records (``kind_table``; docs/design.md
section 4 shows the same table, checked by tests/test_neurons.py). Whether a kind is binary, and so how its
convolutions pad, is a fact of its unit classes that the record reports; code that holds a unit asks the unit
(``nsm.affine.AffineUnit``: ``binary``, ``neuron``, ``gain``, its pre-activation map for export and warm start),
never its class.

Notation: x the layer input, u = w·x + b the pre-activation, v the NSM firing logit (``nsm.functional``), erf' its
derivative 2/√π exp(−v²), 1[·] an indicator. ``plain`` is not one of the seed's methods (not in ``NEURON_KINDS``):
it is the cost reference that ``nsm bench`` compares the NSM against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from torch import nn

from events.errors import InputError

from .affine import AffineConv2d, AffineLinear, AffineUnit, border_value
from .baseline_units import (
    NoisyRectifierConv2d,
    NoisyRectifierLinear,
    PlainConv2d,
    PlainLinear,
    RealConv2d,
    RealLinear,
    SignConv2d,
    SignLinear,
)
from .layers import BinaryMaxPool2d, NSMConv2d, NSMLinear
from .noise import BernoulliNoise, GaussianNoise, Noise


@dataclass(frozen=True)
class NeuronOptions:
    """The neuron options of ``models.create_model`` as the unit classes take them: ``bernoulli`` (``noise_p``),
    ``conv_bernoulli`` (``conv_noise_p``, else ``noise_p``: the convolutions' own), ``gaussian`` (``noise_sigma``),
    ``sn_sigma`` (the noisy rectifier's)."""

    bernoulli: Noise
    conv_bernoulli: Noise
    gaussian: Noise
    sn_sigma: float

    @classmethod
    def of(
        cls, noise_p: float = 0.5, conv_noise_p: float | None = None, noise_sigma: float = 1.0, sn_sigma: float = 1.0
    ) -> NeuronOptions:
        """The noise laws of the options, each checked (``ValueError`` naming a bad ``conv_noise_p``)."""
        bernoulli, gaussian = BernoulliNoise(noise_p), GaussianNoise(noise_sigma)
        try:
            conv_bernoulli = bernoulli if conv_noise_p is None else BernoulliNoise(conv_noise_p)
        except ValueError as err:
            raise InputError(f"conv_noise_p: {err}") from None
        return cls(bernoulli, conv_bernoulli, gaussian, sn_sigma)

    def for_conv(self) -> NeuronOptions:
        """The options a convolution takes: its own Bernoulli noise."""
        return replace(self, bernoulli=self.conv_bernoulli)


@dataclass(frozen=True)
class Kind:
    """One neuron kind: ``name``, its human ``label``, its unit classes (``conv``, ``linear``) and the keyword
    arguments it builds them with (``options``, from the ``NeuronOptions``), whether its units draw their states at
    random when the network samples (``samples``: Monte Carlo prediction averages over draws, an export marks such
    units for the stochastic runtime), and its row of the kind table (``forward``, ``gradient``, ``source``)."""

    name: str
    label: str
    conv: type[AffineConv2d]
    linear: type[AffineLinear]
    options: Callable[[NeuronOptions], dict]
    samples: bool
    forward: str
    gradient: str
    source: str

    @property
    def binary(self) -> bool:
        """Whether its units exchange {-1, +1} states (and use the OR-pool): its unit classes' ``binary``."""
        return self.conv.binary

    @property
    def pad_value(self) -> float:
        """What its convolutions' border holds (``nsm.affine.border_value``)."""
        return border_value(self.binary)

    @property
    def sampling_mode(self) -> str:
        """The mode its units are in when the network samples: ``probability`` if it samples, else
        ``deterministic`` (what an export records per unit)."""
        return "probability" if self.samples else "deterministic"

    def row(self) -> tuple[str, ...]:
        """Its row of ``kind_table``."""
        yes = {True: "yes", False: "no"}
        pad = f"{self.pad_value:g}".replace("-", "−")
        return (f"`{self.name}`", self.forward, self.gradient, yes[self.binary], yes[self.samples], pad, self.source)


_NSM = (NSMConv2d, NSMLinear)
_KIND_LIST = (
    Kind(
        "bnsm",
        "Bernoulli NSM",
        *_NSM,
        lambda o: {"noise": o.bernoulli},
        samples=True,
        forward="NSM unit, z = +1 w.p. ½(1+erf v), Bernoulli(p) noise",
        gradient="erf'(v)",
        source="Detorakis et al., NSM (seed)",
    ),
    Kind(
        "gnsm",
        "Gaussian NSM",
        *_NSM,
        lambda o: {"noise": o.gaussian},
        samples=True,
        forward="NSM unit, Gaussian N(1, σ²) noise",
        gradient="erf'(v)",
        source="Detorakis et al., NSM (seed)",
    ),
    Kind(
        "dcnn",
        "CNN with batch normalization (dCNN)",
        RealConv2d,
        RealLinear,
        lambda o: {},
        samples=False,
        forward="h = max(0, BN(u)), real-valued, batch normalization",
        gradient="exact",
        source="deterministic CNN baseline",
    ),
    Kind(
        "ste",
        "NSM with straight-through estimator (STE)",
        *_NSM,
        lambda o: {"noise": o.bernoulli, "estimator": "ste"},
        samples=True,
        forward="bnsm's forward",
        gradient="1[|v| ≤ 1]",
        source="Bengio et al. 2013, STE",
    ),
    Kind(
        "bd",
        "binary deterministic (BD)",
        SignConv2d,
        SignLinear,
        lambda o: {"weight_norm": False},
        samples=False,
        forward="z = sgn(u)",
        gradient="1[|u| ≤ 1]",
        source="Hubara et al. 2016 (BNN)",
    ),
    Kind(
        "wbd",
        "binary deterministic, weight-normalized (wBD)",
        SignConv2d,
        SignLinear,
        lambda o: {"weight_norm": True},
        samples=False,
        forward="z = sgn(g (w/‖w‖)·x + b), g per unit initialised to ‖w‖",
        gradient="1[|u| ≤ 1]",
        source="bd + Salimans & Kingma 2016",
    ),
    Kind(
        "sn",
        "stochastic network, no normalization (SN)",
        NoisyRectifierConv2d,
        NoisyRectifierLinear,
        lambda o: {"sigma": o.sn_sigma},
        samples=True,
        forward="h = max(0, u + n), n ~ N(0, σ²); `deterministic` mode: max(0, u)",
        gradient="1[u + n > 0]",
        source="Bengio et al. 2013, noisy rectifier",
    ),
    Kind(
        "bn",
        "binary network, erf gradients (BN)",
        *_NSM,
        lambda o: {"noise": o.bernoulli, "mode": "deterministic"},
        samples=False,
        forward="NSM unit built in `deterministic` mode: z = sgn(v)",
        gradient="erf'(v)",
        source='seed: "binary network trained with gradients on erf"',
    ),
    Kind(
        "plain",
        "hardtanh reference (plain)",
        PlainConv2d,
        PlainLinear,
        lambda o: {},
        samples=False,
        forward="h = hardtanh(u)",
        gradient="hardtanh's",
        source="the cost reference of `nsm bench`",
    ),
)

KINDS: dict[str, Kind] = {kind.name: kind for kind in _KIND_LIST}
"""Every kind by name: the seed's methods in the order of its comparison table, then ``plain``."""

BENCH_REFERENCE = "plain"
NEURON_KINDS = tuple(name for name in KINDS if name != BENCH_REFERENCE)
"""The seed's methods, the kinds that ``nsm compare`` trains."""
BINARY_KINDS = tuple(name for name in NEURON_KINDS if KINDS[name].binary)


def kind_table() -> str:
    """The kinds as a Markdown table (kind, forward, gradient, binary, samples, pad, source), one row per record."""
    header = ("kind", "forward", "gradient", "binary", "samples", "pad", "source")
    rows = [header, ("---",) * len(header), *(kind.row() for kind in KINDS.values())]
    return "\n".join("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows)


@dataclass(frozen=True)
class NeuronKind:
    """The builders of one kind's units with its options (``conv``, ``linear``), and its record (``kind``). Every unit
    built is tagged with the kind's name (``unit.neuron``)."""

    kind: Kind
    conv: Callable[..., nn.Module]
    linear: Callable[..., nn.Module]

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def binary(self) -> bool:
        return self.kind.binary


def _tagged(name: str, cls, options: dict) -> Callable[..., nn.Module]:
    def build(*args, **kwargs) -> nn.Module:
        unit = cls(*args, **options, **kwargs)
        unit.neuron = name
        return unit

    return build


def neuron_kind(
    name: str,
    *,
    noise_p: float = 0.5,
    conv_noise_p: float | None = None,
    noise_sigma: float = 1.0,
    sn_sigma: float = 1.0,
) -> NeuronKind:
    """The unit builders of kind ``name`` (one of ``NEURON_KINDS`` or ``"plain"``).

    ``noise_p``: Bernoulli transmission probability (bnsm, ste, bn); ``conv_noise_p``: the convolutions'
    own Bernoulli probability, ``noise_p`` then holding for the fully connected units only (``None``: the
    same ``noise_p`` everywhere); ``noise_sigma``: Gaussian noise standard deviation (gnsm); ``sn_sigma``:
    the noisy rectifier's noise (sn).
    """
    options = NeuronOptions.of(noise_p, conv_noise_p, noise_sigma, sn_sigma)
    if name not in KINDS:
        raise InputError(f"unknown neuron kind {name!r}; expected one of {', '.join(NEURON_KINDS)} (or 'plain')")
    kind = KINDS[name]
    conv = _tagged(name, kind.conv, kind.options(options.for_conv()))
    return NeuronKind(kind, conv, _tagged(name, kind.linear, kind.options(options)))


def gain_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that scale a unit's firing logit, and so set how deterministic it is (``AffineUnit.gain``: each
    NSM unit's beta and each weight-normalized sign unit's gain g)."""
    return [m.gain for m in model.modules() if isinstance(m, AffineUnit) and m.gain is not None]


def pool_unit(kind: NeuronKind, kernel_size: int = 2) -> nn.Module:
    """Max-pooling; for binary kinds the OR-pool ``BinaryMaxPool2d`` (the same arithmetic)."""
    return BinaryMaxPool2d(kernel_size) if kind.binary else nn.MaxPool2d(kernel_size)


__doc__ = f"{__doc__}\n{kind_table()}\n"
