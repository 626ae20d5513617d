"""The ``expected`` mode (moment propagation) against explicit sampling, computed independently here.

Each piece is checked where it is exact, by drawing M samples and comparing means within Z_SIGMAS standard
errors of the sampled quantity (seeds fixed): the mean and variance of an NSM unit's firing logit when its
inputs are independent states with given means; E erf(v) for Gaussian v; the OR of independent states; the
batch moments a sampling pass sees. The one approximation of the mode, taking the logit as Gaussian, is not
asserted here: its effect is what docs/training-study.md measures.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models
import nsm
from nsm import functional as nsmf
from nsm import moments
from nsm.normalization import LogitNormalization
from nsm.sampling import takes_expectations

Z_SIGMAS = 5.0
M = 20000


def draw(means: torch.Tensor, samples: int, seed: int) -> torch.Tensor:
    """``samples`` independent draws of states in {-1, +1} with the given means (first dimension: draws)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand((samples,) + tuple(means.shape), generator=g, dtype=torch.float64)
    return torch.where(u < (1 + means.double()) / 2, 1.0, -1.0).double()


def assert_mean_within_error(draws: torch.Tensor, expected: torch.Tensor) -> None:
    """The mean over the first dimension of ``draws`` is ``expected`` within Z_SIGMAS standard errors."""
    se = draws.std(dim=0) / draws.shape[0] ** 0.5
    worst = ((draws.mean(dim=0) - expected.double()).abs() / se.clamp_min(1e-9)).max()
    assert float(worst) <= Z_SIGMAS, f"off by {float(worst):.1f} standard errors"


def conv_unit(seed: int = 0) -> nsm.NSMConv2d:
    torch.manual_seed(seed)
    unit = nsm.NSMConv2d(3, 4, 3, padding=1).double()
    with torch.no_grad():
        unit.beta.copy_(torch.tensor([0.5, 1.0, 1.5, -0.8]))
        unit.bias.copy_(torch.tensor([0.2, -0.1, 0.0, 0.3]))
    return unit


