"""The moment rules of the expectation passes: every formula that carries the means of independent +-1 states
through a layer lives here, and the units (``nsm.layers``), their batch-normalized logits
(``nsm.normalization``), the OR-pools and the readout call it (docs/design.md section 3, eqs. 9-10b and 12). Changing
the expected pass means changing this module and its tests (tests/test_expected_mode.py).

Inputs are states z_j in {-1, +1}, independent, with means m_j (so Var z_j = 1 - m_j^2); a border filled with the
constant -1 state has variance 0. The rules compute in at least float32 (``widened``): under autocast a product
may come back in bfloat16 or float16 (exact +-1 states read by the first layer), and its moments are widened
before anything else touches them.

- An affine map x = W z + b (``affine_moments``):

      E x = W m + b,        Var x = sum_j W_j^2 (1 - m_j^2)   (the ``exact`` rule).

  The ``window-mean`` rule (``VARIANCE_RULES``) replaces each input's variance by the mean over the unit's
  receptive field R (every channel and kernel offset, the border counting as variance 0):

      Var x ~ (sum_j W_j^2) mean_{j in R} (1 - m_j^2),

  exact when the inputs of a receptive field share one variance; its cost is an average pool of one channel
  instead of a second convolution (docs/training-study.md, section 18, measures what it changes).

- A sign unit that fires with P(z = +1 | v) = 1/2 (1 + erf v), its logit v Gaussian with mean mu and variance s^2
  (``expected_sign``):

      E z = E erf(v) = erf(mu / sqrt(1 + 2 s^2)),

  and for a logit taken as the constant v (the ``mean-input`` mode, ``sign_mean``): E z = erf(v).

- Batch-normalized logits (``nsm.normalization``): the moments of a = (w/||w||).z over the batch, positions and the
  states' noise (``batch_moments``: the variance of E a plus the mean of Var a), and those of the normalized logit
  v = beta (a - mu) / sqrt(var + eps) + b' (``normalized_moments``): E v = g (E a - mu) + b', Var v = g^2 Var a,
  g = beta / sqrt(var + eps).

- A draw of that logit and the unit's expected state given it (``sampled_logit_state``, the local
  reparameterization trick): erf(mu + s eps), eps ~ N(0, 1), whose mean over eps is ``expected_sign``.

- The OR of independent states (a max-pool over +-1) is on with P = 1 - prod_k (1 - m_k) / 2
  (``or_on_probability``: the product from the sum of ``log_off`` over each window, which the pool computes);
  its mean is 2 P - 1.

- The readout's logits l = W f + b of states averaged over P positions, f_c = mean_p z_cp
  (``pooled_affine_moments``, eq. 10b): E l = W mean_p m + b, Var l_k = sum_c W_kc^2 sum_p (1 - m_cp^2) / P^2.

- A softmax readout of Gaussian logits with means mu_k and variances s_k^2 (``probit_logits``): the softmax of
  mu_k / sqrt(1 + pi s_k^2 / 8) approximates E softmax (the probit approximation, MacKay 1992).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from events.errors import InputError

VARIANCE_RULES = ("exact", "window-mean")
PROBIT = math.pi / 8
MIN_OFF = 1e-30  # P(off) is floored here before its logarithm (an input that is surely on)
MIN_SAMPLED_VARIANCE = 1e-8  # the floor of a sampled logit's variance (its square root's gradient is 1/(2 s))


def widened(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32 (a bfloat16 or float16 tensor converted, anything wider unchanged)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def affine_moments(
    unit, m: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, variance: str | None = "exact"
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(E x, Var x) of x = W z + b for independent states with means ``m``, computed by ``unit`` (an
    ``nsm.layers.AffineConv2d`` or ``AffineLinear``): ``unit.affine(m, weight, bias)`` (the border at the constant
    -1 state) and, by the rule ``variance`` names (``VARIANCE_RULES``; None: no variance),
    ``unit.affine_zero_padded(1 - m^2, weight^2)`` (a constant border adds no variance) or its ``window-mean``
    estimate ``sum_j weight_j^2 * unit.receptive_field_mean(1 - m^2)``; both in at least float32 (``widened``)."""
    mean = widened(unit.affine(m, weight, bias))
    if variance is None:
        return mean, None
    spread, squared = 1.0 - m * m, weight * weight
    if variance == "exact":
        return mean, widened(unit.affine_zero_padded(spread, squared))
    if variance == "window-mean":
        per_unit = squared.flatten(1).sum(1).reshape((1, -1) + (1,) * (m.dim() - 2))
        return mean, widened(unit.receptive_field_mean(spread)) * per_unit
    raise InputError(f"unknown variance rule {variance!r}; expected one of {VARIANCE_RULES}")


