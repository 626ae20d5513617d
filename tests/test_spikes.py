"""The ``int8`` precision: binary states as spikes (uint8) and their int8 products (nsm.spikes).

The references are written here from the definitions, in float64: a unit's weights rounded per output unit to 127
levels of its largest one, the states z = 2 s - 1 of the spikes s, the -1 border padded explicitly. oneDNN's product
is exact in int32 and rounds the logit once to bfloat16 (relative error at most 2^-9), after float32 scaling
(relative 2^-24 a term): |v - v_ref| <= 2^-8 |v_ref| + 1e-5 (the float32 terms summed over at most a few hundred
inputs of weights below 1).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
import nsm
from events.errors import InputError
from nsm import functional as nsmf
from nsm import kernels, spikes
from nsm.layers import Binarize, BinaryMaxPool2d, NSMConv2d, NSMLinear, Readout
from nsm.noise import BernoulliNoise

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.skipif(spikes.unavailable(torch.device("cpu")) is not None, reason="no oneDNN int8 kernels"),
]


def rounded_weights(w: torch.Tensor) -> torch.Tensor:
    """Each output unit's weights on the grid of 127 levels of its largest magnitude, in float64."""
    w = w.detach().double()
    r = w.abs().flatten(1).amax(1) / 127
    r = torch.where(r > 0, r, torch.ones_like(r)).reshape(-1, *[1] * (w.dim() - 1))
    return torch.round(w / r) * r


def within_bf16(v: torch.Tensor, ref: torch.Tensor) -> bool:
    return bool(((v.double() - ref).abs() <= 2.0**-8 * ref.abs() + 1e-5).all())


def random_states(*shape) -> torch.Tensor:
    return torch.where(torch.rand(*shape) < 0.5, 1.0, -1.0)


def test_spikes_are_the_states_plus_one_halved_and_keep_the_memory_format():
    z = random_states(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    s = spikes.encode(z)
    assert s.dtype == torch.uint8 and s.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(s.double(), (z.double() + 1) / 2)
    assert torch.equal(spikes.decode(s), z)


def test_quantize_rounds_each_unit_to_127_levels_of_its_largest_weight():
    torch.manual_seed(0)
    w = torch.randn(5, 3, 3, 3)
    w[2] = 0.0
    q, r = spikes.quantize(w)
    assert q.dtype == torch.int8 and r.dtype == torch.float32
    assert int(q.abs().max()) == 127 and bool((q[2] == 0).all()) and float(r[2]) == 1.0
    for i in (0, 1, 3, 4):
        assert int(q[i].abs().max()) == 127
        assert bool(((q[i].double() * r[i] - w[i].double()).abs() <= r[i].double() / 2 * (1 + 1e-6)).all())
    torch.testing.assert_close(q.double() * r.double().reshape(-1, 1, 1, 1), rounded_weights(w), rtol=1e-6, atol=0)


@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (5, 1, 0), (1, 1, 0), (3, 1, 2)])
def test_int8_convolution_of_spikes_is_the_rounded_weights_convolution_of_the_states(kernel, stride, padding):
    """Every output position, the border's included: the -1 border is the spike 0, no correction needed."""
    torch.manual_seed(kernel + stride + padding)
    unit = NSMConv2d(6, 7, kernel, stride=stride, padding=padding)
    with torch.no_grad():
        unit.bias.normal_()
        unit.beta.uniform_(0.5, 3.0)
    z = random_states(3, 6, 9, 11)
    w, b = unit.effective_weight()
    with torch.no_grad():
        v = unit.affine(spikes.encode(z).contiguous(memory_format=torch.channels_last), w, b)
    ref = F.conv2d(F.pad(z.double(), (padding,) * 4, value=-1.0), rounded_weights(w), b.double(), stride)
    assert v.dtype == torch.bfloat16 and v.shape == ref.shape
    assert within_bf16(v, ref)
    exact = F.conv2d(F.pad(z.double(), (padding,) * 4, value=-1.0), w.detach().double(), b.double(), stride)
    assert not within_bf16(v, exact) or kernel == 1, "the weights were not rounded to int8"


def test_int8_matrix_product_of_spikes_is_the_rounded_weights_product_of_the_states():
    torch.manual_seed(1)
    unit = NSMLinear(40, 9)
    with torch.no_grad():
        unit.bias.normal_()
    z = random_states(4, 40)
    w, b = unit.effective_weight()
    with torch.no_grad():
        v = unit.affine(spikes.encode(z), w, b)
    assert v.dtype == torch.bfloat16
    assert within_bf16(v, F.linear(z.double(), rounded_weights(w), b.double()))