def test_expected_sign_is_E_erf_of_a_gaussian_logit():
    mean = torch.tensor([-1.5, -0.3, 0.0, 0.4, 2.0], dtype=torch.float64)
    var = torch.tensor([0.0, 0.5, 2.0, 1.0, 4.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    v = mean + var.sqrt() * torch.randn((M, 5), generator=g, dtype=torch.float64)
    fires = torch.rand((M, 5), generator=g, dtype=torch.float64) < nsmf.firing_probability(v)
    z = torch.where(fires, 1.0, -1.0).double()
    assert_mean_within_error(z, moments.expected_sign(mean, var))


def test_unit_logit_moments_are_those_of_independent_input_states():
    """Mean and variance of v = W_eff z + b_eff over draws of z, with the -1 border included."""
    unit = conv_unit()
    m = torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        mean, var = unit.expected_logit(m)
        v = torch.stack([unit.logit(z) for z in draw(m, 4000, seed=3)])
    assert_mean_within_error(v, mean)
    centred = (v - mean) ** 2
    assert_mean_within_error(centred, var)


def window_mean_variance_by_patches(unit: nsm.NSMConv2d, m: torch.Tensor) -> torch.Tensor:
    """(sum_j W_eff_ij^2) times the mean of 1 - m_j^2 over the receptive field of every output position (channels
    and kernel offsets, the zero border included), over explicit patches (F.unfold), not by pooling."""
    w_eff, _ = unit.effective_weight()
    patches = F.unfold(1 - m * m, unit.kernel_size, padding=unit.padding, stride=unit.stride)  # (B, C k, L)
    out = (w_eff * w_eff).flatten(1).sum(1)[None, :, None] * patches.mean(1, keepdim=True)
    return out.reshape(m.shape[0], -1, m.shape[2], m.shape[3])


def test_window_mean_variance_is_the_estimate_it_states_and_exact_when_a_field_shares_one_variance():
    unit = conv_unit()
    g = torch.Generator().manual_seed(11)
    m = torch.rand(2, 3, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        mean_exact, var_exact = unit.expected_logit(m)
        with nsm.using_variance_rule(unit, "window-mean"):
            mean, var = unit.expected_logit(m)
        torch.testing.assert_close(mean, mean_exact)
        torch.testing.assert_close(var, window_mean_variance_by_patches(unit, m))
        assert float((var - var_exact).abs().max()) > 1e-3  # inputs of different variances: an estimate
        # one |m| for every input (signs differ): the estimate is exact wherever the field misses the border
        shared = 0.4 * torch.where(torch.rand(m.shape, generator=g) < 0.5, -1.0, 1.0).double()
        with nsm.using_variance_rule(unit, "window-mean"):
            _, var_shared = unit.expected_logit(shared)
        inner = (..., slice(1, -1), slice(1, -1))
        torch.testing.assert_close(var_shared[inner], unit.expected_logit(shared)[1][inner])
    assert unit.variance_rule == "exact"


def test_window_mean_variance_of_a_linear_unit_and_its_gradients():
    """For a linear unit the rule is mean_j (1 - m_j^2) sum_j W_eff_ij^2; gradients reach the input and every
    parameter; an unknown rule is refused."""
    torch.manual_seed(3)
    unit = nsm.NSMLinear(6, 4).double()
    m = (torch.rand(3, 6, dtype=torch.float64) * 2 - 1).requires_grad_()
    with nsm.using_variance_rule(unit, "window-mean"):
        _, var = unit.expected_logit(m)
        unit.mode = "expected"
        unit(m).sum().backward()
    w_eff, _ = unit.effective_weight()
    torch.testing.assert_close(var, (1 - m * m).mean(1, keepdim=True) * (w_eff * w_eff).sum(1))
    for grad in (m.grad, unit.weight.grad, unit.beta.grad, unit.bias.grad):
        assert grad is not None and bool(torch.isfinite(grad).all()) and bool((grad != 0).any())
    with pytest.raises(ValueError, match="unknown variance rule 'mean'"):
        with nsm.using_variance_rule(unit, "mean"):
            pass


def test_unit_expected_mode_outputs_erf_of_the_moments_and_mean_input_mode_erf_of_the_mean():
    unit = conv_unit()
    m = torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1
    unit.mode = "expected"
    with torch.no_grad():
        mean, var = unit.expected_logit(m)
        torch.testing.assert_close(unit(m), torch.erf(mean / torch.sqrt(1 + 2 * var)))
        unit.mode = "mean-input"
        torch.testing.assert_close(unit(m), torch.erf(unit.logit(m)))
        torch.testing.assert_close(unit.logit(m), mean)


def test_sampled_logit_mode_draws_the_gaussian_logit_and_averages_to_the_expected_mode():
    """``sampled-logit``: erf of a draw from N(mean, var) of ``expected_logit``, computed independently here from
    the same seeded draws; its mean over draws is the ``expected`` mode's output, and it differs between draws."""
    unit = conv_unit()
    m = torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 2 - 1
    with torch.no_grad():
        mean, var = unit.expected_logit(m)
        unit.mode = "sampled-logit"
        unit.generator = torch.Generator().manual_seed(7)
        outs = torch.stack([unit(m) for _ in range(M // 10)])
        g = torch.Generator().manual_seed(7)
        eps = torch.stack([torch.randn(mean.shape, generator=g, dtype=m.dtype) for _ in range(M // 10)])
        torch.testing.assert_close(outs, torch.erf(mean + var.sqrt() * eps))
        unit.mode = "expected"
        assert_mean_within_error(outs, unit(m))
    assert float(outs.std(dim=0).min()) > 0  # the inputs' noise is kept: no two draws alike


def test_sampled_logit_mode_has_gradients_through_mean_and_variance():
    unit = conv_unit()
    m = (torch.rand(2, 3, 4, 4, dtype=torch.float64) * 2 - 1).requires_grad_()
    unit.mode = "sampled-logit"
    unit(m).sum().backward()
    for grad in (m.grad, unit.weight.grad, unit.beta.grad, unit.bias.grad):
        assert grad is not None and bool(torch.isfinite(grad).all()) and bool((grad != 0).any())


def test_expected_or_pool_is_the_mean_of_the_or_of_independent_states():
    pool = nsm.BinaryMaxPool2d(2)
    m = torch.rand(2, 3, 4, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2 - 1
    m[0, 0, 0, 0] = 1.0  # a surely-on input: the window is on
    pool.mode = "mean-input"
    mean_input = pool(m)
    pool.mode = "expected"
    expected = pool(m)
    assert torch.equal(mean_input, expected)  # the pools' rule is the same in both modes
    z = draw(m, M, seed=5)
    ors = F.max_pool2d(z.flatten(0, 1), 2).reshape(M, 2, 3, 2, 3)
    assert expected[0, 0, 0, 0] == 1.0
    assert_mean_within_error(ors, expected)
    assert torch.equal(pool.__class__(2)(m.sign()), F.max_pool2d(m.sign(), 2))  # other modes: max-pooling


def test_expected_or_has_finite_gradients_at_surely_on_inputs():
    m = torch.tensor([[[[1.0, 0.2], [-1.0, -0.5]]]], requires_grad=True)
    pool = nsm.BinaryMaxPool2d(2)
    pool.mode = "expected"
    pool(m).sum().backward()
    assert bool(torch.isfinite(m.grad).all())


def test_normalized_unit_tracks_the_moments_a_sampling_pass_sees():
    """Batch-normalized logits in expected mode: the running moments move to the mean and variance of
    a = (w/||w||).z over the batch and the input states' noise (momentum 1 takes one batch's values)."""
    unit = conv_unit()
    m = torch.rand(8, 3, 5, 5, generator=torch.Generator().manual_seed(6), dtype=torch.float64) * 2 - 1
    net = torch.nn.Sequential(unit)
    norm = LogitNormalization.attach(net, m.sign(), momentum=1.0)
    unit.mode = "expected"
    unit.train()
    unit(m)
    z = draw(m, 400, seed=7)
    with torch.no_grad():
        a = torch.stack([unit.affine(zk, nsmf.unit_direction(unit.weight)) for zk in z])
    per_unit = a.transpose(0, 2).flatten(1)  # (units, draws x batch x positions)
    n = m.shape[0] * 25
    torch.testing.assert_close(unit.logit_norm.mean, per_unit.mean(dim=1), atol=0.02, rtol=0)
    torch.testing.assert_close(unit.logit_norm.var, per_unit.var(dim=1) * n / (n - 1), atol=0.03, rtol=0.03)
    norm.fold()


def test_folded_network_computes_the_normalized_expected_mode():
    torch.manual_seed(0)
    model = models.create_model(
        "allconvnet18", in_channels=6, input_size=(16, 16), num_classes=11, neuron="bnsm", width=0.25
    ).double()
    x = (torch.rand(6, 6, 16, 16, dtype=torch.float64) < 0.2).double()
    norm = LogitNormalization.attach(model, x)
    nsm.set_mode(model, "expected")
    model.train()
    for _ in range(3):
        model(x)  # moves the running moments
    model.eval()
    normalized = model(x)
    norm.fold()
    torch.testing.assert_close(model(x), normalized)


def test_set_mode_reaches_the_pools_and_kinds_say_whether_they_take_expectations():
    for kind, takes in [
        ("bnsm", True),
        ("gnsm", True),
        ("ste", False),
        ("bn", False),
        ("bd", False),
        ("sn", False),
        ("dcnn", False),
    ]:
        model = models.create_model(
            "allconvnet18", in_channels=6, input_size=(16, 16), num_classes=11, neuron=kind, width=0.25
        )
        assert takes_expectations(model) == takes, kind
    model = models.create_model(
        "allconvnet18", in_channels=6, input_size=(16, 16), num_classes=11, neuron="bnsm", width=0.25
    )
    nsm.set_mode(model, "expected")
    assert {m.mode for m in model.modules() if isinstance(m, (nsm.BinaryMaxPool2d, nsm.NSMConv2d))} == {"expected"}
    with nsm.using_mode(model, "deterministic"):
        assert all(p.mode == "deterministic" for p in model.modules() if isinstance(p, nsm.BinaryMaxPool2d))
    assert all(p.mode == "expected" for p in model.modules() if isinstance(p, nsm.BinaryMaxPool2d))


def test_modes_without_an_expectation_say_so():
    sn = models.create_model(
        "allconvnet18", in_channels=6, input_size=(16, 16), num_classes=11, neuron="sn", width=0.25
    )
    nsm.set_mode(sn, "expected")
    with pytest.raises(ValueError, match="no expected mode"):
        sn(torch.zeros(1, 6, 16, 16))
    unit = conv_unit()
    unit.mode = "expected"
    with pytest.raises(ValueError, match="expected mode need"):
        unit.states_from_logit(torch.zeros(1, 4, 2, 2, dtype=torch.float64))


def test_attaching_in_expected_mode_keeps_the_logit_moments_and_takes_the_noise_into_the_variance():
    unit = conv_unit()
    m = torch.rand(8, 3, 5, 5, generator=torch.Generator().manual_seed(8), dtype=torch.float64) * 2 - 1
    unit.mode = "expected"
    with torch.no_grad():
        before = unit.expected_logit(m)
        a = unit.affine(m, nsmf.unit_direction(unit.weight))
        s2 = unit.affine_zero_padded(1 - m * m, nsmf.unit_direction(unit.weight) ** 2)
    norm = LogitNormalization.attach(torch.nn.Sequential(unit), m)
    unit.eval()
    with torch.no_grad():
        after = unit.expected_logit(m)
    for b, c in zip(before, after):
        torch.testing.assert_close(c, b)
    dims = (0, 2, 3)
    torch.testing.assert_close(unit.logit_norm.var, a.var(dim=dims, correction=0) + s2.mean(dim=dims))
    norm.fold()


def readout(features: int, scale: float, seed: int = 0) -> nsm.Readout:
    torch.manual_seed(seed)
    layer = nsm.Readout(features, 5).double()
    with torch.no_grad():
        layer.linear.weight.mul_(scale)
    return layer


def test_readout_logit_moments_are_those_of_pooled_independent_states():
    layer = readout(6, 4.0)
    means = torch.linspace(-0.9, 0.9, 2 * 6 * 3 * 3, dtype=torch.float64).reshape(2, 6, 3, 3)
    z = draw(means, M, seed=5)
    with torch.no_grad():
        logits = layer(z.flatten(0, 1)).reshape(M, 2, 5)
        mean, var = layer.logit_moments(means)
    assert_mean_within_error(logits, mean)
    assert_mean_within_error((logits - mean) ** 2, var)


def test_expected_readout_approximates_the_average_of_sampled_softmaxes():
    """The probit-corrected logits' softmax is close to E softmax(l) over sampled states (what Monte Carlo
    prediction averages), far closer than the softmax of the mean states' logits, for a confident readout."""
    layer = readout(32, 20.0)
    means = torch.rand(50, 32, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 1.8 - 0.9
    with torch.no_grad():
        average = torch.softmax(layer(draw(means, 2000, seed=3).flatten(0, 1)), 1).reshape(2000, 50, 5).mean(0)
        plain = torch.softmax(layer(means), 1)
        with nsm.using_mode(layer, "expected"):
            corrected = torch.softmax(layer(means), 1)
    corrected_error, plain_error = (corrected - average).abs().mean(), (plain - average).abs().mean()
    assert corrected_error < 0.02 and corrected_error < plain_error / 3, (corrected_error, plain_error)
