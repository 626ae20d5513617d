"""Binary states as 1-byte spikes and the int8 products that read them: the ``int8`` precision of Monte Carlo
prediction.

A binary state z in {-1, +1} is stored as its spike s = (z + 1) / 2 in {0, 1} (``uint8``: a byte per state instead of
two or four), so z = 2 s - 1. A unit's firing logit is then, exactly,

    v_i = sum_j W_ij z_j + b_i = sum_j (2 W_ij) s_j + (b_i - sum_j W_ij),

the sum over every weight of the unit, the border's included: a convolution's -1 border is the spike 0, so zero
padding is exact and no border correction remains (the spike form of docs/design.md section 6). The weights are
rounded per output unit to int8: W_ij ~ r_i q_ij, q_ij = round(W_ij / r_i) in [-127, 127], r_i = max_j |W_ij| / 127
(``quantize``), and the sum of the rounded weights enters the bias. oneDNN's quantized convolution and matrix product
(input scale 1, zero point 0) compute sum_j q_ij s_j exactly in int32 (AVX-512 VNNI or AMX on x86), then apply the
weights' scale 2 r_i and the bias in float32, and round v to bfloat16 (as the ``bfloat16`` precision does). The
weights' rounding is the only other one: at most r_i / 2 = max_j |W_ij| / 254 a weight.

Within ``using_spikes()`` and without autograd (``emitting``), ``nsm.layers.Binarize`` and the NSM units emit
spikes instead of float states; the products of binary units read them (``nsm.affine``), the OR-pool takes their
maximum (spikes are ordered as the states are), and the readout, real-valued units (whose border is 0, which a spike
cannot hold) and the synapse mode decode them. CPU only (oneDNN).
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from .weight_cache import memo

SPIKE_ON, SPIKE_OFF = np.uint8(1), np.uint8(0)  # the spikes of the states +1 and -1
WEIGHT_LEVELS = 127  # int8 weights in [-127, 127] (symmetric)
LOGIT_DTYPE = torch.bfloat16  # what the int8 products return

_EMITTING = contextvars.ContextVar("nsm_spikes", default=False)


@contextmanager
def using_spikes():
    """Within the block, binary states travel between layers as spikes (where autograd is off: ``emitting``)."""
    token = _EMITTING.set(True)
    try:
        yield
    finally:
        _EMITTING.reset(token)


def emitting() -> bool:
    """Whether layers that produce binary states should emit them as spikes now: inside ``using_spikes`` with
    autograd off (a gradient cannot flow through a spike), and not in a graph that ``torch.compile`` traces (its
    passes take expectations, which are no states)."""
    if torch.compiler.is_compiling():
        return False
    return _EMITTING.get() and not torch.is_grad_enabled()


def is_spikes(x: torch.Tensor) -> bool:
    """Whether ``x`` holds spikes (``uint8``) rather than real values."""
    return x.dtype == torch.uint8


def encode(z: torch.Tensor) -> torch.Tensor:
    """The spikes of +-1 states ``z`` (1 for z > 0, else 0), in ``z``'s shape and memory format."""
    return (z > 0).to(torch.uint8)


def decode(spikes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The states z = 2 s - 1 of ``spikes``, in ``dtype``."""
    return spikes.to(dtype).mul_(2.0).sub_(1.0)


def unavailable(device: torch.device) -> str | None:
    """Why int8 products cannot run on ``device`` (None: they can): oneDNN's quantized kernels run on the CPU."""
    if device.type != "cpu":
        return f"int8 products run on the CPU (oneDNN), not on {device.type}"
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.onednn, "qconv2d_pointwise"):
        return "this torch build has no oneDNN quantized kernels"
    return None


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, r): int8 weights q and float32 steps r (one per output unit, dimension 0) with weight ~ r q (module
    docstring); a unit whose weights are all 0 gets r = 1."""
    w = weight.detach().float()
    top = w.abs().amax(dim=tuple(range(1, w.dim())))
    step = torch.where(top > 0, top / WEIGHT_LEVELS, torch.ones_like(top))
    q = torch.round(w / step.reshape(-1, *[1] * (w.dim() - 1))).clamp_(-WEIGHT_LEVELS, WEIGHT_LEVELS)
    return q.to(torch.int8), step


@dataclass(frozen=True)
class PackedWeight:
    """A unit's weights as oneDNN's int8 kernels read them: ``packed`` (oneDNN's layout), the per-unit ``scale`` 2 r_i
    and ``zero`` points (0: symmetric), and ``offset`` = -sum_j r_i q_ij, which the bias takes on (module
    docstring)."""

    packed: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    offset: torch.Tensor

    def bias(self, bias: torch.Tensor | None) -> torch.Tensor:
        """b_i - sum_j rounded_ij: the bias of the product with spikes, in float32."""
        return self.offset if bias is None else bias.float() + self.offset


def _packed(weight: torch.Tensor, prepack) -> PackedWeight:
    q, r = quantize(weight)
    rounded = q.float() * r.reshape(-1, *[1] * (q.dim() - 1))
    scale = 2.0 * r
    zero = torch.zeros(len(r), dtype=torch.int64)
    return PackedWeight(prepack(q, scale), scale, zero, -rounded.flatten(1).sum(1))


def _conv_weight(owner, weight: torch.Tensor, stride, padding) -> PackedWeight:
    """``weight`` (C_out, C_in, kh, kw) packed for ``conv2d``; kept in ``owner``'s active ``nsm.WeightCache``."""

    def prepack(q, scale):
        return torch.ops.onednn.qconv_prepack(q, scale, 1.0, 0, list(stride), list(padding), [1, 1], 1, None)

    return memo(owner, "_int8_conv_cache", [weight], (stride, padding), lambda: _packed(weight, prepack))


def conv2d(owner, spikes: torch.Tensor, weight: torch.Tensor, bias, stride, padding) -> torch.Tensor:
    """The logits rounded(weight) * z + bias of the states z that (N, C, H, W) ``spikes`` stand for, the border
    ``padding`` wide holding z = -1, in bfloat16, channels-last. ``owner``: the module whose ``nsm.WeightCache``
    keeps the packed weights."""
    stride, padding = tuple(stride), tuple(padding)
    w = _conv_weight(owner, weight, stride, padding)
    return torch.ops.onednn.qconv2d_pointwise(
        spikes.contiguous(memory_format=torch.channels_last),
        1.0,
        0,
        w.packed,
        w.scale,
        w.zero,
        w.bias(bias),
        list(stride),
        list(padding),
        [1, 1],
        1,
        1.0,
        0,
        LOGIT_DTYPE,
        "none",
        [],
        "",
    )


def linear(owner, spikes: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """The logits rounded(weight) . z + bias of the states z that (..., in) ``spikes`` stand for, in bfloat16."""
    prepack = lambda q, scale: torch.ops.onednn.qlinear_prepack(q, None)  # noqa: E731
    w = memo(owner, "_int8_linear_cache", [weight], None, lambda: _packed(weight, prepack))
    flat = spikes.reshape(-1, spikes.shape[-1]).contiguous()
    out = torch.ops.onednn.qlinear_pointwise(
        flat, 1.0, 0, w.packed, w.scale, w.zero, w.bias(bias), 1.0, 0, LOGIT_DTYPE, "none", [], ""
    )
    return out.reshape(*spikes.shape[:-1], out.shape[-1])
