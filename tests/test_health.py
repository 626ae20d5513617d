"""Training health (``pipelines.training.health``): the ``health`` records of ``nsm train``, health.png and
the warnings.

The monitor is tested on small networks of every registered model and neuron kind, one training step at a
time, and once through a one-epoch ``nsm train`` run of the ``tiny`` preset on the session's simulated
gestures (``conftest.simulated_gestures``), on the CPU with one torch thread; with the activity recorder, on
weights that are not finite and through a run that diverges.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import models
import nsm
from nsm.neurons import NEURON_KINDS
from pipelines import cli
from pipelines import config as configs
from pipelines.data import load_data
from pipelines.training import health
from pipelines.training.activity import ActivityRecorder, weight_units
from pipelines.training.figures import plot_health
from pipelines.training.setup import build_model

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PRIOR = np.array([0.6, 0.3, 0.1])  # unbalanced, so that uniform logits are not the prior

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(name: str = "nmnist_cnn", neuron: str = "bnsm"):
    """``name`` with few channels, for 2-channel 16 x 16 (allconvnet, specknet) or 20 x 20 (nmnist_cnn) input, 3
    classes."""
    torch.manual_seed(0)
    if name.startswith("allconvnet") or name == "specknet":
        return models.create_model(
            name, in_channels=2, input_size=(16, 16), num_classes=3, neuron=neuron, width=0.125
        ), (16, 16)
    return models.create_model(
        name, in_channels=2, input_size=(20, 20), num_classes=3, neuron=neuron, channels=[4, 8], hidden=16
    ), (20, 20)


def prior_labels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).choice(len(PRIOR), size=n, p=PRIOR))


PRIOR_LABELS = prior_labels(1000).numpy()  # the training labels the monitors' prior comes from


def training_steps(model, size, monitor, steps: int = 1, batch: int = 8) -> health.EpochHealth:
    """``steps`` recorded training steps (forward, backward, no optimizer step) on random events; the epoch's health."""
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        x = (torch.rand(batch, 2, *size, generator=gen) < 0.5).float()
        y = prior_labels(batch, seed=step)
        monitor.arm()
        loss = F.cross_entropy(model(x), y)
        model.zero_grad(set_to_none=True)
        loss.backward()
        monitor.record_gradients()
        monitor.observe_loss(loss, y)
    return monitor.end_epoch()


def expected_layers(model) -> tuple[list[str], list[str]]:
    """(hidden unit layer names, max-pool layer names) of ``model``."""
    units = [name for name, _ in weight_units(model)]
    pools = [name for name, m in model.named_modules() if isinstance(m, torch.nn.MaxPool2d)]
    return units, pools


def assert_valid_summary(summary: dict, model, neuron: str) -> None:
    units, pools = expected_layers(model)
    assert list(summary) == [n for n, _ in model.named_modules() if n in units or n in pools]  # forward order
    modules = dict(model.named_modules())
    for name in units:
        entry = summary[name]
        assert set(entry) == {"module", *health.UNIT_FIELDS}
        assert entry["module"] == type(modules[name]).__name__
        assert 0 <= entry["firing_rate"] <= 1
        assert math.isfinite(entry["grad_norm"]) and entry["grad_norm"] > 0
        if neuron in ("bnsm", "gnsm", "ste", "bn"):  # NSM units: a firing probability
            assert 0 <= entry["saturated"] <= 1
        else:
            assert entry["saturated"] is None
    for name in pools:
        assert set(summary[name]) == {"module", "pool_rate"}
        assert 0 <= summary[name]["pool_rate"] <= 1


# ----------------------------------------------------------------------------------------------
# the monitor on every model and neuron kind
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", models.list_models())
@pytest.mark.parametrize("neuron", NEURON_KINDS)
def test_every_model_and_kind_gets_a_record_per_hidden_layer_and_pool(name, neuron):
    model, size = small_model(name, neuron)
    monitor = health.HealthMonitor(model, PRIOR_LABELS, len(PRIOR))
    epoch = training_steps(model, size, monitor, steps=2)
    assert_valid_summary(epoch.summary, model, neuron)
    monitor.close()
    assert not any(m._forward_hooks for m in model.modules())


