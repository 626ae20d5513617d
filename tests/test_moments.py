"""The moment rules of ``nsm.moments`` that the units, the batch-normalized logits and the readout call, each against
the quantity it describes computed directly here (exact sums, or draws of independent states where it is a mean).
tests/test_expected_mode.py checks the rules as the layers use them against sampled passes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nsm import moments


def states(means: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """``samples`` draws of independent {-1, +1} states with the given means (first dimension: draws), float64."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((samples, *means.shape), generator=g, dtype=torch.float64)
    return torch.where(u < (1 + means) / 2, 1.0, -1.0).double()


def test_sign_mean_is_erf_of_the_logit_in_float32_at_least():
    v = torch.tensor([-2.0, -0.1, 0.0, 0.7], dtype=torch.bfloat16)
    out = moments.sign_mean(v)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.erf(v.float()), rtol=0, atol=0)
    torch.testing.assert_close(out, moments.expected_sign(v.float(), torch.zeros(4)), rtol=0, atol=0)


def test_pooled_affine_moments_are_those_of_the_averaged_states():
    """E l and Var l of l = W mean_p z + b, exactly: W mean_p m + b and sum_c W_c^2 sum_p (1 - m_cp^2) / P^2."""
    torch.manual_seed(0)
    m = torch.rand(2, 3, 2, 2, dtype=torch.float64) * 2 - 1
    weight, bias = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    mean, var = moments.pooled_affine_moments(m, weight, bias, lambda x: x.mean(dim=(2, 3)), 4)
    flat = m.flatten(2)
    torch.testing.assert_close(mean, flat.mean(2) @ weight.T + bias)
    torch.testing.assert_close(var, ((1 - flat**2).sum(2) / 16) @ (weight**2).T)
    draws = states(m, 40000, seed=1).flatten(3).mean(3) @ weight.T + bias
    torch.testing.assert_close(draws.var(0), var, rtol=0.05, atol=1e-3)


def test_batch_moments_add_the_noise_variance_to_the_batch_variance():
    """The law of total variance: Var over batch, positions and noise = Var of the means + mean of the variances."""
    torch.manual_seed(0)
    a, spread = torch.randn(5, 3, 4, dtype=torch.float64), torch.rand(5, 3, 4, dtype=torch.float64)
    mean, var = moments.batch_moments(a, spread)
    pooled = a.transpose(0, 1).flatten(1)
    torch.testing.assert_close(mean, pooled.mean(1))
    torch.testing.assert_close(var, pooled.var(1, correction=0) + spread.transpose(0, 1).flatten(1).mean(1))
    assert torch.equal(moments.batch_moments(a, None)[1], pooled.var(1, correction=0))


def test_normalized_moments_are_those_of_the_normalized_logit():
    """v = beta (x - mu) / sqrt(var + eps) + shift for x with mean a and variance s2: its mean and variance, against
    F.batch_norm in evaluation applied to the mean and the affine map's scale applied to the variance."""
    torch.manual_seed(0)
    a, spread = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.rand(2, 3, 4, 4, dtype=torch.float64)
    mu, var = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5
    beta, shift = torch.randn(3, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
    v_mean, v_var = moments.normalized_moments(a, spread, mu, var, beta, shift, 1e-5)
    torch.testing.assert_close(v_mean, F.batch_norm(a, mu, var, beta, shift, False, 0.0, 1e-5))
    torch.testing.assert_close(v_var, spread * (beta**2 / (var + 1e-5)).reshape(1, 3, 1, 1))
