"""The units of the kinds the NSM is compared against (``nsm.neurons.KINDS`` says which kind uses which):

- ``SignConv2d`` / ``SignLinear`` (bd, wbd): z = sgn(u), optionally weight-normalized;
- ``NoisyRectifierConv2d`` / ``NoisyRectifierLinear`` (sn): h = max(0, u + n), n ~ N(0, sigma^2);
- ``RealConv2d`` / ``RealLinear`` (dcnn): h = max(0, BN(u));
- ``PlainConv2d`` / ``PlainLinear`` (plain): h = hardtanh(u), the cost reference of ``nsm bench``.

u = w.x + b is the pre-activation. Each answers the questions of ``nsm.affine.AffineUnit`` for its own family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from events.errors import InputError

from . import functional as nsmf
from .affine import AffineConv2d, AffineLinear, AffineMap, MapSet
from .modes import EXPECTATION_MODES, StochasticUnit


def _scale_affine(gain: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """u = gain_i (...) + b_i becomes scale_i u + shift_i: ``gain`` (first dimension: units) times scale, and
    b <- scale b + shift."""
    if bias is None and bool((shift != 0).any()):
        raise InputError("a unit without bias cannot shift its pre-activation")
    gain.mul_(scale.reshape((-1,) + (1,) * (gain.dim() - 1)))
    if bias is not None:
        bias.mul_(scale).add_(shift)


class _SignUnit:
    """bd / wbd: z = sgn(u) with sgn(0) = +1, trained with the straight-through hardtanh gradient.

    With ``weight_norm`` the weights are g w / ||w|| (Salimans & Kingma 2016), g one per unit and
    initialised to ||w||, so an untrained wbd unit computes what the bd unit would.
    """

    binary = True

    def _init_unit(self, weight_norm: bool) -> None:
        self.weight_norm = weight_norm
        self.g = nn.Parameter(nsmf.weight_norm(self.weight).detach().clone()) if weight_norm else None

    @property
    def gain(self) -> nn.Parameter | None:
        """g (wbd), which scales the pre-activation; None for bd."""
        return self.g

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

    def preactivation_map(self) -> AffineMap:
        """w' = g w/||w|| (wbd; w for bd), b' = b."""
        folded = None if self.g is None else "g into w' = g w/||w||"
        return AffineMap(self.effective_weight(), self.bias, folded=folded)

    @torch.no_grad()
    def set_preactivation_map(self, weight: torch.Tensor, bias: torch.Tensor | None) -> MapSet:
        """weight = w', bias = b', and for wbd g = ||w'||: the pre-activation is w'.x + b'."""
        done = super().set_preactivation_map(weight, bias)
        if self.g is None:
            return done
        self.g.copy_(nsmf.weight_norm(weight))
        return MapSet(
            (*done.names, "g"), "weight = w', g = ||w'||, bias = b' (pre-activation u = w'.x + b', the source's)"
        )


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
            raise InputError(f"noisy rectifier needs sigma > 0 (got {sigma})")
        self.sigma = sigma

    def preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """u = w.x + b, before the noise."""
        return self.affine(x, self.weight, self.bias)

    @torch.no_grad()
    def scale_preactivation(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Make the pre-activation scale_i u_i + shift_i (scale_i > 0): w_i and b_i times scale_i, plus shift_i."""
        _scale_affine(self.weight, self.bias, scale, shift)

    def preactivation_map(self) -> AffineMap:
        """w' = w, b' = b; the noise n left out."""
        return AffineMap(self.weight, self.bias, dropped=f"noise n ~ N(0, {self.sigma:g}^2)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode in EXPECTATION_MODES:
            raise InputError(
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

    def preactivation_map(self) -> AffineMap:
        """The convolution and batch norm as one map, w'.x + b' = BN(w.x + b) in evaluation:
        w' = gamma w / sqrt(var + eps), b' = gamma (b - mean) / sqrt(var + eps) + beta_bn (running statistics)."""
        norm = self.norm
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        bias = self.bias if self.bias is not None else torch.zeros_like(norm.running_mean)
        shape = (-1,) + (1,) * (self.weight.dim() - 1)
        return AffineMap(
            self.weight * scale.reshape(shape),
            (bias - norm.running_mean) * scale + norm.bias,
            folded="batch-norm statistics folded into w', b' (running mean, variance, gamma, beta)",
        )

    @torch.no_grad()
    def set_preactivation_map(self, weight: torch.Tensor, bias: torch.Tensor | None) -> MapSet:
        """weight = w', bias = b', the batch norm reset to identity (running mean 0, variance 1, gamma 1, beta 0):
        exact in evaluation; in training the batch statistics re-centre every unit."""
        done = super().set_preactivation_map(weight, bias)
        self.norm.reset_parameters()
        how = (
            "reset to identity (running mean 0, variance 1, gamma 1, beta 0; exact in evaluation, re-centred by "
            "batch statistics in training)"
        )
        return MapSet(done.names, done.rule, reset=("batch norm", how))


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