def test_summary_is_the_mean_over_the_epochs_recorded_steps_only():
    """bn units are deterministic, so each batch's measurements repeat: an epoch recording batches a and b, with
    an all-events batch trained on in between unrecorded, averages what epochs recording a alone and b alone give."""
    model, size = small_model(neuron="bn")
    monitor = health.HealthMonitor(model, PRIOR_LABELS, len(PRIOR))
    gen = torch.Generator().manual_seed(1)
    a, b = ((torch.rand(8, 2, *size, generator=gen) < p).float() for p in (0.3, 0.6))

    def step(x, armed):
        if armed:
            monitor.arm()
        model.zero_grad(set_to_none=True)
        model(x).square().sum().backward()
        monitor.record_gradients()

    for x, armed in ((a, True), (torch.ones_like(a), False), (b, True)):
        step(x, armed)
    both = monitor.end_epoch().summary
    step(a, True)
    only_a = monitor.end_epoch().summary
    step(b, True)
    only_b = monitor.end_epoch().summary
    assert list(both) == list(only_a) == list(only_b)
    assert only_a != only_b
    for name, entry in both.items():
        for key, value in entry.items():
            if key != "module":
                assert value == pytest.approx((only_a[name][key] + only_b[name][key]) / 2, rel=1e-6), (name, key)
    assert monitor.end_epoch().summary == {}  # an epoch without recorded steps


def test_a_disabled_monitor_installs_no_hooks_and_records_nothing():
    """Ranks > 0 under DistributedDataParallel."""
    model, size = small_model()
    monitor = health.HealthMonitor(model, PRIOR_LABELS, len(PRIOR), enabled=False)
    assert not any(m._forward_hooks for m in model.modules())
    epoch = training_steps(model, size, monitor)
    assert epoch.summary == {} and epoch.warnings == []


def test_expected_mode_records_the_expected_rates_and_saturation():
    """In ``expected`` mode the outputs are means m: a layer's firing rate is mean((1 + m) / 2), its saturated share
    that of P = (1 + m) / 2 outside [0.02, 0.98], and a pool's rate its mean on-probability (computed here from the
    outputs the layers emit)."""
    model, size = small_model("allconvnet18", "bnsm")
    nsm.set_mode(model, "expected")
    outputs = {}
    hooks = [
        m.register_forward_hook(lambda mod, i, o, name=name: outputs.__setitem__(name, o.detach()))
        for name, m in model.named_modules()
        if name in ("1", "4")
    ]
    monitor = health.HealthMonitor(model, PRIOR_LABELS, len(PRIOR))
    epoch = training_steps(model, size, monitor)
    for h in hooks:
        h.remove()
    p = (1 + outputs["1"]) / 2
    assert epoch.summary["1"]["firing_rate"] == pytest.approx(float(p.mean()), rel=1e-5)
    assert epoch.summary["1"]["saturated"] == pytest.approx(float(((p < 0.02) | (p > 0.98)).float().mean()), abs=1e-6)
    assert isinstance(model[4], nsm.BinaryMaxPool2d)
    assert epoch.summary["4"]["pool_rate"] == pytest.approx(float(((1 + outputs["4"]) / 2).mean()), rel=1e-5)
    assert 0.02 < epoch.summary["1"]["firing_rate"] < 0.98 and bool(((outputs["1"] > -1) & (outputs["1"] < 1)).all())


# ----------------------------------------------------------------------------------------------
# warnings
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "neuron, bias, rate", [("bnsm", -1e4, 0.0), ("bnsm", 1e4, 1.0), ("bn", -1e4, 0.0), ("sn", -1e3, 0.0)]
)
def test_dead_layer_warning_names_the_dead_layer(neuron, bias, rate):
    """The first hidden layer's bias set far beyond its inputs' reach: it never fires (or always does)."""
    model, size = small_model(neuron=neuron)
    with torch.no_grad():
        model[1].bias.fill_(bias)
    monitor = health.HealthMonitor(model, PRIOR_LABELS, len(PRIOR))
    epoch = training_steps(model, size, monitor)
    assert epoch.summary["1"]["firing_rate"] == rate
    dead = [w for w in epoch.warnings if "is dead" in w]
    assert dead and dead[0].startswith(f"warning: layer 1 ({type(model[1]).__name__}) is dead: it fired")
    assert f"{100 * rate:.1f} %" in dead[0]
    saturated = [w for w in epoch.warnings if "layer 1 " in w and "is saturated" in w]
    if neuron == "sn":  # no firing probability, so never saturated
        assert epoch.summary["1"]["saturated"] is None and not saturated
    else:
        assert epoch.summary["1"]["saturated"] == 1.0 and saturated


