"""Neuron kinds: the NSM and the seed's comparison methods behind one ``neuron=`` switch.

Every model is built from ``conv_unit``, ``linear_unit`` and ``pool_unit`` of a kind, so the same
layout can be trained with each method (docs/design.md section 4). Notation: x the layer input,
u = w.x + b the pre-activation, v the NSM firing logit (``nsm.functional``), erf' its derivative
2/sqrt(pi) exp(-v^2), and 1[.] an indicator.

======  =========================================  ============================  ==========================
kind    forward                                    gradient used                 source
======  =========================================  ============================  ==========================
bnsm    z = +1 w.p. 1/2(1+erf v), Bernoulli(p)     dz/dv = erf'(v)               Detorakis et al., NSM (seed)
gnsm    same, Gaussian N(1, sigma^2) noise         dz/dv = erf'(v)               Detorakis et al., NSM (seed)
ste     bnsm's stochastic forward                  dz/dv = 1[|v| <= 1]           Bengio et al. 2013, STE
bn      z = sgn(v), deterministic                  dz/dv = erf'(v)               seed: "binary network trained
                                                                                 with gradients on erf"
bd      z = sgn(u), deterministic                  dz/du = 1[|u| <= 1]           Hubara et al. 2016 (BNN)
wbd     z = sgn(g w/||w||.x + b)                   dz/du = 1[|u| <= 1]           bd + Salimans & Kingma 2016
sn      h = max(0, u + n), n ~ N(0, sigma^2)       dh/du = 1[u + n > 0]          Bengio et al. 2013, noisy
                                                                                 rectifier
dcnn    h = max(0, BN(u)), real-valued             exact (backprop)              deterministic CNN baseline
======  =========================================  ============================  ==========================

Binary kinds (all but ``sn`` and ``dcnn``) exchange {-1, +1} states and pad convolutions with -1;
the real-valued kinds pad with 0. ``plain`` (conv or linear + hardtanh, zero padding) is not one
of the seed's methods: it is the cost reference that ``nsm bench`` compares the NSM against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import functional as nsmf
from .layers import EXPECTATION_MODES, AffineConv2d, AffineLinear, BinaryMaxPool2d, NSMConv2d, NSMLinear, StochasticUnit
from .noise import BernoulliNoise, GaussianNoise


def _scale_affine(gain: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """u = gain_i (...) + b_i becomes scale_i u + shift_i: ``gain`` (first dimension: units) times scale, and
    b <- scale b + shift."""
    if bias is None and bool((shift != 0).any()):
        raise ValueError("a unit without bias cannot shift its pre-activation")
    gain.mul_(scale.reshape((-1,) + (1,) * (gain.dim() - 1)))
    if bias is not None:
        bias.mul_(scale).add_(shift)


class _SignUnit:
    """bd / wbd: z = sgn(u) with sgn(0) = +1, trained with the straight-through hardtanh gradient.

    With ``weight_norm`` the weights are g w / ||w|| (Salimans & Kingma 2016), g one per unit and
    initialised to ||w||, so an untrained wbd unit computes what the bd unit would.
    """

    pad_value = -1.0

    def _init_unit(self, weight_norm: bool) -> None:
        self.weight_norm = weight_norm
        self.g = nn.Parameter(nsmf.weight_norm(self.weight).detach().clone()) if weight_norm else None

    def effective_weight(self) -> torch.Tensor:
        if self.g is None:
            return self.weight
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        return self.weight * (self.g / nsmf.weight_norm(self.weight)).reshape(shape)

    def preactivation(self, z: torch.Tensor) -> torch.Tensor:
        """u = w.z + b (w the weight-normalized weight for wbd)."""
        return self.affine(z, self.effective_weight(), self.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return nsmf.with_surrogate(self.preactivation(z), nsmf.sign_states, "hardtanh", overwrite=True)

    @staticmethod
    def state_probability(u: torch.Tensor) -> torch.Tensor:
        """P(state = +1) = 1[u >= 0] for pre-activations ``u``."""
        return (u >= 0).to(u.dtype)

    @torch.no_grad()
    def scale_preactivation(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Make the pre-activation scale_i u_i + shift_i (scale_i > 0): g (wbd) or w (bd) times scale_i,
        b_i <- scale_i b_i + shift_i."""
        _scale_affine(self.g if self.g is not None else self.weight, self.bias, scale, shift)


class SignConv2d(_SignUnit, AffineConv2d):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, weight_norm=False):
        AffineConv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, bias)
        self._init_unit(weight_norm)


class SignLinear(_SignUnit, AffineLinear):
    def __init__(self, in_features, out_features, bias=True, weight_norm=False):
        AffineLinear.__init__(self, in_features, out_features, bias)
        self._init_unit(weight_norm)


class _NoisyRectifierUnit(StochasticUnit):
    """sn: h = max(0, u + n) with n ~ N(0, sigma^2) while sampling; max(0, u) in ``deterministic`` mode (it has
    no ``expected`` mode)."""

    def _init_unit(self, sigma: float) -> None:
        if not sigma > 0:
            raise ValueError(f"noisy rectifier needs sigma > 0 (got {sigma})")
        self.sigma = sigma

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """u = w.x + b, before the noise."""
        return self.affine(x, self.weight, self.bias)

    @torch.no_grad()
    def scale_preactivation(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Make the pre-activation scale_i u_i + shift_i (scale_i > 0): w_i and b_i times scale_i, plus shift_i."""
        _scale_affine(self.weight, self.bias, scale, shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode in EXPECTATION_MODES:
            raise ValueError(
                f"the noisy rectifier (sn) has no {self.mode} mode: that mode propagates the means of binary states"
            )
        u = self.preactivation(x)
        if self.mode != "deterministic":
            u = u + self.sigma * torch.randn(u.shape, device=u.device, dtype=u.dtype, generator=self.generator)
        return F.relu(u)


class NoisyRectifierConv2d(_NoisyRectifierUnit, AffineConv2d):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True, sigma=1.0):
        AffineConv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, bias)
        self._init_unit(sigma)


class NoisyRectifierLinear(_NoisyRectifierUnit, AffineLinear):
    def __init__(self, in_features, out_features, bias=True, sigma=1.0):
        AffineLinear.__init__(self, in_features, out_features, bias)
        self._init_unit(sigma)


class _RealUnit:
    """dcnn: h = max(0, BN(u)), a deterministic real-valued unit with batch normalization."""

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """BN(u) with this batch's statistics, leaving the running statistics untouched."""
        n = self.norm
        return F.batch_norm(self.affine(x, self.weight, self.bias), None, None, n.weight, n.bias, True, 0.0, n.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.affine(x, self.weight, self.bias)))


