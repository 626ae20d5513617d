"""The NSM layers against the paper's equations, computed independently here in float64.

Statistical tests draw M samples of each unit and compare the firing frequency f with the exact
probability P: f has standard deviation sqrt(P (1 - P) / M), and every unit must lie within 5 of
those (a false alarm has probability < 1e-6 per unit; seeds are fixed, so results are repeatable).
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nsm
from nsm import functional as nsmf

Z_SIGMAS = 5.0


def exact_probability(weight, bias, beta, noise, z):
    """P(z_i = +1 | z) = 1/2 (1 + erf(E / sqrt(2 Var))), E = (m + a) w.z + b, Var = s^2 ||w||^2 (float64)."""
    w = weight.detach().double().flatten(1)
    m, s = noise.mean, noise.std
    a = math.sqrt(2.0) * s * beta.detach().double() - m
    mean = (m + a) * (z.double() @ w.T) + (0.0 if bias is None else bias.detach().double())
    var = s**2 * (w**2).sum(dim=1)
    return 0.5 * (1.0 + torch.erf(mean / torch.sqrt(2.0 * var)))


def random_states(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).float() * 2 - 1


def make_linear(noise, n_in=60, n_out=12, seed=0):
    torch.manual_seed(seed)
    layer = nsm.NSMLinear(n_in, n_out, noise=noise)
    with torch.no_grad():
        layer.beta.copy_(torch.linspace(-1.5, 2.0, n_out))  # negative beta flips a unit
        layer.bias.copy_(torch.linspace(-0.3, 0.4, n_out))
    return layer


def firing_frequency(layer, z, samples, dtype=torch.float32):
    layer = layer.to(dtype)
    rows = z.to(dtype).expand(samples, -1)
    with torch.no_grad():
        return (layer(rows) > 0).double().mean(dim=0)


def assert_within_sampling_error(freq, p, samples, extra=0.0):
    sd = torch.sqrt(p * (1 - p) / samples).clamp_min(1e-12)
    worst = ((freq - p).abs() - extra) / sd
    assert float(worst.max()) <= Z_SIGMAS, f"frequency off by {float(worst.max()):.1f} sampling sd"


@pytest.mark.parametrize("noise", [nsm.BernoulliNoise(0.5), nsm.BernoulliNoise(0.2), nsm.GaussianNoise(0.7)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["kernel", "torch"])
def test_probability_mode_fires_with_probability_P(noise, dtype):
    torch.manual_seed(1)
    layer = make_linear(noise)
    z = random_states(1, 60)
    p = exact_probability(layer.weight, layer.bias, layer.beta, noise, z)[0]
    assert torch.allclose(layer.firing_probability(z)[0].double(), p, atol=1e-5)
    samples = 40_000
    assert_within_sampling_error(firing_frequency(layer, z, samples, dtype), p, samples)


def test_gaussian_synapse_mode_is_exactly_P():
    """With Gaussian xi, u is Gaussian with the stated mean and variance: the frequency is P itself."""
    torch.manual_seed(2)
    noise = nsm.GaussianNoise(1.3)
    layer = make_linear(noise)
    layer.mode = "synapse"
    z = random_states(1, 60, seed=3)
    p = exact_probability(layer.weight, layer.bias, layer.beta, noise, z)[0]
    samples = 40_000
    assert_within_sampling_error(firing_frequency(layer, z, samples), p, samples)


def berry_esseen_bound(w, p):
    """sup |F - Phi| <= C sum E|X_j - EX_j|^3 / (sum Var X_j)^(3/2), X_j = xi_j w_j z_j, C = 0.56 (Shevtsova 2010)."""
    third = p * (1 - p) * (p**2 + (1 - p) ** 2) * (w.abs() ** 3).sum(dim=1)
    var = p * (1 - p) * (w**2).sum(dim=1)
    return 0.56 * third / var**1.5


def test_bernoulli_synapse_mode_is_P_within_central_limit_error():
    torch.manual_seed(4)
    noise = nsm.BernoulliNoise(0.5)
    layer = make_linear(noise, n_in=400)
    layer.mode = "synapse"
    z = random_states(1, 400, seed=5)
    p = exact_probability(layer.weight, layer.bias, layer.beta, noise, z)[0]
    samples = 40_000
    bound = berry_esseen_bound(layer.weight.detach().double(), noise.p)
    assert float(bound.max()) < 0.1, "fan-in too small for a meaningful central-limit check"
    assert_within_sampling_error(firing_frequency(layer, z, samples), p, samples, extra=bound)


def explicit_eq4_frequency(weight, bias, beta, noise, z, samples, rng):
    """Independent simulation of eq. 4 in numpy: u = sum_j (xi_j + a) w_j z_j + b, one xi per synapse."""
    w = weight.detach().double().numpy()
    b = bias.detach().double().numpy()
    a = math.sqrt(2.0) * noise.std * beta.detach().double().numpy() - noise.mean
    zn = z.double().numpy()
    fired = np.zeros(w.shape[0])
    for i in range(w.shape[0]):
        if isinstance(noise, nsm.BernoulliNoise):
            xi = (rng.random((samples, w.shape[1])) < noise.p).astype(float)
        else:
            xi = 1.0 + noise.sigma * rng.standard_normal((samples, w.shape[1]))
        u = ((xi + a[i]) * w[i] * zn).sum(axis=1) + b[i]
        fired[i] = (u >= 0).mean()
    return torch.from_numpy(fired)


@pytest.mark.parametrize("noise", [nsm.BernoulliNoise(0.3), nsm.GaussianNoise(0.8)], ids=str)
def test_synapse_mode_matches_explicit_noise_simulation(noise):
    """Cross-check against an independent eq. 4 sampler: two frequencies, each with its own sampling error."""
    torch.manual_seed(6)
    layer = make_linear(noise, n_in=30, n_out=8)
    layer.mode = "synapse"
    z = random_states(1, 30, seed=7)
    samples = 30_000
    ours = firing_frequency(layer, z, samples)
    ref = explicit_eq4_frequency(layer.weight, layer.bias, layer.beta, noise, z[0], samples, np.random.default_rng(8))
    pooled = (ours + ref) / 2
    sd = torch.sqrt(2 * pooled * (1 - pooled) / samples).clamp_min(1e-12)
    assert float(((ours - ref).abs() / sd).max()) <= Z_SIGMAS


def test_conv_synapse_mode_marginals_include_the_border():
    """Each output unit of a -1 padded convolution, at a corner, an edge and the centre, follows eq. 4."""
    torch.manual_seed(9)
    noise = nsm.BernoulliNoise(0.5)
    conv = nsm.NSMConv2d(3, 4, 3, padding=1, noise=noise, mode="synapse")
    with torch.no_grad():
        conv.beta.copy_(torch.tensor([0.5, 1.0, -0.7, 1.8]))
        conv.bias.copy_(torch.tensor([0.1, -0.2, 0.0, 0.3]))
    z = random_states(1, 3, 5, 5, seed=10)
    samples = 30_000
    with torch.no_grad():
        freq = (conv(z.expand(samples, -1, -1, -1)) > 0).double().mean(dim=0)
    padded = F.pad(z, (1, 1, 1, 1), value=-1.0)[0]
    rng = np.random.default_rng(11)
    for y, x in [(0, 0), (0, 2), (2, 2), (4, 3)]:
        patch = padded[:, y : y + 3, x : x + 3].reshape(-1)
        ref = explicit_eq4_frequency(conv.weight.flatten(1), conv.bias, conv.beta, noise, patch, samples, rng)
        ours = freq[:, y, x]
        pooled = (ours + ref) / 2
        sd = torch.sqrt(2 * pooled * (1 - pooled) / samples).clamp_min(1e-12)
        assert float(((ours - ref).abs() / sd).max()) <= Z_SIGMAS, f"position {(y, x)}"


@pytest.mark.parametrize("c", [1e-3, 0.37, 5.0, 1e4])
def test_probability_is_invariant_to_scaling_w_and_b(c):
    torch.manual_seed(12)
    for layer, z in [
        (make_linear(nsm.BernoulliNoise(0.4)), random_states(5, 60)),
        (nsm.NSMConv2d(2, 3, 3, padding=1, noise=nsm.GaussianNoise(0.5)), random_states(2, 2, 6, 6)),
    ]:
        with torch.no_grad():
            layer.bias.uniform_(-0.5, 0.5)
            before = layer.firing_probability(z)
            layer.weight.mul_(c)
            layer.bias.mul_(c)
            after = layer.firing_probability(z)
        assert torch.allclose(before, after, atol=1e-6)


def test_beta_and_a_are_inverse():
    for noise in [nsm.BernoulliNoise(0.5), nsm.BernoulliNoise(0.1), nsm.GaussianNoise(2.0)]:
        beta = torch.linspace(-3, 3, 13, dtype=torch.float64)
        a = nsmf.a_from_beta(beta, noise)
        assert torch.allclose(nsmf.beta_from_a(a, noise), beta)
        assert torch.allclose(a, math.sqrt(2) * noise.std * beta - noise.mean)


@pytest.mark.parametrize(
    "make",
    [
        lambda: (make_linear(nsm.BernoulliNoise(0.5)), random_states(7, 60)),
        lambda: (nsm.NSMConv2d(3, 5, 3, padding=1, noise=nsm.GaussianNoise(0.6)), random_states(2, 3, 6, 6)),
    ],
    ids=["linear", "conv"],
)
def test_gradient_of_sample_equals_gradient_of_2P_minus_1(make):
    """d/dtheta <g, sample> == d/dtheta <g, 2P - 1> with P from the independent analytic expression."""
    torch.manual_seed(13)
    layer, z = make()
    z = z.clone().requires_grad_(True)
    params = [layer.weight, layer.bias, layer.beta]
    g = torch.randn_like(layer(z.detach()))
    sample_grads = torch.autograd.grad((g * layer(z)).sum(), params + [z])

    def analytic(weight, bias, beta, zin):
        m, s = layer.noise.mean, layer.noise.std
        a = math.sqrt(2.0) * s * beta - m
        pre = layer.affine(zin, weight)  # w.z with the layer's -1 padding
        norm = weight.flatten(1).norm(dim=1)
        shape = (1, -1) + (1,) * (pre.dim() - 2)
        mean = (m + a).reshape(shape) * pre + bias.reshape(shape)
        p = 0.5 * (1 + torch.erf(mean / (math.sqrt(2.0) * s * norm.reshape(shape))))
        return (g.double() * (2 * p - 1)).sum()

    leaves = [t.detach().double().requires_grad_(True) for t in params + [z]]
    ref_grads = torch.autograd.grad(analytic(*leaves), leaves)
    for ours, ref in zip(sample_grads, ref_grads):
        assert torch.allclose(ours.double(), ref, rtol=1e-4, atol=1e-6)


def test_minus_one_padded_conv_equals_spike_form():
    """W * z with -1 padding == 2 conv(s) - sum W with zero padding, s = (z + 1) / 2."""
    torch.manual_seed(14)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    z = random_states(2, 3, 7, 5).double()
    lhs = F.conv2d(F.pad(z, (1, 1, 1, 1), value=-1.0), w)
    s = (z + 1) / 2
    rhs = 2 * F.conv2d(s, w, padding=1) - w.sum(dim=(1, 2, 3)).reshape(1, -1, 1, 1)
    assert torch.allclose(lhs, rhs)


def test_layer_logit_in_spike_form_uses_effective_weights():
    torch.manual_seed(15)
    conv = nsm.NSMConv2d(3, 4, 3, padding=1).double()
    with torch.no_grad():
        conv.bias.uniform_(-1, 1)
    z = random_states(2, 3, 6, 6).double()
    w_eff, b_eff = conv.effective_weight()
    s = (z + 1) / 2
    spike = F.conv2d(s, 2 * w_eff, b_eff - w_eff.sum(dim=(1, 2, 3)), padding=1)
    assert torch.allclose(conv.logit(z), spike)


def test_deterministic_mode_is_sign_of_the_mean_preactivation():
    torch.manual_seed(16)
    layer = make_linear(nsm.BernoulliNoise(0.3))
    layer.mode = "deterministic"
    z = random_states(9, 60)
    m, s = layer.noise.mean, layer.noise.std
    a = math.sqrt(2) * s * layer.beta.detach() - m
    mean = (m + a) * (z @ layer.weight.detach().T) + layer.bias.detach()
    expected = torch.where(mean >= 0, 1.0, -1.0)
    assert torch.equal(layer(z), expected)


def test_binarize_and_or_pooling():
    counts = torch.tensor([[[[0, 3], [1, 0]]]])
    assert torch.equal(nsm.Binarize()(counts), torch.tensor([[[[-1.0, 1.0], [1.0, -1.0]]]]))
    frames = torch.zeros(2, 3, 2, 4, 4)
    assert nsm.Binarize()(frames).shape == (2, 6, 4, 4)
    assert nsm.Binarize().levels == (1,) and nsm.Binarize().out_channels(6) == 6
    z = random_states(3, 2, 4, 4)
    pooled = nsm.BinaryMaxPool2d(2)(z)
    blocks = z.unfold(2, 2, 2).unfold(3, 2, 2).reshape(3, 2, 2, 2, 4)
    expected = torch.where((blocks > 0).any(dim=-1), 1.0, -1.0)
    assert torch.equal(pooled, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_or_pool_without_gradient_takes_pairs_and_equals_the_explicit_or(dtype):
    """The no-gradient path (channels-last, 2x2 at stride 2: the larger of rows, then of columns) against the OR
    over unfolded windows; inputs it does not cover (odd sizes, NCHW, a 3x3 pool, a gradient to route, indices
    asked for) keep max-pooling and give the same OR."""
    pool = nsm.BinaryMaxPool2d(2)
    z = random_states(3, 5, 8, 6).to(dtype).contiguous(memory_format=torch.channels_last)
    blocks = z.unfold(2, 2, 2).unfold(3, 2, 2).reshape(3, 5, 4, 3, 4)
    expected = torch.where((blocks > 0).any(dim=-1), 1.0, -1.0).to(dtype)
    with torch.no_grad():
        assert pool._pairs_suffice(z)
        got = pool(z)
    assert torch.equal(got, expected) and got.is_contiguous(memory_format=torch.channels_last)
    graded = z.float().requires_grad_()
    assert not pool._pairs_suffice(graded) and torch.equal(pool(graded).detach(), expected.float())
    with torch.no_grad():
        for other, x in (
            (pool, z.contiguous()),
            (pool, z[..., :5]),
            (nsm.BinaryMaxPool2d(3, stride=2), z),
            (nsm.BinaryMaxPool2d(2, stride=1), z),
        ):
            assert not other._pairs_suffice(x)
            assert torch.equal(other(x), F.max_pool2d(x, other.kernel_size, other.stride))
        with_indices = nsm.BinaryMaxPool2d(2, return_indices=True)
        assert not with_indices._pairs_suffice(z)
        assert torch.equal(with_indices(z)[0], expected)


def test_noise_laws_validate_and_round_trip():
    with pytest.raises(ValueError, match="0 < p < 1"):
        nsm.BernoulliNoise(1.0)
    with pytest.raises(ValueError, match="sigma > 0"):
        nsm.GaussianNoise(0.0)
    for noise in [nsm.BernoulliNoise(0.25), nsm.GaussianNoise(1.5)]:
        assert nsm.noise_from_dict(noise.to_dict()) == noise
    xi = nsm.BernoulliNoise(0.25).sample((200_000,), generator=torch.Generator().manual_seed(0))
    assert abs(float(xi.mean()) - 0.25) <= Z_SIGMAS * math.sqrt(0.25 * 0.75 / 200_000)


@pytest.mark.parametrize(
    "k,p,h,w", [(3, 1, 8, 8), (3, 1, 3, 5), (5, 2, 7, 9), (5, 2, 4, 9), (3, 1, 2, 2), (3, 0, 6, 6)]
)
def test_convolution_equals_explicit_minus_one_padding(k, p, h, w):
    """The layer's convolution == convolution of the -1 padded input: without autograd (zero-padded
    convolution plus border correction) and with it (padded input), values and weight gradients."""
    torch.manual_seed(17)
    conv = nsm.NSMConv2d(3, 4, k, padding=p).double()
    z = random_states(2, 3, h, w).double()
    weight = torch.randn_like(conv.weight, requires_grad=True)
    ref = F.conv2d(F.pad(z, (p, p, p, p), value=-1.0), weight)
    with torch.no_grad():
        corrected = conv.affine(z, weight)
    assert corrected.shape == ref.shape and torch.allclose(corrected, ref)
    ours = conv.affine(z, weight)
    assert torch.allclose(ours, ref)
    g = torch.randn_like(ref)
    assert torch.allclose(
        torch.autograd.grad((g * ours).sum(), weight)[0], torch.autograd.grad((g * ref).sum(), weight)[0]
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["kernel", "torch"])
def test_public_sign_functions_leave_their_input_alone(dtype):
    """Only ``overwrite=True`` (used by the layers, which own their logits) may write states over v."""
    v = torch.randn(3, 40_000, dtype=dtype)
    keep = v.clone()
    with torch.no_grad():
        z = nsmf.sample_sign(v, generator=torch.Generator().manual_seed(0))
        nsmf.deterministic_sign(v)
    assert torch.equal(v, keep)
    with torch.no_grad():
        same = nsmf.sample_sign(v, generator=torch.Generator().manual_seed(0), overwrite=True)
    assert same.data_ptr() == v.data_ptr() and torch.equal(same, z)


def test_weight_cache_follows_every_tracked_parameter_change():
    """Inside a WeightCache the effective weights and border maps are computed once, then recomputed after
    in-place updates, ``load_state_dict``, a replaced parameter, a dtype change and a new input width."""
    torch.manual_seed(5)
    conv = nsm.NSMConv2d(3, 4, 3, padding=1, mode="deterministic")
    model = torch.nn.Sequential(conv)

    def fresh(z):
        return logits_from_scratch(conv, z)

    z = random_states(2, 3, 6, 6)
    calls = []
    with torch.no_grad(), nsm.WeightCache(model), counting(nsmf, "effective_weight", calls):
        assert torch.allclose(conv.logit(z), fresh(z), atol=1e-6)
        conv.logit(z)
        assert len(calls) == 1 + 1  # one for the layer (twice), one for fresh()
        conv.weight.mul_(-1.0).add_(0.3)
        conv.bias.add_(0.5)
        assert torch.allclose(conv.logit(z), fresh(z), atol=1e-6)
        conv.load_state_dict({k: torch.randn_like(v) for k, v in conv.state_dict().items()})
        assert torch.allclose(conv.logit(z), fresh(z), atol=1e-6)
        conv.weight = torch.nn.Parameter(torch.randn_like(conv.weight))
        assert torch.allclose(conv.logit(z), fresh(z), atol=1e-6)
        wide = random_states(2, 3, 6, 9)
        assert torch.allclose(conv.logit(wide), fresh(wide), atol=1e-6)
        conv.double()
        assert torch.allclose(conv.logit(z.double()), fresh(z.double()), atol=1e-12)


def test_without_a_weight_cache_nothing_is_kept():
    """Outside a WeightCache even edits through ``.data`` (invisible to version counters) take effect, and a
    cache is released when its block ends; a layer built in inference mode works inside one."""
    torch.manual_seed(6)
    conv = nsm.NSMConv2d(3, 4, 3, padding=1, mode="deterministic")
    z = random_states(2, 3, 6, 6)
    with torch.no_grad():
        with nsm.WeightCache(conv):
            before = conv.logit(z)
        conv.weight.data.mul_(-1.0)
        after = conv.logit(z)
        assert torch.allclose(after, logits_from_scratch(conv, z), atol=1e-6)
        assert not torch.allclose(after, before, atol=1e-3)
        with nsm.WeightCache(conv):
            assert torch.equal(conv.logit(z), after)
    with torch.inference_mode():
        built_here = nsm.NSMConv2d(3, 4, 3, padding=1, mode="deterministic")
        with nsm.WeightCache(built_here):
            assert torch.equal(built_here.logit(z), built_here.logit(z))


def logits_from_scratch(conv, z):
    """The layer's logits from its parameters, with explicit -1 padding."""
    w_eff, b_eff = nsmf.effective_weight(conv.weight, conv.bias, conv.beta, conv.noise)
    return F.conv2d(F.pad(z, (1, 1, 1, 1), value=-1.0), w_eff, b_eff)


