"""The affine maps every unit kind is built on: ``AffineConv2d`` and ``AffineLinear`` (weights, bias, the product,
the border), and what a unit says about itself to the code that copies or exports it (``AffineUnit``).

Every product returns the dtype of its input. Under autocast (``torch.autocast``, e.g. bfloat16 on a CPU with native
bf16 instructions) the products run in the lower precision; states that are exact in it (sampled or deterministic
+-1, ``Binarize``'s) stay in it from layer to layer, while moments and means (the expectation modes) and logits are
float32 (``nsm.moments.widened``), so that only the products are rounded there. An input of spikes (binary
states in one byte each, ``nsm.spikes``: the ``int8`` precision) is multiplied by int8 weights into bfloat16
logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from . import spikes
from .weight_cache import memo

OFF_STATE = -1.0


def border_value(binary: bool) -> float:
    """What a convolution's border holds: the "off" state -1 for units that exchange {-1, +1} states (so that every
    input a unit reads is +-1, z_j^2 = 1 at the border too, and the {0, 1} spike form with zero padding is exact,
    docs/design.md section 6), 0 for real-valued units."""
    return OFF_STATE if binary else 0.0


@dataclass(frozen=True)
class AffineMap:
    """u = weight.x + bias: the affine map of its input whose sign (or rectification) a unit computes when it runs
    deterministically in evaluation. ``folded``: the unit's own parameters folded into it, ``dropped``: what of the
    unit it leaves out (its noise), in words (None: nothing)."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    folded: str | None = None
    dropped: str | None = None


@dataclass(frozen=True)
class MapSet:
    """What a unit did to take a map: the tensors it set (``names``), how (``rule``, in words), and a part of it that
    the map does not cover and that it reset (``reset``: the part and how, or None)."""

    names: tuple[str, ...]
    rule: str
    reset: tuple[str, str] | None = None


class AffineUnit(nn.Module):
    """What every unit says about itself, whatever its kind, so that no caller needs to know its class:

    - ``binary``: it exchanges {-1, +1} states (and a convolution pads with -1, ``border_value``);
    - ``firing_logit``: it is an NSM unit, firing from a logit v = W_eff z + b_eff (``nsm.layers``): it samples from
      precomputed logits (``states_from_logit``), takes the expectation passes (``expected_logit``,
      ``variance_rule``) and batch-normalized logits (``logit_norm``);
    - ``neuron``: the name of the kind it was built as (``nsm.neurons.KINDS``, set by the kind's builders; None for a
      unit built directly);
    - ``gain``: the parameter that scales its firing logit, if any;
    - its deterministic pre-activation as an affine map (``preactivation_map``, ``set_preactivation_map``,
      ``keep_logit_of``): what export writes and how a warm start carries a unit into another kind.
    """

    binary = False
    firing_logit = False
    neuron: str | None = None
    unit_dim = 1

    @property
    def gain(self) -> nn.Parameter | None:
        """The parameter that scales the unit's firing logit, and so sets how deterministic it is (None: none)."""
        return None

    def preactivation_map(self) -> AffineMap:
        """The map u = w.x + b (``AffineMap``): the unit's weight and bias."""
        return AffineMap(self.weight, self.bias)

    @torch.no_grad()
    def set_preactivation_map(self, weight: torch.Tensor, bias: torch.Tensor | None) -> MapSet:
        """Make the unit's deterministic pre-activation weight.x + bias times a positive factor (the same zero
        crossings): weight and bias copied."""
        self.weight.copy_(weight)
        if bias is None:
            names = ("weight",)
        else:
            self.bias.copy_(bias)
            names = ("weight", "bias")
        return MapSet(names, "weight = w', bias = b' (pre-activation u = w'.x + b', the source's)")

    @torch.no_grad()
    def keep_logit_of(self, source: nn.Module) -> MapSet | None:
        """Take more of ``source`` than its zero crossings where both units share a parametrization (None: they do
        not, and ``set_preactivation_map`` applies)."""
        return None