def expected_sign(v_mean: torch.Tensor, v_var: torch.Tensor) -> torch.Tensor:
    """E z for z = +1 with probability 1/2 (1 + erf(v)), else -1, when the logit v is Gaussian with mean
    ``v_mean`` and variance ``v_var``: E erf(v) = erf(v_mean / sqrt(1 + 2 v_var)) (exact for Gaussian v)."""
    return torch.erf(v_mean * torch.rsqrt(1.0 + 2.0 * v_var))


def sign_mean(v: torch.Tensor) -> torch.Tensor:
    """E z = erf(v) for z = +1 with probability 1/2 (1 + erf(v)), the logit v a constant; in at least float32."""
    return torch.erf(widened(v))


def sampled_logit_state(v_mean: torch.Tensor, v_var: torch.Tensor, generator: torch.Generator | None):
    """erf(v) for one draw v = v_mean + sqrt(v_var) eps, eps ~ N(0, 1) from ``generator`` per element: the expected
    state given the draw, whose mean over the draws is ``expected_sign``; differentiable in both moments. A variance
    below ``MIN_SAMPLED_VARIANCE`` is taken as that floor, without gradient (d sqrt(s^2)/d s^2 = 1/(2 s) is unbounded
    at 0, where inputs are surely on or off)."""
    eps = torch.randn(v_mean.shape, dtype=v_mean.dtype, device=v_mean.device, generator=generator)
    return torch.erf(torch.addcmul(v_mean, v_var.clamp_min(MIN_SAMPLED_VARIANCE).sqrt(), eps))


def log_off(m: torch.Tensor) -> torch.Tensor:
    """log P(z = -1) = log((1 - m) / 2) per state, in at least float32 (``MIN_OFF`` underflows float16) and floored
    at log ``MIN_OFF`` for states that are surely on."""
    return torch.log(((1.0 - widened(m)) * 0.5).clamp_min(MIN_OFF))


def or_on_probability(summed_log_off: torch.Tensor) -> torch.Tensor:
    """P(OR = +1) = 1 - prod_k P(z_k = -1), from the sum over a window of ``log_off``."""
    return 1.0 - summed_log_off.exp()


def probit_logits(mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """mean / sqrt(1 + pi var / 8): logits whose softmax approximates E softmax of Gaussian logits."""
    return mean * torch.rsqrt(1.0 + PROBIT * var)


def pooled_affine_moments(
    m: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    average: Callable[[torch.Tensor], torch.Tensor],
    positions: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E l, Var l) of l = W f + b, f = ``average``(z) the mean of independent states with means ``m`` over
    ``positions`` positions: W average(m) + b and (W^2) average(1 - m^2) / positions (a variance below 0 from
    rounding taken as 0); in at least float32."""
    spread = average((1.0 - m * m).clamp_min(0.0)) / positions
    return widened(F.linear(average(m), weight, bias)), widened(F.linear(spread, weight**2))


def batch_moments(a: torch.Tensor, spread: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, var) per unit (dimension 1) of ``a`` over the batch and positions, the (biased) variance plus, with
    ``spread`` (the variance of each a over the input states' noise), the mean of ``spread``: the moments of a
    over the batch, positions and the noise (the law of total variance)."""
    dims = [d for d in range(a.dim()) if d != 1]
    var, mean = torch.var_mean(a, dim=dims, correction=0)
    return mean, (var if spread is None else var + spread.mean(dim=dims))


def normalized_moments(
    a: torch.Tensor,
    spread: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    beta: torch.Tensor,
    shift: torch.Tensor,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of v = beta (x - mean) / sqrt(var + eps) + shift per position, x with mean ``a`` and
    variance ``spread``, ``mean``, ``var``, ``beta`` and ``shift`` one per unit (dimension 1): g (a - mean) + shift and
    g^2 spread, g = beta / sqrt(var + eps)."""
    shape = (1, -1) + (1,) * (a.dim() - 2)
    gain = beta * (var + eps).rsqrt()
    return gain.reshape(shape) * (a - mean.reshape(shape)) + shift.reshape(shape), (gain * gain).reshape(shape) * spread
