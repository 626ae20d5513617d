"""Pure functions of the Neural Sampling Machine (docs/design.md section 3; seed poster eqs. 1-4).

Notation: binary states z in {-1, +1}; a unit i with weights w_i, bias b_i, learned magnitude
beta_i and multiplicative synapse noise xi of mean m and standard deviation s (``nsm.noise``).

Pre-activation with noise (eq. 4)::

    u_i = sum_j (xi_ij + a_i) w_ij z_j + b_i

Since z_j^2 = 1: E(u_i | z) = (m + a_i) w_i.z + b_i and Var(u_i | z) = s^2 ||w_i||^2, so (eq. 2-3)::

    P(z_i = +1 | z) = 1/2 (1 + erf(v_i)),
    v_i = beta_i (w_i / ||w_i||).z + b_i / (sqrt(2) s ||w_i||),     beta_i = (m + a_i) / (sqrt(2) s)

v_i is the "firing logit" below. It depends on w_i only through its direction (inherent weight
normalization), and E(z_i | z) = 2P - 1 = erf(v_i).

Expected states (the ``expected`` mode, moment propagation): when the inputs z_j are independent with
means m_j (Var z_j = 1 - m_j^2), v_i = W_eff_i.z + b_eff_i has mean W_eff_i.m + b_eff_i and variance
sum_j W_eff_ij^2 (1 - m_j^2); taking v_i as Gaussian (a sum of many independent terms),

    E(z_i) = E erf(v_i) = erf(mean / sqrt(1 + 2 variance))          (``nsm.moments``, with the other rules)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from events.errors import InputError

from . import kernels, spikes
from .noise import Noise

_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)
_NORM_EPS = 1e-12


def beta_from_a(a: torch.Tensor | float, noise: Noise):
    """beta = (m + a) / (sqrt(2) s): the magnitude that the factor a gives the unit."""
    return (noise.mean + a) / (math.sqrt(2.0) * noise.std)


def a_from_beta(beta: torch.Tensor | float, noise: Noise):
    """a = sqrt(2) s beta - m: the factor of eq. 4 that realises a given beta (inverse of ``beta_from_a``)."""
    return math.sqrt(2.0) * noise.std * beta - noise.mean


def weight_norm(weight: torch.Tensor) -> torch.Tensor:
    """||w_i||_2 per output unit (first dimension), over all input dimensions."""
    return weight.flatten(1).norm(dim=1).clamp_min(_NORM_EPS)


def unit_direction(weight: torch.Tensor) -> torch.Tensor:
    """w_i / ||w_i|| for every output unit i (first dimension)."""
    return weight / weight_norm(weight).reshape((-1,) + (1,) * (weight.dim() - 1))


def effective_weight(weight: torch.Tensor, bias: torch.Tensor | None, beta: torch.Tensor, noise: Noise):
    """The affine map whose output is the firing logit: v = W_eff z + b_eff, with

        W_eff_i = beta_i w_i / ||w_i||,      b_eff_i = b_i / (sqrt(2) s ||w_i||).

    W_eff is proportional to the mean weights (m + a_i) w_i with the positive factor
    1 / (sqrt(2) s ||w_i||), so sgn(W_eff z + b_eff) = sgn(E(u_i | z)). Folding the normalization into
    the weights makes a layer one convolution plus the sampling, with no extra pass over activations.
    """
    norm = weight_norm(weight)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    w_eff = weight * (beta / norm).reshape(shape)
    b_eff = None if bias is None else bias / (math.sqrt(2.0) * noise.std * norm)
    return w_eff, b_eff


def firing_probability(v: torch.Tensor) -> torch.Tensor:
    """P(z = +1) = 1/2 (1 + erf(v)) for the firing logit v."""
    return 0.5 * (1.0 + torch.erf(v))


def _uses_kernel(v: torch.Tensor) -> bool:
    return v.device.type == "cpu" and v.dtype in (torch.float32, torch.bfloat16)


def _kernel_array(t: torch.Tensor):
    """The numpy view of a dense CPU tensor's memory that ``nsm.kernels`` reads and writes: float32, or the
    bfloat16 bit patterns as uint16."""
    flat = _dense_flat(t.detach())
    return flat.view(torch.int16).numpy().view(np.uint16) if flat.dtype == torch.bfloat16 else flat.numpy()


def _dense_flat(t: torch.Tensor) -> torch.Tensor:
    """The 1-d view of a dense tensor's memory in storage order (any dimension order: NCHW, channels-last);
    a view, never a copy, so that writing to it writes to ``t``."""
    order = sorted(range(t.dim()), key=lambda d: (t.stride(d), t.shape[d]), reverse=True)
    return t.permute(order).view(-1)


def _is_dense(t: torch.Tensor) -> bool:
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _write_states(
    like: torch.Tensor, out: torch.Tensor | None, kernel, fallback, as_spikes: bool = False
) -> torch.Tensor:
    """States computed by ``kernel(numpy_in, numpy_out)`` (CPU float32 or bfloat16, ``_kernel_array``) or
    ``fallback()``; into ``out`` if given. ``as_spikes``: the kernel writes spikes (``nsm.spikes``).

    The kernel walks memory in storage order, so a channels-last tensor is processed in place, without a
    copy to NCHW order; the states keep ``like``'s memory format.
    """
    if _uses_kernel(like):
        like = like if _is_dense(like) else like.contiguous()
        fits = out is not None and out.stride() == like.stride()
        res = out if fits else torch.empty_like(like, dtype=torch.uint8 if as_spikes else like.dtype)
        kernel(_kernel_array(like), _kernel_array(res))
    else:
        res = fallback()
    if out is not None and res is not out:
        return out.copy_(res)
    return res


def _kernel_seed(generator: torch.Generator | None) -> int:
    """The sampling kernels' seed: one draw from ``generator`` (torch's global RNG when None)."""
    return int(torch.randint(0, 2**63 - 1, (1,), generator=generator))


def draw_states(v: torch.Tensor, generator: torch.Generator | None = None, out: torch.Tensor | None = None):
    """z = +1 with probability P = 1/2 (1 + erf(v)), else -1 (no gradient); written into ``out`` if given.

    CPU float32 or bfloat16: one fused pass of ``nsm.kernels.sample_sign_cpu``, seeded by one draw from
    ``generator`` (torch's global RNG when None). Elsewhere: r ~ U(-1, 1) and z = +1 iff
    r < erf(v), since P(r < erf(v)) = (erf(v) + 1) / 2 = P. ``out`` may be ``v`` itself.
    """

    def kernel(a, o):
        kernels.sample_sign_cpu(a, _kernel_seed(generator), out=o, threads=torch.get_num_threads())

    def fallback():
        r = torch.empty_like(v).uniform_(-1.0, 1.0, generator=generator)
        return torch.where(r < torch.erf(v), 1.0, -1.0).to(v.dtype)

    return _write_states(v, out, kernel, fallback)


def draw_spikes(v: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The states ``draw_states(v, generator)`` draws, as spikes (``nsm.spikes``; no gradient): written by the
    sampler itself from CPU bfloat16 logits, encoded afterwards from any others."""
    if v.dtype != torch.bfloat16 or not _uses_kernel(v):
        return spikes.encode(draw_states(v, generator))

    def kernel(a, o):
        kernels.sample_sign_cpu(a, _kernel_seed(generator), out=o, threads=torch.get_num_threads(), spikes=True)

    return _write_states(v, None, kernel, None, as_spikes=True)


def sign_states(u: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """z = sgn(u) with sgn(0) = +1 (no gradient); written into ``out`` if given (which may be ``u``)."""
    return _write_states(
        u,
        out,
        lambda a, o: kernels.sign_cpu(a, out=o, threads=torch.get_num_threads()),
        lambda: torch.where(u >= 0, 1.0, -1.0).to(u.dtype),
    )


def sign_spikes(u: torch.Tensor) -> torch.Tensor:
    """``sign_states(u)`` as spikes (``nsm.spikes``; no gradient)."""
    if u.dtype != torch.bfloat16 or not _uses_kernel(u):
        return spikes.encode(sign_states(u))
    kernel = lambda a, o: kernels.sign_cpu(a, out=o, threads=torch.get_num_threads(), spikes=True)  # noqa: E731
    return _write_states(u, None, kernel, None, as_spikes=True)


class _SignWithSurrogate(torch.autograd.Function):
    """Forward: the states ``states_of(v)``. Backward: the gradient of a smooth surrogate of v.

    surrogate "erf":      dz/dv := d erf(v)/dv = 2/sqrt(pi) exp(-v^2)   (gradient of E(z) = 2P - 1)
    surrogate "hardtanh": dz/dv := 1 if |v| <= 1 else 0                  (straight-through estimator)
    """

    @staticmethod
    def forward(ctx, v, states_of, surrogate):
        ctx.save_for_backward(v)
        ctx.surrogate = surrogate
        return states_of(v)

    @staticmethod
    def backward(ctx, grad):
        (v,) = ctx.saved_tensors
        if ctx.surrogate == "erf":
            local = _TWO_OVER_SQRT_PI * torch.exp(-v * v)
        else:
            local = (v.abs() <= 1.0).to(grad.dtype)
        return grad * local, None, None


SURROGATES = ("erf", "hardtanh")


def with_surrogate(
    v: torch.Tensor, states_of: Callable[..., torch.Tensor], surrogate: str = "erf", overwrite: bool = False
) -> torch.Tensor:
    """Binary states ``states_of(v, out=None)`` in the forward pass; gradients flow to v through ``surrogate``.

    ``overwrite``: the caller owns v and does not need it afterwards, so when no gradient can flow to v
    (inference) the states are written over it instead of into a new tensor (one allocation less per layer).
    """
    if surrogate not in SURROGATES:
        raise InputError(f"unknown surrogate {surrogate!r}; expected one of {SURROGATES}")
    if overwrite and not (torch.is_grad_enabled() and v.requires_grad):
        return states_of(v, out=v)
    return _SignWithSurrogate.apply(v, states_of, surrogate)


def sample_sign(
    v: torch.Tensor, surrogate: str = "erf", generator: torch.Generator | None = None, overwrite: bool = False
) -> torch.Tensor:
    """Draw z = +1 with probability P = 1/2 (1 + erf(v)), else -1 (the ``probability`` mode).

    The forward pass emits the sample; the backward pass uses only the gradient of
    E(z) = 2P - 1 = erf(v): the seed's rule ``y = sample + (2P - 1) - (2P - 1).detach()``, computed
    without building those extra tensors.
    """
    return with_surrogate(v, lambda x, out=None: draw_states(x, generator, out), surrogate, overwrite)


def deterministic_sign(v: torch.Tensor, surrogate: str = "erf", overwrite: bool = False) -> torch.Tensor:
    """z = sgn(v) with sgn(0) = +1: the mean-field unit, sgn(E(u | z)) (``deterministic`` mode)."""
    return with_surrogate(v, sign_states, surrogate, overwrite)


def synapse_preactivation(
    z: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    beta: torch.Tensor,
    noise: Noise,
    affine: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    channel_dim: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """u_i = sum_j (xi_j + a_i) w_ij z_j + b_i with xi drawn explicitly (eq. 4, the ``synapse`` mode).

    ``z`` is the layer input with any padding already applied, and ``affine(x, w)`` the layer's linear
    map without bias (a convolution or a matrix product). One xi is drawn per input element and per
    sample and shared by every unit that reads it, so each unit's own u_i has exactly eq. 4's law
    (its inputs j are distinct elements); only correlations between units differ. a_i comes from beta_i.
    """
    xi = noise.sample(z.shape, device=z.device, dtype=z.dtype, generator=generator)
    shape = [1] * z.dim()
    shape[channel_dim] = -1
    a = a_from_beta(beta, noise).reshape(shape)
    u = affine(xi * z, weight) + a * affine(z, weight)
    if bias is not None:
        u = u + bias.reshape(shape)
    return u
