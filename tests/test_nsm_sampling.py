"""Modes and Monte Carlo prediction."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import models
import nsm


def small_net(neuron="bnsm"):
    torch.manual_seed(0)
    return models.create_model(
        "allconvnet18", in_channels=2, input_size=(16, 16), num_classes=5, neuron=neuron, width=0.125
    )


def test_set_mode_switches_every_stochastic_unit_and_using_mode_restores():
    net = small_net()
    units = nsm.sampling.stochastic_units(net)
    assert len(units) == 12
    nsm.set_mode(net, "deterministic")
    assert {u.mode for u in units} == {"deterministic"}
    with nsm.using_mode(net, "synapse"):
        assert {u.mode for u in units} == {"synapse"}
    assert {u.mode for u in units} == {"deterministic"}
    with pytest.raises(ValueError, match="unknown mode"):
        nsm.set_mode(net, "mean")


def test_mc_probabilities_are_distributions_and_reproducible():
    net = small_net()
    x = torch.randint(0, 3, (4, 2, 16, 16)).float()
    res = nsm.mc_predict(net, x, samples=8, generator=torch.Generator().manual_seed(1))
    assert res.probs.shape == (4, 5)
    assert torch.allclose(res.probs.sum(dim=1), torch.ones(4), atol=1e-5)
    assert res.samples_used.tolist() == [8] * 4
    again = nsm.mc_predict(net, x, samples=8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(res.probs, again.probs)
    other = nsm.mc_predict(net, x, samples=8, generator=torch.Generator().manual_seed(2))
    assert not torch.equal(res.probs, other.probs)


def test_mc_samples_are_batched_not_looped():
    net = small_net()
    calls = []
    net[-1].register_forward_hook(lambda module, inp, out: calls.append(inp[0].shape[0]))
    nsm.mc_predict(net, torch.zeros(3, 2, 16, 16), samples=16)
    assert calls == [48]
    calls.clear()
    nsm.mc_predict(net, torch.zeros(3, 2, 16, 16), samples=16, max_batch=20)
    assert calls == [20, 20, 8]


def test_first_logits_computed_once_per_input_give_exactly_the_repeated_input_samples():
    """MC computes the first NSM layer's logits once per input and repeats them; the samples are bit for bit
    those of running the whole network on the input repeated K times with the same noise stream."""
    net = small_net()
    x = torch.randint(0, 2, (3, 2, 16, 16)).float()
    first = next(m for m in net if isinstance(m, nsm.NSMConv2d))
    seen = []
    first.register_forward_hook(lambda module, inp, out: seen.append(inp[0].shape[0]))
    with torch.inference_mode(), nsm.using_generator(net, torch.Generator().manual_seed(9)):
        shared = nsm.sample_probabilities(net, x, 5)
    assert seen == []  # the unit's full forward (on K copies) never ran
    with torch.inference_mode(), nsm.using_generator(net, torch.Generator().manual_seed(9)):
        repeated = torch.softmax(net(x.repeat(5, 1, 1, 1)), 1).reshape(5, 3, -1)
    assert torch.equal(shared, repeated)


def test_mc_mean_is_the_average_of_single_sample_softmaxes():
    """K-sample MC equals the mean over K single passes drawn from the same noise stream."""
    net = small_net()
    x = torch.randint(0, 2, (2, 2, 16, 16)).float()
    k = 6
    with torch.inference_mode(), nsm.using_generator(net, torch.Generator().manual_seed(5)):
        rows = nsm.sample_probabilities(net, x, k)
    res = nsm.mc_predict(net, x, samples=k, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(res.probs, rows.mean(dim=0), atol=1e-6)


class Fixed(nn.Module):
    """Stochastic toy: logits = base + noise_scale * N(0, 1); confident or undecided by construction."""

    def __init__(self, base, noise_scale):
        super().__init__()
        self.base, self.noise_scale = base, noise_scale

    def forward(self, idx):
        rows = self.base[idx.long().flatten()]
        return rows + self.noise_scale * torch.randn_like(rows)


def test_adaptive_stops_early_on_confident_inputs_only():
    base = torch.tensor([[12.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.3, 0.0]])
    model = Fixed(base, noise_scale=0.5)
    x = torch.tensor([[0], [1], [2]])
    res = nsm.mc_predict(model, x, adaptive=True, threshold=0.9, min_samples=4, max_samples=40, step=3)
    assert res.samples_used.tolist() == [4, 40, 40]
    assert res.probs[0].argmax() == 0 and res.probs[0, 0] > 0.99
    assert torch.allclose(res.probs.sum(dim=1), torch.ones(3), atol=1e-5)


def test_adaptive_stops_at_the_first_confident_running_mean():
    """A model whose confidence rises over successive calls: the stop point is exact within a round."""

    class Rising(nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            n = x.shape[0]
            start = self.calls
            self.calls += n
            # sample j (0-based, in draw order) has logits [j, 0]
            j = torch.arange(start, start + n, dtype=torch.float32)
            return torch.stack([j, torch.zeros(n)], dim=1)

    res = nsm.mc_predict(
        Rising(), torch.zeros(1, 1), adaptive=True, threshold=0.8, min_samples=2, max_samples=50, step=8
    )
    sm = torch.softmax(torch.stack([torch.arange(50.0), torch.zeros(50)], dim=1), dim=1)[:, 0]
    running = sm.cumsum(0) / torch.arange(1, 51)
    first = int(((running >= 0.8) & (torch.arange(1, 51) >= 2)).nonzero()[0]) + 1
    assert int(res.samples_used[0]) == first
    assert torch.allclose(res.probs[0, 0], running[first - 1])


def test_temper_keeps_the_ranking_and_inverts_exactly():
    p = torch.softmax(torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64), dim=1)
    assert nsm.sampling.temper(p, 1.0) is p
    sharp = nsm.sampling.temper(p, 0.5)
    torch.testing.assert_close(sharp, p**2 / (p**2).sum(dim=1, keepdim=True))  # softmax(2 log p)
    assert torch.equal(sharp.argsort(dim=1), p.argsort(dim=1))
    torch.testing.assert_close(nsm.sampling.temper(sharp, 2.0), p)


def test_mc_at_a_temperature_is_the_tempered_average_and_adaptive_tests_it():
    """The same noise (``Fixed`` draws from torch's global generator) at T and at 1: fixed K gives temper(average);
    adaptive stops where the tempered running mean first reaches the threshold."""
    base = torch.tensor([[1.5, 0.0, 0.0], [0.0, 0.8, 0.0]])
    x = torch.tensor([[0], [1]])
    torch.manual_seed(1)
    plain = nsm.mc_predict(Fixed(base, 0.5), x, samples=8)
    torch.manual_seed(1)
    warm = nsm.mc_predict(Fixed(base, 0.5), x, samples=8, temperature=0.5)
    torch.testing.assert_close(warm.probs, nsm.sampling.temper(plain.probs, 0.5))
    args = dict(adaptive=True, threshold=0.7, min_samples=2, max_samples=40, step=1)
    torch.manual_seed(1)
    raw = nsm.mc_predict(Fixed(base, 0.5), x, **args)
    torch.manual_seed(1)
    sharp = nsm.mc_predict(Fixed(base, 0.5), x, **args, temperature=0.3)
    torch.manual_seed(1)
    first_two = torch.softmax(Fixed(base, 0.5)(x.repeat(2, 1)), dim=1).reshape(2, 2, 3).mean(dim=0)
    assert bool((first_two.amax(dim=1) < 0.7).all())  # at T 1 neither input is decided after two samples ...
    assert bool((raw.samples_used > 2).all()) and sharp.samples_used.tolist() == [2, 2]  # ... at T 0.3 both are
    torch.testing.assert_close(sharp.probs, nsm.sampling.temper(first_two, 0.3))
    assert bool((sharp.confidence >= 0.7).all())


def test_mc_predict_argument_checks():
    net = small_net()
    x = torch.zeros(1, 2, 16, 16)
    with pytest.raises(ValueError, match="either"):
        nsm.mc_predict(net, x)
    with pytest.raises(ValueError, match="either"):
        nsm.mc_predict(net, x, samples=3, adaptive=True)
    with pytest.raises(ValueError, match="min_samples"):
        nsm.mc_predict(net, x, adaptive=True, min_samples=10, max_samples=5)


def test_mc_predict_restores_training_flag_and_modes():
    net = small_net().train()
    nsm.mc_predict(net, torch.zeros(1, 2, 16, 16), samples=2)
    assert net.training
    assert {u.mode for u in nsm.sampling.stochastic_units(net)} == {"probability"}


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(samples=0), "samples must be an integer in 1..4096, got 0"),
        (dict(samples=2.5), "samples must be an integer in 1..4096"),
        (dict(samples=4097), "samples must be an integer in 1..4096, got 4097"),
        (dict(adaptive=True, max_samples=10**9), "max_samples must be an integer in 1..4096"),
        (dict(adaptive=True, min_samples=8, max_samples=4), "min_samples <= max_samples"),
        (dict(adaptive=True, threshold=0.0), r"threshold must be in \(0, 1\]"),
        (dict(adaptive=True, step=0), "step must be an integer in 1..4096"),
        (dict(adaptive="yes"), "adaptive must be true or false"),
        (dict(temperature=0.0), r"temperature must be in \(0, 100\]"),
        (dict(temperature=float("nan")), r"temperature must be in \(0, 100\]"),
        (dict(temperature=True), "temperature must be"),
    ],
)
def test_mc_settings_are_checked_once_with_the_setting_named(settings, message):
    with pytest.raises(ValueError, match=message):
        nsm.MCSettings(**settings)


def test_eval_config_takes_the_mc_settings_defaults():
    from pipelines.config import EvalConfig

    assert EvalConfig().mc == nsm.MCSettings()


def test_overridden_changes_the_given_settings_only():
    base = nsm.MCSettings(samples=8, adaptive=True, min_samples=4, max_samples=16, temperature=2.0)
    assert base.overridden() == base == base.overridden(samples=None, adaptive=None, threshold=None)
    assert base.overridden(samples=3) == dataclasses.replace(base, samples=3, adaptive=False)  # samples: fixed
    assert base.overridden(adaptive=False) == dataclasses.replace(base, adaptive=False)
    assert base.overridden(threshold=0.7, precision="bfloat16") == dataclasses.replace(
        base, threshold=0.7, precision="bfloat16"
    )
    # a maximum below the minimum lowers it, unless the minimum is given too
    assert (base.overridden(max_samples=2).min_samples, base.overridden(max_samples=32).min_samples) == (2, 4)
    with pytest.raises(ValueError, match="min_samples <= max_samples"):
        base.overridden(min_samples=3, max_samples=2)
    with pytest.raises(ValueError, match="give either"):
        base.overridden(samples=3, adaptive=True)
    with pytest.raises(ValueError, match="max_samples must be an integer in 1..4096"):
        base.overridden(max_samples=0)