class RealConv2d(_RealUnit, AffineConv2d):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        AffineConv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, bias)
        self.norm = nn.BatchNorm2d(out_channels)


class RealLinear(_RealUnit, AffineLinear):
    def __init__(self, in_features, out_features, bias=True):
        AffineLinear.__init__(self, in_features, out_features, bias)
        self.norm = nn.BatchNorm1d(out_features)


class _PlainUnit:
    """plain: h = hardtanh(u), zero padding; the cost reference for benchmarks."""

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine(x, self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.hardtanh(self.preactivation(x))


class PlainConv2d(_PlainUnit, AffineConv2d):
    pass


class PlainLinear(_PlainUnit, AffineLinear):
    pass


@dataclass(frozen=True)
class KindFacts:
    """What a neuron kind is: its human ``label``, whether its units exchange {-1, +1} states (``binary``) and
    whether they draw their states at random when the network samples (``samples``: Monte Carlo prediction
    averages over draws; a NIR export marks such units for the stochastic runtime)."""

    label: str
    binary: bool
    samples: bool


KINDS: dict[str, KindFacts] = {
    "bnsm": KindFacts("Bernoulli NSM", binary=True, samples=True),
    "gnsm": KindFacts("Gaussian NSM", binary=True, samples=True),
    "dcnn": KindFacts("CNN with batch normalization (dCNN)", binary=False, samples=False),
    "ste": KindFacts("NSM with straight-through estimator (STE)", binary=True, samples=True),
    "bd": KindFacts("binary deterministic (BD)", binary=True, samples=False),
    "wbd": KindFacts("binary deterministic, weight-normalized (wBD)", binary=True, samples=False),
    "sn": KindFacts("stochastic network, no normalization (SN)", binary=False, samples=True),
    "bn": KindFacts("binary network, erf gradients (BN)", binary=True, samples=False),
}
"""The seed's methods, in the order of its comparison table (the module docstring's table says how each
computes)."""

NEURON_KINDS = tuple(KINDS)
BINARY_KINDS = tuple(k for k, facts in KINDS.items() if facts.binary)
BENCH_REFERENCE = "plain"


@dataclass(frozen=True)
class NeuronKind:
    """How to build the units of one kind (``conv``, ``linear``: module builders); ``binary`` kinds exchange
    {-1, +1} states. Every unit built is tagged with the kind's name (``unit.neuron``)."""

    name: str
    binary: bool
    conv: Callable[..., nn.Module]
    linear: Callable[..., nn.Module]


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
    bern, gauss = BernoulliNoise(noise_p), GaussianNoise(noise_sigma)
    try:
        conv_bern = bern if conv_noise_p is None else BernoulliNoise(conv_noise_p)
    except ValueError as err:
        raise ValueError(f"conv_noise_p: {err}") from None
    table = {
        "bnsm": (NSMConv2d, NSMLinear, {"noise": bern}),
        "gnsm": (NSMConv2d, NSMLinear, {"noise": gauss}),
        "ste": (NSMConv2d, NSMLinear, {"noise": bern, "estimator": "ste"}),
        "bn": (NSMConv2d, NSMLinear, {"noise": bern, "mode": "deterministic"}),
        "bd": (SignConv2d, SignLinear, {"weight_norm": False}),
        "wbd": (SignConv2d, SignLinear, {"weight_norm": True}),
        "sn": (NoisyRectifierConv2d, NoisyRectifierLinear, {"sigma": sn_sigma}),
        "dcnn": (RealConv2d, RealLinear, {}),
        BENCH_REFERENCE: (PlainConv2d, PlainLinear, {}),
    }
    if name not in table:
        raise ValueError(f"unknown neuron kind {name!r}; expected one of {', '.join(NEURON_KINDS)} (or 'plain')")
    conv, linear, options = table[name]
    conv_options = dict(options, noise=conv_bern) if options.get("noise") is bern else options
    binary = KINDS[name].binary if name in KINDS else False
    return NeuronKind(name, binary, _tagged(name, conv, conv_options), _tagged(name, linear, options))


def gain_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that scale a unit's firing logit, and so set how deterministic it is: each NSM unit's beta
    and each weight-normalized sign unit's gain g."""
    gains = []
    for module in model.modules():
        if isinstance(module, (NSMConv2d, NSMLinear)):
            gains.append(module.beta)
        elif isinstance(module, _SignUnit) and module.g is not None:
            gains.append(module.g)
    return gains


def pool_unit(kind: NeuronKind, kernel_size: int = 2) -> nn.Module:
    """Max-pooling; for binary kinds the OR-pool ``BinaryMaxPool2d`` (the same arithmetic)."""
    return BinaryMaxPool2d(kernel_size) if kind.binary else nn.MaxPool2d(kernel_size)