def test_the_sampler_writes_spikes_with_the_draws_of_the_bfloat16_states():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 1.5, 100_003).astype(np.float32)).bfloat16()
    bits = logits.view(torch.int16).numpy().view(np.uint16)
    patterns = kernels.sample_sign_cpu(bits, 5)
    for threads in (1, 2):
        fired = kernels.sample_sign_cpu(bits, 5, threads=threads, spikes=True)
        assert fired.dtype == np.uint8
        assert np.array_equal(fired, (patterns == kernels.BF16_PLUS).astype(np.uint8))
        signs = kernels.sign_cpu(bits, threads=threads, spikes=True)
        assert np.array_equal(signs, (kernels.sign_cpu(bits) == kernels.BF16_PLUS).astype(np.uint8))
    with pytest.raises(InputError, match="from bfloat16 logits"):
        kernels.sample_sign_cpu(np.zeros(4, np.float32), 1, spikes=True)
    with pytest.raises(InputError, match="out must be uint8"):
        kernels.sample_sign_cpu(bits, 1, out=np.zeros(bits.size, np.uint16), spikes=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_drawn_spikes_are_the_drawn_states_encoded(dtype):
    """From bfloat16 logits the sampler writes them, from others they are encoded: either way, the same draws."""
    v = (torch.randn(2, 5, 6, 7) * 2).to(dtype).contiguous(memory_format=torch.channels_last)
    fired = nsmf.draw_spikes(v, torch.Generator().manual_seed(3))
    states = nsmf.draw_states(v, torch.Generator().manual_seed(3))
    assert fired.dtype == torch.uint8 and fired.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(fired, spikes.encode(states))
    assert torch.equal(nsmf.sign_spikes(v), spikes.encode(nsmf.sign_states(v)))


def test_layers_emit_spikes_only_inside_the_context_and_without_autograd():
    counts = torch.tensor([[[[0.0, 1.0], [3.0, 0.0]]]])
    binarize, unit = Binarize(levels=(1, 2)), NSMConv2d(2, 3, 3, padding=1)
    with torch.no_grad():
        states = binarize(counts)
        assert states.dtype == torch.float32
        with spikes.using_spikes():
            fired = binarize(counts)
            assert fired.dtype == torch.uint8 and torch.equal(spikes.decode(fired), states)
            assert unit(fired).dtype == torch.uint8
    with spikes.using_spikes():
        assert binarize(counts).dtype == torch.float32  # autograd on: a gradient cannot flow through a spike
    assert not spikes.emitting()


def test_the_pool_and_readout_take_spikes_as_the_states_they_stand_for():
    z = random_states(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    s = spikes.encode(z)
    pool = BinaryMaxPool2d(2)
    readout = Readout(4, 3)
    with torch.no_grad():
        assert torch.equal(pool(s), spikes.encode(pool(z)))
        assert torch.equal(BinaryMaxPool2d(3, 1)(s), spikes.encode(BinaryMaxPool2d(3, 1)(z)))
        torch.testing.assert_close(readout(s), readout(z), rtol=0, atol=0)


def test_the_synapse_mode_decodes_spikes():
    torch.manual_seed(0)
    unit = NSMConv2d(3, 4, 3, padding=1, noise=BernoulliNoise(0.5))
    unit.mode = "synapse"
    z = random_states(2, 3, 5, 5)
    with torch.no_grad():
        unit.generator = torch.Generator().manual_seed(1)
        from_states = unit(z)
        unit.generator = torch.Generator().manual_seed(1)
        from_spikes = unit(spikes.encode(z))
    assert torch.equal(from_spikes, from_states)


def reference_step(module, x: torch.Tensor) -> torch.Tensor:
    """One layer of the deterministic network (z = sgn v, sgn 0 = +1) in float64 with every unit's weights rounded to
    int8, from the states ``x`` (the logits v for a unit, the class logits for the readout)."""
    if isinstance(module, Binarize):
        return torch.cat([torch.where(x > level - 1, 1.0, -1.0) for level in module.levels], 1).double()
    if isinstance(module, NSMConv2d):
        w, b = module.effective_weight()
        p = module.padding[0]
        return F.conv2d(F.pad(x, (p,) * 4, value=-1.0), rounded_weights(w), b.double(), module.stride)
    if isinstance(module, NSMLinear):
        w, b = module.effective_weight()
        return F.linear(x, rounded_weights(w), b.double())
    if isinstance(module, BinaryMaxPool2d):
        return F.max_pool2d(x, module.kernel_size, module.stride)
    if isinstance(module, torch.nn.Flatten):
        return x.flatten(1)
    if isinstance(module, Readout):
        return F.linear(module.pool(x), module.linear.weight.double(), module.linear.bias.double())
    raise AssertionError(f"no reference for {module}")


@pytest.mark.parametrize(
    "name, in_channels, size, options",
    [("allconvnet18", 6, (16, 16), {"width": 0.25, "input_levels": [1, 2]}), ("nmnist_cnn", 2, (34, 34), {})],
)
def test_the_int8_deterministic_network_is_the_rounded_weights_network(name, in_channels, size, options):
    """Layer after layer of spikes (3x3 with the -1 border, 5x5 without, a fully connected layer), each layer from the
    states the one before passed on: the states of the float64 layer with int8-rounded weights, except where its
    logit is within 1e-5 of 0 (float32 rounding decides the sign there; none with these seeds), and the class
    logits to float32 rounding. Biases nonzero, as training leaves them (with none, a logit on the weights' grid is
    often exactly 0)."""
    torch.manual_seed(0)
    net = models.create_model(name, in_channels=in_channels, input_size=size, num_classes=5, neuron="bnsm", **options)
    for unit in net.modules():
        if isinstance(unit, (NSMConv2d, NSMLinear)):
            torch.nn.init.normal_(unit.bias, 0.0, 0.2)
    seen = []
    for module in net:
        module.register_forward_hook(lambda module, args, out: seen.append((module, args[0], out)))
    counts = torch.randint(0, 4, (3, in_channels, *size)).float()
    with torch.no_grad(), nsm.using_mode(net, "deterministic"), spikes.using_spikes():
        net(counts)
    assert [module for module, _, _ in seen] == list(net)
    for module, x, out in seen:
        x = spikes.decode(x).double() if spikes.is_spikes(x) else x.double()
        ref = reference_step(module, x)
        if isinstance(module, Readout):
            torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-5)
            continue
        assert spikes.is_spikes(out), module
        if isinstance(module, (NSMConv2d, NSMLinear)):
            decided = ref.abs() > 1e-5
            ref = torch.where(ref >= 0, 1.0, -1.0).double()
            assert bool(decided.all())
        assert torch.equal(spikes.decode(out).double(), ref), module


def test_int8_monte_carlo_passes_spikes_between_layers_and_keeps_probabilities_float32():
    torch.manual_seed(0)
    net = models.create_model("allconvnet18", in_channels=6, input_size=(16, 16), num_classes=5, neuron="bnsm")
    seen = []
    for module in list(net)[2:]:
        module.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    settings = nsm.MCSettings(samples=3, precision="int8")
    probs = settings.predict(net, torch.randint(0, 3, (2, 6, 16, 16)).float()).probs
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    assert seen and {z.dtype for z in seen} == {torch.uint8}
    assert all(bool((z <= 1).all()) for z in seen)
    assert settings.describe() == "MC 3, int8"
    assert not spikes.emitting()


def test_int8_monte_carlo_of_a_real_valued_network_is_its_float32_prediction():
    """The dcnn's units decode the spikes they read (their border is 0, which no spike holds): nothing is rounded."""
    torch.manual_seed(0)
    net = models.create_model("allconvnet18", in_channels=6, input_size=(16, 16), num_classes=5, neuron="dcnn")
    x = torch.randint(0, 3, (2, 6, 16, 16)).float()
    int8 = nsm.MCSettings(samples=2, precision="int8").predict(net, x).probs
    torch.testing.assert_close(int8, nsm.MCSettings(samples=2).predict(net, x).probs, rtol=0, atol=0)


def test_int8_monte_carlo_fires_at_the_rounded_networks_rates():
    """One NSM layer sampled 4000 times from fixed input states: each unit's firing rate against
    P = 1/2 (1 + erf v_ref), v_ref the rounded weights' logit in float64, within 5 binomial standard errors plus the
    bfloat16 logit's effect on P (|dP| <= |dv| / sqrt(pi))."""
    torch.manual_seed(2)
    unit = NSMConv2d(4, 3, 3, padding=1)
    with torch.no_grad():
        unit.bias.normal_(0, 0.5)
    z = random_states(1, 4, 5, 5)
    w, b = unit.effective_weight()
    v_ref = F.conv2d(F.pad(z.double(), (1,) * 4, value=-1.0), rounded_weights(w), b.double())
    p_ref = 0.5 * (1 + torch.erf(v_ref))
    n = 4000
    rows = spikes.encode(z).expand(n, -1, -1, -1).contiguous(memory_format=torch.channels_last)
    unit.generator = torch.Generator().manual_seed(0)
    with torch.no_grad(), spikes.using_spikes():
        rate = unit(rows).double().mean(0, keepdim=True)
    bound = 5 * torch.sqrt(p_ref * (1 - p_ref) / n) + (2.0**-8 * v_ref.abs() + 1e-5) / np.sqrt(np.pi) + 1e-6
    assert bool(((rate - p_ref).abs() <= bound + 1.0 / n).all())


def test_int8_needs_the_cpu():
    net = models.create_model("allconvnet18", in_channels=6, input_size=(16, 16), num_classes=5, neuron="bnsm")
    with pytest.raises(InputError, match="int8 products run on the CPU .oneDNN., not on meta; use float32 or bf"):
        nsm.MCSettings(samples=2, precision="int8").predict(net, torch.zeros(1, 6, 16, 16, device="meta"))