@pytest.mark.parametrize("neuron", NEURON_KINDS)
def test_no_layer_warning_for_a_healthy_network(neuron):
    model, size = small_model(neuron=neuron)
    monitor = health.HealthMonitor(model, PRIOR_LABELS, len(PRIOR))
    epoch = training_steps(model, size, monitor, steps=2)
    assert all(
        health.DEAD_RATE < e["firing_rate"] < 1 - health.DEAD_RATE for e in epoch.summary.values() if "firing_rate" in e
    )
    assert not [w for w in epoch.warnings if "is dead" in w or "is saturated" in w], epoch.warnings


def test_layer_warnings_at_the_thresholds():
    def entry(rate, saturated):
        return {"module": "NSMConv2d", "firing_rate": rate, "saturated": saturated, "grad_norm": 1.0}

    d, s = health.DEAD_RATE, health.SATURATED_SHARE
    summary = {
        "a": entry(d, s),
        "b": entry(1 - d, None),
        "c": entry(d / 2, s + 0.01),
        "d": entry(1 - d / 2, 0.0),
        "p": {"module": "BinaryMaxPool2d", "pool_rate": 0.0},
    }
    lines = health.layer_warnings(summary)
    assert [line.split(" is ")[0] for line in lines] == ["warning: layer c (NSMConv2d)"] * 2 + [
        "warning: layer d (NSMConv2d)"
    ]
    assert "is dead" in lines[0] and "is saturated" in lines[1] and "is dead" in lines[2]


def constant_logit_model(logits: np.ndarray):
    """``small_model`` whose readout ignores its input: weight 0, bias ``logits``."""
    model, size = small_model()
    with torch.no_grad():
        model[-1].linear.weight.zero_()
        model[-1].linear.bias.copy_(torch.as_tensor(logits, dtype=torch.float32))
    return model, size


def prior_warnings(epoch: health.EpochHealth) -> list[str]:
    return [w for w in epoch.warnings if "class prior" in w]


def test_loss_at_prior_warning_fires_for_a_model_that_predicts_the_label_frequencies():
    freq = np.bincount(PRIOR_LABELS, minlength=3) / len(PRIOR_LABELS)
    model, size = constant_logit_model(np.log(freq))
    monitor = health.HealthMonitor(model, PRIOR_LABELS, len(PRIOR))
    assert monitor.entropy == pytest.approx(-(freq * np.log(freq)).sum())
    epoch = training_steps(model, size, monitor, steps=4)
    assert len(prior_warnings(epoch)) == 1
    assert "on every step (4)" in prior_warnings(epoch)[0]


@pytest.mark.parametrize("logits", [np.zeros(3), np.log(PRIOR[::-1])], ids=["uniform", "reversed-prior"])
def test_no_loss_at_prior_warning_for_constant_logits_away_from_the_prior(logits):
    model, size = constant_logit_model(logits)
    monitor = health.HealthMonitor(model, PRIOR_LABELS, len(PRIOR))
    assert prior_warnings(training_steps(model, size, monitor, steps=4)) == []


def test_no_loss_at_prior_warning_for_a_model_that_learned_something():
    model, size = small_model()
    monitor = health.HealthMonitor(model, PRIOR_LABELS, len(PRIOR))
    for step in range(3):
        y = prior_labels(8, seed=step)
        informed = torch.log(torch.from_numpy(PRIOR).float()) + 3.0 * F.one_hot(y, 3)  # leans to the right class
        monitor.observe_loss(F.cross_entropy(informed, y), y)
    assert prior_warnings(monitor.end_epoch()) == []


def test_loss_at_prior_uses_every_step_not_the_mean():
    h = 1.0
    prior_losses = np.full(10, h)
    tolerance = health.PRIOR_LOSS_TOLERANCE * h
    assert health.loss_sat_at_prior(prior_losses + 0.9 * tolerance, prior_losses, h)
    assert health.loss_sat_at_prior(prior_losses - 0.9 * tolerance, prior_losses, h)
    swinging = prior_losses + np.where(np.arange(10) % 2, 5, -5) * tolerance  # mean exactly at the prior
    assert not health.loss_sat_at_prior(swinging, prior_losses, h)
    one_off = prior_losses.copy()
    one_off[7] += 2 * tolerance
    assert not health.loss_sat_at_prior(one_off, prior_losses, h)
    assert not health.loss_sat_at_prior([], [], h)


# ----------------------------------------------------------------------------------------------
# health.png
# ----------------------------------------------------------------------------------------------


