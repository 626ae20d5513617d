"""Every registered model with every neuron kind, at two input sizes, forward and backward."""

from __future__ import annotations

import pytest
import torch

import models
import nsm

SIZES = {
    "allconvnet18": [(64, 64), (24, 40)],
    "allconvnet12": [(32, 32), (12, 20)],
    "nmnist_cnn": [(34, 34), (28, 40)],
    "specknet": [(32, 32), (13, 20)],
}


@pytest.mark.parametrize("neuron", nsm.NEURON_KINDS)
@pytest.mark.parametrize("name", models.list_models())
def test_forward_backward_at_two_sizes(name, neuron):
    assert name in SIZES, f"give the new model {name!r} two input sizes to test in SIZES"
    for size in SIZES[name]:
        torch.manual_seed(0)
        width = {"allconvnet18": 0.25, "allconvnet12": 0.25, "specknet": 0.5}.get(name)
        kw = {"width": width} if width else {"hidden": 64}
        net = models.create_model(name, input_size=size, in_channels=4, num_classes=7, neuron=neuron, **kw)
        x = torch.randint(0, 3, (3, 4, *size)).float()
        out = net(x)
        assert out.shape == (3, 7)
        assert torch.isfinite(out).all()
        out.square().sum().backward()
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert any(g.abs().sum() > 0 for g in grads[:-2]), "no gradient reaches the hidden layers"


def test_allconvnet18_layout():
    net = models.create_model("allconvnet18")
    convs = [m for m in net if isinstance(m, nsm.NSMConv2d)]
    assert len(convs) == 12
    assert [c.out_channels for c in convs] == [64] * 3 + [96] * 3 + [128] * 3 + [256] * 3
    assert [c.kernel_size[0] for c in convs] == [3] * 10 + [1, 1]
    assert sum(isinstance(m, nsm.BinaryMaxPool2d) for m in net) == 3
    assert isinstance(net[0], nsm.Binarize) and isinstance(net[-1], nsm.Readout)
    assert len(net) + 1 == 18  # the 17 modules plus the global average pooling inside Readout
    assert net.spec["in_channels"] == 6 and net.spec["input_size"] == [64, 64] and net.spec["num_classes"] == 11
    assert all(bool((c.beta == 1.0).all()) for c in convs)


def test_specknet_layout():
    """Nine unit convolutions (one per Speck core), stride-2 downsampling, no pools: 32 -> 16 -> 8 -> 4."""
    net = models.create_model("specknet")
    convs = [m for m in net if isinstance(m, nsm.NSMConv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 32, 32, 64, 64, 64, 128, 128]
    assert [c.stride[0] for c in convs] == [1, 1, 2, 1, 2, 1, 2, 1, 1]
    assert [c.kernel_size[0] for c in convs] == [3] * 7 + [1, 1]
    assert not any(isinstance(m, nsm.BinaryMaxPool2d) for m in net)
    assert isinstance(net[0], nsm.Binarize) and isinstance(net[-1], nsm.Readout) and len(net) == 11
    x = torch.zeros(1, 6, 32, 32)
    with torch.no_grad():
        for layer in list(net)[:-1]:
            x = layer(x)
    assert x.shape == (1, 128, 4, 4)


def test_nmnist_cnn_layout():
    net = models.create_model("nmnist_cnn", neuron="gnsm")
    convs = [m for m in net if isinstance(m, nsm.NSMConv2d)]
    assert [c.out_channels for c in convs] == [32, 64]
    linear = [m for m in net if isinstance(m, nsm.NSMLinear)]
    assert linear[0].in_features == 64 * 5 * 5 and linear[0].out_features == 1024
    assert net[-1].linear.out_features == 10


def test_spec_rebuilds_the_same_architecture():
    net = models.create_model("allconvnet12", neuron="gnsm", noise_sigma=0.5, width=0.5)
    again = models.create_model(**net.spec)
    again.load_state_dict(net.state_dict())
    assert again.spec == net.spec
    assert [type(m) for m in again] == [type(m) for m in net]
    assert again[1].noise == nsm.GaussianNoise(0.5)


def test_bad_arguments_are_clear():
    assert models.list_models() == ["allconvnet12", "allconvnet18", "nmnist_cnn", "specknet"]
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        models.create_model("resnet")
    with pytest.raises(ValueError, match="unknown neuron kind"):
        models.create_model("nmnist_cnn", neuron="lif")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\]"):
        models.create_model("nmnist_cnn", depth=3)
    with pytest.raises(ValueError, match="too small"):
        models.create_model("allconvnet18", input_size=(4, 4))
    with pytest.raises(ValueError, match="model option input_levels must increase strictly"):
        models.create_model("allconvnet18", input_levels=[4, 2])


