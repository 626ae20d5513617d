"""Data-dependent initialisation (``nsm.initialization.data_init``) of every neuron kind."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import models
import nsm
from nsm.initialization import data_init
from nsm.neurons import NEURON_KINDS

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RESCALED_KINDS = [k for k in NEURON_KINDS if k != "dcnn"]  # dcnn's batch norm standardizes on its own


def small(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    return models.create_model(
        "allconvnet18", in_channels=2, input_size=(16, 16), num_classes=3, width=0.25, neuron=kind
    )


def sparse_events(n: int = 64, seed: int = 1) -> torch.Tensor:
    """Event-count frames with about 15 % of the pixels active, as binned DVS clips are."""
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 2, 16, 16, generator=g) < 0.15).float()


def unit_inputs(model, x):
    """(unit, its input, the module that runs right after it) for every hidden unit, in forward order."""
    layers, out, h = list(model), [], x
    for i, layer in enumerate(layers):
        if hasattr(layer, "preactivation"):
            out.append((layer, h, layers[i + 1]))
        h = layer(h)
    return out


@pytest.mark.parametrize("kind", NEURON_KINDS)
def test_every_kind_but_batch_norm_is_initialised(kind):
    model = small(kind)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert data_init(model, sparse_events()) == (12 if kind in RESCALED_KINDS else 0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    if kind == "dcnn":  # nothing to do: not even batch norm's running statistics move
        assert changed == set()
    else:
        assert changed and all(k.endswith(("beta", "bias", "weight", ".g")) for k in changed), changed
    assert model.training  # the caller's training flag is restored


@pytest.mark.parametrize("kind", RESCALED_KINDS)
def test_scale_preactivation_is_an_affine_change_of_the_preactivation(kind):
    model = small(kind)
    unit = [m for m in model if hasattr(m, "scale_preactivation")][1]
    z = torch.where(torch.rand(8, unit.in_channels, 16, 16) < 0.5, 1.0, -1.0)
    with torch.no_grad():
        before = unit.preactivation(z)
        scale = torch.rand(unit.out_channels) + 0.5
        shift = torch.randn(unit.out_channels)
        unit.scale_preactivation(scale, shift)
        after = unit.preactivation(z)
    torch.testing.assert_close(
        after, before * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("kind", ["bn", "bd", "wbd", "sn"])
@pytest.mark.parametrize("gain", [1.0, 2.5])
def test_units_not_followed_by_a_pool_are_standardized(kind, gain):
    """Deterministic kinds: each unit's pre-activation over the batch has mean 0 and standard deviation gain."""
    model, x = small(kind), sparse_events()
    with nsm.using_mode(model, "deterministic"):
        data_init(model, x, gain=gain)
        with torch.no_grad():
            for unit, h, after in unit_inputs(model, x):
                if isinstance(after, torch.nn.MaxPool2d):
                    continue
                u = unit.preactivation(h)
                dims = (0, 2, 3)
                torch.testing.assert_close(u.mean(dims), torch.zeros(u.shape[1]), atol=1e-4, rtol=0)
                torch.testing.assert_close(u.std(dims), torch.full((u.shape[1],), gain), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["bn", "bd", "wbd"])
def test_deterministic_or_pools_emit_plus_one_in_half_their_windows(kind):
    """Per channel, the OR-pool after a unit is +1 in half its windows, up to the granularity of a step function:
    the windows whose largest pre-activation ties with the one at the threshold."""
    model, x = small(kind), sparse_events()
    data_init(model, x)
    with torch.no_grad():
        for unit, h, pool in unit_inputs(model, x):
            if not isinstance(pool, torch.nn.MaxPool2d):
                continue
            window_max = F.max_pool2d(unit.preactivation(h), 2)
            rate = (window_max >= 0).float().mean(dim=(0, 2, 3))
            # the threshold lies between two window maxima: rate jumps by at most the share of tied windows
            for c in range(window_max.shape[1]):
                values = window_max[:, c].flatten()
                ties = (values.unsqueeze(0) == values.unsqueeze(1)).float().mean(1).max()
                assert abs(rate[c].item() - 0.5) <= ties.item() + 1.0 / values.numel(), (c, rate[c], ties)


@pytest.mark.parametrize("kind", ["bnsm", "gnsm", "ste"])
def test_sampling_or_pools_emit_plus_one_in_half_their_windows(kind):
    """Sampling kinds: on a fresh draw, each OR-pool's share of +1 outputs over the batch is 1/2 within four
    standard errors, counting each item as one independent draw (its windows may be correlated):
    4 sqrt(1/4 / items)."""
    n = 256
    model, x = small(kind), sparse_events(n)
    torch.manual_seed(3)
    data_init(model, x)
    pooled = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: pooled.append((o > 0).float().mean().item()))
        for m in model
        if isinstance(m, torch.nn.MaxPool2d)
    ]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    assert len(pooled) == 3
    for rate in pooled:
        assert abs(rate - 0.5) <= 4 * math.sqrt(0.25 / n), pooled
    # without the pool target the OR of units firing half the time would be +1 in about 15/16 of the windows


def test_init_rejects_bad_settings():
    with pytest.raises(ValueError, match="gain"):
        data_init(small("bnsm"), sparse_events(), gain=0.0)
    with pytest.raises(ValueError, match="pool_rate"):
        data_init(small("bnsm"), sparse_events(), pool_rate=1.0)