def test_plot_health_draws_many_layers_and_skips_records_without_health(tmp_path):
    layers = {
        str(k): {
            "module": "NSMConv2d",
            "firing_rate": 0.5,
            "saturated": None if k % 2 else 0.1,
            "grad_norm": 0.0 if k == 3 else 10.0**-k,
        }
        for k in range(14)
    }
    layers["pool"] = {"module": "BinaryMaxPool2d", "pool_rate": 0.9}
    records = [
        {"epoch": 1, "train_loss": 1.0},
        {"epoch": 2, "health": layers},
        {"epoch": 3, "health": None},
        {"epoch": 4, "health": layers},
    ]
    path = plot_health(records, tmp_path / "sub" / "health.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="'health' must map layer names to dicts"):
        plot_health([{"epoch": 1, "health": {"1": 0.5}}], tmp_path / "bad.png")


# ----------------------------------------------------------------------------------------------
# nsm train
# ----------------------------------------------------------------------------------------------


def test_train_writes_health_records_and_figure(gestures, tmp_path, capsys):
    data, cache = gestures
    out = tmp_path / "run"
    sets = ["train.epochs=1", "train.workers=0", "train.device=cpu", "train.record_every=1"]
    args = ["train", "--config", "tiny", "--data", str(data), "--out", str(out), "--cache", str(cache), "--quiet"]
    assert cli.main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1
    cfg = configs.load_config("tiny", sets)
    model = build_model(cfg, load_data(cfg.data, data, cache, with_test=False, progress=False))
    units, pools = expected_layers(model)
    assert units and pools
    for line in lines:
        assert_valid_summary(line["health"], model, cfg.model.neuron)
    assert (out / "health.png").read_bytes()[:8] == PNG_MAGIC
    printed = capsys.readouterr().out.splitlines()
    warnings = [line for line in printed if line.startswith("warning:")]
    assert warnings == health.layer_warnings(lines[-1]["health"]) + [w for w in warnings if "class prior" in w]


# ----------------------------------------------------------------------------------------------
# a diverging step: no crash, nothing non-finite recorded, the trainer's loss check stops the run
# ----------------------------------------------------------------------------------------------


def strict_json(text: str):
    """``json.loads`` that refuses NaN and infinities (which are not JSON)."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("neuron", ["bnsm", "gnsm", "bd", "dcnn", "sn"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights_record_nothing_non_finite_and_raise_nothing(neuron, bad, tmp_path):
    """Weights made NaN or infinite (as an optimizer step at a huge rate leaves them): the activity recorder writes
    no record, the health monitor records None for what it cannot measure, and neither raises."""
    model, size = small_model(neuron=neuron)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(bad)
    recorder = ActivityRecorder(model, neuron, tmp_path / "activity.jsonl")
    monitor = health.HealthMonitor(model, PRIOR_LABELS, len(PRIOR))
    recorder.arm()
    summary = training_steps(model, size, monitor).summary
    recorder.record(0.0, 0)
    assert not (tmp_path / "activity.jsonl").exists()
    units, _ = expected_layers(model)
    assert all(summary[name]["grad_norm"] is None for name in units)
    for entry in summary.values():
        for key, value in entry.items():
            assert key == "module" or value is None or 0 <= value <= 1, (key, value)
    assert strict_json(json.dumps(summary)) == summary
    recorder.close()
    monitor.close()


def test_a_diverging_run_ends_with_the_trainers_message(gestures, tmp_path, capsys):
    """At 3e37 without the warm-up ramp, Adam's first step (10 x the rate) takes the weights to about 3e38, and the
    activity records of that step and the next find them, or what they compute, not finite; the run must end with
    the trainer's message about the loss (exit status 2, no traceback) and leave no NaN in activity.jsonl."""
    data, cache = gestures
    out = tmp_path / "run"
    sets = ["train.lr=3e37", "train.lr_ramp=none", "train.record_every=1", "train.epochs=1", "train.device=cpu"]
    args = ["train", "--config", "tiny", "--data", str(data), "--out", str(out), "--cache", str(cache), "--quiet"]
    assert cli.main([*args, *[a for s in sets for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nsm train: error: the loss became nan at epoch 1") and "Try a lower train.lr" in err
    assert "Traceback" not in err and not (out / "checkpoint.pt").exists()
    activity = out / "activity.jsonl"
    for line in activity.read_text().splitlines() if activity.exists() else []:
        strict_json(line)