@contextlib.contextmanager
def counting(module, name, calls):
    """Record each call of ``module.name`` in ``calls``."""
    original = getattr(module, name)

    def wrapper(*args, **kw):
        calls.append(name)
        return original(*args, **kw)

    setattr(module, name, wrapper)
    try:
        yield
    finally:
        setattr(module, name, original)


def test_binarize_levels_code_each_count_as_a_thermometer_level_major():
    """Level k of channel c is state channel k C + c: +1 where the channel's count reaches the level."""
    counts = torch.tensor([0, 1, 2, 3, 4, 7, 8, 100]).reshape(1, 1, 1, 8).repeat(2, 3, 1, 1)
    counts[:, 1] = 0  # a silent channel
    levels = (1, 2, 4, 8)
    states = nsm.Binarize(levels)(counts)
    assert states.shape == (2, 12, 1, 8) and nsm.Binarize(levels).out_channels(3) == 12
    for k, level in enumerate(levels):
        for c in range(3):
            want = [1.0 if int(n) >= level else -1.0 for n in counts[0, c, 0]]
            assert states[0, 3 * k + c, 0].tolist() == want, (level, c)
    assert torch.equal(nsm.Binarize((1,))(counts.float() * 0.5), nsm.Binarize()(counts.float() * 0.5))  # x > 0


@pytest.mark.parametrize(
    "levels, message",
    [
        ([], "1 to 16 event counts"),
        (list(range(1, 18)), "1 to 16 event counts"),
        ([0, 1], "positive whole event counts"),
        ([1, 2.5], "positive whole event counts"),
        ([True], "positive whole event counts"),
        ([1, 4, 2], "increase strictly"),
        ([2, 2], "increase strictly"),
        ("1,2", "a list of event counts"),
    ],
)
def test_binarize_refuses_levels_that_are_not_increasing_counts(levels, message):
    with pytest.raises(ValueError, match=message):
        nsm.Binarize(levels)
