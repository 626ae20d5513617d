"""The n-bit weight grid (``nsm.grid``, model option ``weight_bits``): the units and the readout compute with
integer weights on power-of-two scales, gradients pass straight through, and the deterministic network in float32
is its 8-bit export exactly (the property the Speck preset trains for: what runs on the chip is what was
evaluated)."""

from __future__ import annotations

import pytest
import torch

import models
from nsm import using_mode
from nsm.grid import WeightGrid, readout_on_grid, unit_on_grid, without_grid
from pipelines.export import NIRRuntime, check_inputs, quantization_report, quantize, spike_input, to_nir
from pipelines.export.targets import SPECK_BIAS_LIMIT, SPECK_BITS


def is_integer(t: torch.Tensor) -> bool:
    return bool(torch.equal(t, torch.round(t)))


@pytest.mark.parametrize("bias_limit", [None, 5])
def test_unit_weights_and_biases_are_n_bit_integers_on_power_of_two_scales(bias_limit):
    g = torch.Generator().manual_seed(0)
    w_eff, b_eff = torch.randn(16, 8, 3, 3, generator=g), 3 * torch.randn(16, generator=g)
    grid = WeightGrid(8, bias_limit)
    w, b = unit_on_grid(grid, w_eff, b_eff)
    w64, b64 = w.double(), b.double()
    c = b64 - w64.reshape(16, -1).sum(dim=1)  # the spike-domain bias
    for i in range(16):
        # the smallest power of two k that makes unit i's spike-domain weights 2W and bias c integers
        k = next(2.0**e for e in range(-10, 40) if is_integer(2 * w64[i] * 2.0**e) and is_integer(c[i] * 2.0**e))
        assert (2 * w64[i] * k).abs().max() <= grid.q and abs(float(c[i] * k)) <= grid.b
        # rounding moved each weight by at most half a step 1 / (2 k) of the unit's grid (in float32)
        assert float((w[i] - w_eff[i]).abs().max()) <= 1.0 / (4.0 * k) + 1e-6


def test_the_grid_passes_gradients_straight_through():
    w_eff = torch.randn(4, 3, requires_grad=True)
    b_eff = torch.randn(4, requires_grad=True)
    w, b = unit_on_grid(WeightGrid(4), w_eff, b_eff)
    (w * torch.arange(12.0).reshape(4, 3)).sum().backward(retain_graph=True)
    assert torch.equal(w_eff.grad, torch.arange(12.0).reshape(4, 3))
    b.sum().backward()
    assert torch.equal(b_eff.grad, torch.ones(4))
    a = torch.randn(5, 7, requires_grad=True)
    ga, _ = readout_on_grid(WeightGrid(8), a, None, 16)
    ga.sum().backward()
    assert torch.equal(a.grad, torch.ones(5, 7))


@pytest.mark.parametrize("bits, bias_limit", [(1, None), (17, None), (8, 0), (8, 128), (True, None), (8, 2.5)])
def test_grid_options_out_of_range_are_refused(bits, bias_limit):
    with pytest.raises(ValueError, match="weight_bits|bias_limit"):
        WeightGrid(bits, bias_limit)


def test_weight_bits_needs_nsm_units_and_bias_limit_needs_weight_bits():
    with pytest.raises(ValueError, match="needs NSM units"):
        models.create_model("specknet", neuron="dcnn", weight_bits=8)
    with pytest.raises(ValueError, match="bias_limit needs weight_bits"):
        models.create_model("specknet", bias_limit=100)
    net = models.create_model("specknet", weight_bits=8, bias_limit=100)
    assert net.spec["weight_bits"] == 8 and models.create_model(**net.spec).spec == net.spec


def specknet_with_varied_units(grid: bool, seed=0):
    """specknet as the Speck preset builds it, with random gains and biases (an untrained network's are 1 and 0)
    so that units' pre-activations spread around their thresholds as a trained network's do."""
    torch.manual_seed(seed)
    options = {"weight_bits": SPECK_BITS, "bias_limit": SPECK_BIAS_LIMIT} if grid else {}
    model = models.create_model("specknet", input_levels=[1, 2, 4, 8], **options).eval()
    with torch.no_grad():
        for unit in model.modules():
            if hasattr(unit, "beta"):
                unit.beta.uniform_(0.5, 2.0)
                unit.bias.normal_(0.0, 0.5)
        model[-1].linear.bias.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("grid", [True, False])
def test_the_float32_deterministic_network_on_a_grid_is_its_8_bit_export_exactly(grid):
    """On the grid: the library's float32 deterministic logits times the readout's scale are the integer logits of
    the 8-bit export with the chip's bias bound (``quantize`` keeps the grid), on every input, so the top class
    agrees everywhere. The control (the same network off the grid) is quantized after training as any export is:
    its logits are not the export's."""
    model = specknet_with_varied_units(grid)
    x = check_inputs((6, 32, 32), 64, seed=2)
    with torch.inference_mode(), using_mode(model, "deterministic"):
        library = model(x)  # float32, as nsm evaluate computes it
    float_graph = to_nir(model, (24, 32, 32))
    graph = quantize(float_graph, SPECK_BITS, bias_limit=SPECK_BIAS_LIMIT)
    exported = NIRRuntime(graph).forward(spike_input(model, x))
    readout = next(n for n in graph.nodes.values() if (n.metadata or {}).get("role") == "readout")
    scale = float(readout.metadata["output_scale"])
    if grid:
        assert torch.equal(library.double() * scale, exported)
        assert torch.equal(library.argmax(1), exported.argmax(1))
        report = quantization_report(float_graph, graph, spike_input(model, x), library.argmax(1))
        assert report.agreement == 1.0 and report.bias_bits <= SPECK_BITS  # the units' biases: the chip's 8 bits
    else:
        assert not torch.equal(library.double() * scale, exported)


def test_without_grid_computes_with_the_float_weights_and_restores_the_grid():
    model = specknet_with_varied_units(grid=True)
    units = [m for m in model.modules() if hasattr(m, "beta")]
    on_grid = units[0].effective_weight()[0].detach()
    with without_grid(model):
        assert all(m.grid is None for m in units) and model[-1].grid is None
        free = units[0].effective_weight()[0].detach()
    assert not torch.equal(free, on_grid) and units[0].grid == WeightGrid(SPECK_BITS, SPECK_BIAS_LIMIT)
    assert torch.equal(units[0].effective_weight()[0].detach(), on_grid) and model[-1].grid is not None


def test_training_keeps_the_warmup_epochs_off_the_grid():
    from pipelines import config as configs
    from pipelines.training.modes import training_mode

    tc = configs.load_config("gestures-speck").train
    model = specknet_with_varied_units(grid=True)
    with training_mode(model, 0, tc):
        assert model[-1].grid is None and model[1].mode == tc.warmup_forward
    with training_mode(model, tc.warmup_epochs, tc):
        assert model[-1].grid == WeightGrid(SPECK_BITS, SPECK_BIAS_LIMIT) and model[1].mode == tc.forward


def test_the_weight_grid_needs_unnormalized_logits_in_training():
    from pipelines import config as configs

    with pytest.raises(ValueError, match='weight_bits needs train.logit_norm = "none"'):
        configs.load_config("gestures-speck", ["train.logit_norm=batch"])
