"""Batch-normalized firing logits (nsm.normalization): exact conversions both ways, the batch-norm arithmetic
checked against an explicit formula, running moments, and the errors."""

import pytest
import torch

import models
import nsm
from nsm import functional as nsmf
from nsm.normalization import EPS, LogitNormalization

NSM_KINDS = ("bnsm", "gnsm", "ste", "bn")


def small_net(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return models.create_model("allconvnet18", neuron=kind, input_size=(16, 16), width=0.25)


def batch(seed: int = 1, n: int = 64) -> torch.Tensor:
    return (torch.rand(n, 6, 16, 16, generator=torch.Generator().manual_seed(seed)) < 0.2).float()


def unit_inputs(net, x) -> dict:
    """Each NSM unit's input on one deterministic evaluation pass over ``x``."""
    taken = {}
    hooks = [
        u.register_forward_pre_hook(lambda m, i: taken.setdefault(m, i[0])) for _, u in LogitNormalization.units_of(net)
    ]
    net.eval()
    with torch.no_grad(), nsm.using_mode(net, "deterministic"):
        net(x)
    for h in hooks:
        h.remove()
    return taken


def logits(net, inputs: dict, training: bool) -> list[torch.Tensor]:
    net.train(training)
    with torch.no_grad():
        return [unit.logit(inputs[unit]) for _, unit in LogitNormalization.units_of(net)]


@pytest.mark.parametrize("kind", NSM_KINDS)
def test_attach_keeps_every_logit_on_its_batch(kind):
    net, x = small_net(kind), batch()
    nsm.data_init(net, x)
    inputs = unit_inputs(net, x)
    before = logits(net, inputs, training=False)
    with nsm.using_mode(net, "deterministic"):
        LogitNormalization.attach(net, x)
    for training in (False, True):  # running moments = the batch's moments: the same logits
        for b, a in zip(before, logits(net, inputs, training)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_training_logit_is_the_batch_norm_formula():
    net, x = small_net("bnsm"), batch()
    norm = LogitNormalization.attach(net, x)
    with torch.no_grad():
        for p in net.parameters():  # move away from the converted values
            p.add_(0.1 * torch.randn_like(p))
    inputs = unit_inputs(net, batch(seed=2))
    for (_, unit), v in zip(LogitNormalization.units_of(net), logits(net, inputs, training=True)):
        z = inputs[unit]
        w_hat = unit.weight / unit.weight.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
        a = torch.nn.functional.conv2d(
            torch.nn.functional.pad(z, (1,) * 4 if unit.padding[0] else (0,) * 4, value=-1.0), w_hat
        )
        mu, var = a.mean((0, 2, 3), keepdim=True), a.var((0, 2, 3), unbiased=False, keepdim=True)
        b_eff = unit.bias / (2**0.5 * unit.noise.std * unit.weight.flatten(1).norm(dim=1))
        expected = unit.beta.reshape(1, -1, 1, 1) * (a - mu) / (var + EPS).sqrt() + b_eff.reshape(1, -1, 1, 1)
        torch.testing.assert_close(v, expected.detach(), atol=1e-4, rtol=1e-4)
    assert norm.units


def test_training_forward_moves_the_running_moments_and_logit_does_not():
    net, x = small_net("bn"), batch()
    norm = LogitNormalization.attach(net, x)
    unit = norm.units["1"]
    mean0 = unit.logit_norm.mean.clone()
    other = batch(seed=3)
    net.train()
    with torch.no_grad():
        unit.logit(net[0](other))  # a diagnostic read: no side effect
    torch.testing.assert_close(unit.logit_norm.mean, mean0, rtol=0, atol=0)
    with torch.no_grad():
        net(other)
    a = unit.affine(net[0](other), nsmf.unit_direction(unit.weight))
    torch.testing.assert_close(unit.logit_norm.mean, 0.9 * mean0 + 0.1 * a.mean((0, 2, 3)))


@pytest.mark.parametrize("kind", NSM_KINDS)
def test_folded_network_is_the_plain_nsm_of_evaluation_mode(kind):
    net, x = small_net(kind), batch()
    norm = LogitNormalization.attach(net, x)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    y = torch.randint(0, 11, (len(x),), generator=torch.Generator().manual_seed(0))
    net.train()
    for _ in range(3):  # parameters and moments move away from the attach values
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    inputs = unit_inputs(net, batch(seed=4))
    expected = logits(net, inputs, training=False)
    plain = models.create_model(**net.spec)
    plain.load_state_dict(norm.folded_state_dict())
    plain_units = dict(LogitNormalization.units_of(plain))
    plain.eval()
    with torch.no_grad():
        got = [plain_units[name].logit(inputs[unit]) for name, unit in LogitNormalization.units_of(net)]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)
    norm.fold()  # in place: the same plain NSM, nothing attached
    assert all(unit.logit_norm is None for _, unit in LogitNormalization.units_of(net))
    for e, g in zip(expected, logits(net, inputs, training=True)):  # a plain unit: training mode is the same map
        torch.testing.assert_close(g, e, atol=1e-4, rtol=1e-4)


def test_state_dict_and_resume_reproduce_the_normalization():
    net, x = small_net("bnsm"), batch()
    norm = LogitNormalization.attach(net, x)
    saved_params, saved_norm = net.state_dict(), norm.state_dict()
    again = small_net("bnsm", seed=5)
    again.load_state_dict(saved_params)
    LogitNormalization.resume(again, saved_norm)
    inputs = unit_inputs(net, x)
    again_inputs = {
        u2: inputs[u1] for (_, u1), (_, u2) in zip(LogitNormalization.units_of(net), LogitNormalization.units_of(again))
    }
    for training in (False, True):
        for a, b in zip(logits(net, inputs, training), logits(again, again_inputs, training)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="covers units"):
        LogitNormalization.resume(torch.nn.Sequential(*list(small_net("bnsm"))[:4]), saved_norm)


def test_errors_are_clear():
    net, x = small_net("bnsm"), batch()
    LogitNormalization.attach(net, x)
    with pytest.raises(ValueError, match="already has batch-normalized logits"):
        LogitNormalization.attach(net, x)
    nsm.set_mode(net, "synapse")
    with pytest.raises(ValueError, match="synapse mode"):
        net(x)
    unbiased = torch.nn.Sequential(nsm.Binarize(), nsm.NSMConv2d(6, 4, 3, padding=1, bias=False))
    with pytest.raises(ValueError, match="no bias"):
        LogitNormalization.attach(unbiased, x)