class AffineConv2d(AffineUnit):
    """Weights and the 2-d convolution shared by the unit kinds; ``pad_value`` (``border_value``) fills the border."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = _pair(kernel_size), _pair(stride), _pair(padding)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation of ``nn.Conv2d``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def pad_value(self) -> float:
        """The border's value (``border_value``)."""
        return border_value(self.binary)

    @property
    def out_features(self) -> int:
        return self.out_channels

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.padding
        return F.pad(x, (pw, pw, ph, ph), value=self.pad_value) if (ph or pw) else x

    def affine_padded(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
        """W * x + b for an input already padded by ``pad_input``."""
        return F.conv2d(x, weight, bias, self.stride).to(x.dtype)

    def affine_zero_padded(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """W * x with the border filled by 0 (e.g. the variances of states whose border is constant)."""
        return F.conv2d(x, weight, None, self.stride, self.padding).to(x.dtype)

    def receptive_field_mean(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H', W'): the mean of ``x`` over each output position's receptive field, every channel and kernel
        offset, the border counting as 0 (the ``window-mean`` variance rule, ``nsm.moments``)."""
        return F.avg_pool2d(x.mean(1, keepdim=True), self.kernel_size, self.stride, self.padding)

    def affine(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
        """W * x + b with the border filled by ``pad_value``. Of spikes (``nsm.spikes``): the int8 product's
        bfloat16 logits where the border is the off state (the spike 0), else of the decoded states."""
        if spikes.is_spikes(x):
            if self.pad_value == OFF_STATE:
                return spikes.conv2d(self, x, weight, bias, self.stride, self.padding)
            x = spikes.decode(x)
        pad_value = self.pad_value
        if pad_value == 0.0:
            return F.conv2d(x, weight, bias, self.stride, self.padding).to(x.dtype)
        (ph, pw), (kh, kw) = self.padding, self.kernel_size
        same = self.stride == (1, 1) and (kh, kw) == (2 * ph + 1, 2 * pw + 1)
        # Under autograd the in-place border writes below cost more (slice copies) than padding the input.
        if not same or x.shape[-2] < kh or x.shape[-1] < kw or not (ph or pw) or torch.is_grad_enabled():
            return self.affine_padded(self.pad_input(x), weight, bias)
        # Zero padding, then add what the pad_value border contributes (``border_rows``; kept in a WeightCache).
        out = F.conv2d(x, weight, bias, 1, self.padding).to(x.dtype)
        h, w = out.shape[-2:]
        top, bottom, sides = memo(self, "_border_cache", [weight], w, lambda: self.border_rows(weight, w))
        if ph:
            out[..., :ph, :] += top
            out[..., h - ph :, :] += bottom
        if pw:
            out[..., ph : h - ph, :pw] += sides[..., :pw]
            out[..., ph : h - ph, w - pw :] += sides[..., pw:]
        return out

    def border_rows(self, weight: torch.Tensor, width: int):
        """What the ``pad_value`` border adds to a 'same' convolution's output, beyond zero padding.

        It depends only on how many taps of a position fall outside, which is the same all along each edge,
        so a (kh x kw) map of the border's contribution holds every case. Returns the top rows and bottom rows
        (C_out, ph, width) and the side columns (C_out, 1, 2 pw): left pw, then right pw.
        """
        (ph, pw), (kh, kw) = self.padding, self.kernel_size
        with torch.autocast(weight.device.type, enabled=False):  # cached and reused: kept exact
            edge = F.conv2d(
                F.pad(weight.new_zeros(1, weight.shape[1], kh, kw), (pw, pw, ph, ph), value=self.pad_value), weight
            )[0]
        cols = torch.cat([torch.arange(pw), torch.full((width - 2 * pw,), pw), torch.arange(pw + 1, kw)])
        cols = cols.to(weight.device)
        sides = torch.cat([edge[:, ph : ph + 1, :pw], edge[:, ph : ph + 1, pw + 1 :]], dim=-1)
        return edge[:, :ph][..., cols], edge[:, ph + 1 :][..., cols], sides

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding} (value {self.pad_value:g}), bias={self.bias is not None}"
        )


class AffineLinear(AffineUnit):
    """Weights and the matrix product shared by the unit kinds (no padding)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation of ``nn.Linear``."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound)

    def pad_input(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def affine_padded(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
        """W x + b in ``x``'s dtype; of spikes (``nsm.spikes``), the int8 product's bfloat16 logits."""
        if spikes.is_spikes(x):
            return spikes.linear(self, x, weight, bias)
        return F.linear(x, weight, bias).to(x.dtype)

    affine = affine_padded

    def affine_zero_padded(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight).to(x.dtype)

    @staticmethod
    def receptive_field_mean(x: torch.Tensor) -> torch.Tensor:
        """(B, 1): the mean of ``x`` over the features, every unit's receptive field."""
        return x.mean(1, keepdim=True)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