@pytest.mark.parametrize("name", models.list_models())
def test_input_levels_widen_the_first_layer_and_survive_the_spec(name):
    """``input_levels``: the first unit reads count channels x levels states; ``create_model(**spec)`` rebuilds it."""
    net = models.create_model(name, neuron="bnsm", input_levels=[1, 3])
    channels = net.spec["in_channels"]
    assert net[0].levels == (1, 3) and net[1].in_channels == 2 * channels
    again = models.create_model(**net.spec)
    assert again[0].levels == (1, 3) and again[1].in_channels == 2 * channels
    x = torch.randint(0, 5, (2, channels, *net.spec["input_size"])).float()
    assert net(x).shape == (2, net.spec["num_classes"])


@pytest.mark.parametrize("kind", nsm.NEURON_KINDS)
def test_each_kind_behaves_as_the_kind_table_says(kind):
    """``nsm.neurons.KINDS``: binary kinds emit {-1, +1}, the others rectified values >= 0; kinds that sample
    give two different outputs for the same input, the others the same; every unit carries its kind's name."""
    facts = nsm.neurons.KINDS[kind]
    x = nsm.Binarize()(torch.randint(0, 2, (2, 3, 8, 8)).float())
    torch.manual_seed(0)
    units = nsm.neuron_kind(kind)
    conv, linear = units.conv(3, 4, 3, padding=1), units.linear(5, 2)
    assert conv.neuron == kind and linear.neuron == kind and units.binary == facts.binary
    first, second = conv(x), conv(x)
    if facts.binary:
        assert set(first.unique().tolist()) <= {-1.0, 1.0}
    else:
        assert (first >= 0).all()
    assert torch.equal(first, second) != facts.samples


def test_conv_noise_p_sets_the_convolutions_apart_and_survives_a_checkpoint(tmp_path):
    """The original N-MNIST code: Bernoulli p = 0.25 in the convolutions, 0.5 in the fully connected layer."""
    from pipelines.checkpoint import load_checkpoint, save_checkpoint

    net = models.create_model("nmnist_cnn", neuron="bnsm", noise_p=0.5, conv_noise_p=0.25, hidden=16)
    convs = [m for m in net if isinstance(m, nsm.NSMConv2d)]
    linear = [m for m in net if isinstance(m, nsm.NSMLinear)]
    assert len(convs) == 2 and len(linear) == 1
    assert all(c.noise == nsm.BernoulliNoise(0.25) for c in convs)
    assert linear[0].noise == nsm.BernoulliNoise(0.5)
    assert net.spec["conv_noise_p"] == 0.25
    again = models.create_model(**net.spec)
    assert [m.noise for m in again if hasattr(m, "noise")] == [m.noise for m in net if hasattr(m, "noise")]
    save_checkpoint(tmp_path / "ck.pt", net, classes=[str(d) for d in range(10)])
    loaded = load_checkpoint(tmp_path / "ck.pt").model
    assert loaded.spec == net.spec
    assert [m.noise for m in loaded if hasattr(m, "noise")] == [nsm.BernoulliNoise(p) for p in (0.25, 0.25, 0.5)]
    # every Bernoulli kind takes it; None (the default) leaves one p everywhere; Gaussian noise ignores it
    for kind in ("ste", "bn"):
        k = nsm.neuron_kind(kind, noise_p=0.6, conv_noise_p=0.3)
        assert k.conv(3, 4, 3).noise.p == 0.3 and k.linear(3, 4).noise.p == 0.6
    same = nsm.neuron_kind("bnsm", noise_p=0.6)
    assert same.conv(3, 4, 3).noise.p == same.linear(3, 4).noise.p == 0.6
    gauss = nsm.neuron_kind("gnsm", noise_sigma=0.5, conv_noise_p=0.3)
    assert gauss.conv(3, 4, 3).noise == gauss.linear(3, 4).noise == nsm.GaussianNoise(0.5)


@pytest.mark.parametrize("p", [0.0, 1.0, 1.5, -0.25])
def test_conv_noise_p_outside_the_open_unit_interval_is_rejected_by_name(p):
    with pytest.raises(ValueError, match=r"conv_noise_p: Bernoulli noise needs 0 < p < 1"):
        models.create_model("nmnist_cnn", conv_noise_p=p)
