"""Warm start (``pipelines.training.warmstart``, ``nsm train --init-from``): a network of one neuron kind takes the
parameters of a trained network of the same architecture with another kind.

Sources are small ``allconvnet18`` networks (2 input channels, 16 x 16, 3 classes, width 0.25) whose biases,
betas, g and batch-norm statistics are randomised, so that every conversion rule has something to convert.
The expected maps below are written from the module docstring's equations, independently of the module.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import models
import nsm
from events.datasets import GESTURE_CLASSES
from nsm.neurons import NEURON_KINDS
from pipelines import cli
from pipelines.checkpoint import save_checkpoint
from pipelines.training.warmstart import warm_start

NSM_KINDS = ("bnsm", "gnsm", "ste", "bn")
CLASSES = ["a", "b", "c"]
SMALL = dict(in_channels=2, input_size=(16, 16), num_classes=3, width=0.25)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def network(neuron: str, name: str = "allconvnet18", **sizes):
    return models.create_model(name, neuron=neuron, **{**SMALL, **sizes})


def units(model) -> list:
    return [m for m in model if hasattr(m, "weight")]


def uniform(like: torch.Tensor, low: float, high: float, generator) -> torch.Tensor:
    return torch.empty(like.shape).uniform_(low, high, generator=generator)


@torch.no_grad()
def randomised(model, seed: int = 0):
    """``model`` with random biases, betas and g (either sign) and batch-norm statistics and affine."""
    g = torch.Generator().manual_seed(seed)
    signs = lambda t: torch.where(torch.rand(t.shape, generator=g) < 0.3, -1.0, 1.0)  # noqa: E731
    for unit in units(model):
        unit.bias.copy_(uniform(unit.bias, -0.5, 0.5, g))
        if hasattr(unit, "beta"):
            unit.beta.copy_(uniform(unit.beta, 0.5, 2.0, g) * signs(unit.beta))
        if getattr(unit, "g", None) is not None:
            unit.g.copy_(uniform(unit.g, 0.5, 2.0, g) * signs(unit.g))
        if hasattr(unit, "norm"):
            n = unit.norm
            n.weight.copy_(uniform(n.weight, 0.5, 2.0, g) * signs(n.weight))
            n.bias.copy_(uniform(n.bias, -1.0, 1.0, g))
            n.running_mean.copy_(uniform(n.running_mean, -1.0, 1.0, g))
            n.running_var.copy_(uniform(n.running_var, 0.5, 2.0, g))
    return model


def source_checkpoint(tmp_path, neuron: str, seed: int = 0):
    """(a randomised ``neuron`` network, the checkpoint file holding it)."""
    model = randomised(network(neuron), seed)
    path = tmp_path / f"{neuron}.pt"
    save_checkpoint(path, model, classes=CLASSES, epoch=5)
    return model, path


def direction(w: torch.Tensor) -> torch.Tensor:
    return w / w.flatten(1).norm(dim=1).reshape((-1,) + (1,) * (w.dim() - 1))


def expected_map(unit, kind: str):
    """(w', b'): the source unit's pre-activation map (module docstring's first table)."""
    w, b = unit.weight, unit.bias
    shape = (-1,) + (1,) * (w.dim() - 1)
    norm = w.flatten(1).norm(dim=1)
    if kind in NSM_KINDS:
        return unit.beta.reshape(shape) * w / norm.reshape(shape), b / (math.sqrt(2) * unit.noise.std * norm)
    if kind == "wbd":
        return unit.g.reshape(shape) * w / norm.reshape(shape), b
    if kind == "dcnn":
        n = unit.norm
        scale = n.weight / torch.sqrt(n.running_var + n.eps)
        return scale.reshape(shape) * w, scale * (b - n.running_mean) + n.bias
    return w, b


def close(a, b) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-6)


PAIRS = [
    ("bd", "bnsm"),
    ("dcnn", "bnsm"),
    ("wbd", "gnsm"),
    ("sn", "ste"),
    ("bnsm", "bd"),
    ("gnsm", "bnsm"),
    ("bnsm", "wbd"),
    ("bd", "dcnn"),
    ("bn", "sn"),
    ("dcnn", "dcnn"),
    ("wbd", "wbd"),
]


@pytest.mark.parametrize("source_kind,target_kind", PAIRS)
def test_every_parameter_maps_by_its_rule(tmp_path, source_kind, target_kind):
    source, path = source_checkpoint(tmp_path, source_kind)
    target = randomised(network(target_kind), seed=1)  # nothing right by chance, batch norm included
    warm_start(target, path)
    for i, (s, t) in enumerate(zip(units(source), units(target))):
        where = f"unit {i} ({source_kind} -> {target_kind})"
        if source_kind in NSM_KINDS and target_kind in NSM_KINDS:  # same firing logit
            assert torch.equal(t.weight, s.weight) and torch.equal(t.beta, s.beta), where
            assert close(t.bias, s.bias * t.noise.std / s.noise.std), where
        elif source_kind == target_kind:  # copied as is
            for key, value in s.state_dict().items():
                assert torch.equal(t.state_dict()[key], value), f"{where}: {key}"
        else:
            w, b = expected_map(s, source_kind)
            assert close(direction(t.weight), direction(w)), f"{where}: weight direction"
            assert close(t.bias, b), f"{where}: bias"
            if target_kind in NSM_KINDS:
                assert close(t.beta, torch.full_like(t.beta, 1 / (math.sqrt(2) * t.noise.std))), where
                # v = beta (w/||w||).z + b/(sqrt(2) s ||w||) = (w'.z + b')/(sqrt(2) s ||w'||)
                assert close(t.weight, w), where
            if target_kind == "wbd":
                assert close(t.g, w.flatten(1).norm(dim=1)), f"{where}: g"
            if target_kind == "dcnn":
                n = t.norm
                assert torch.equal(n.running_mean, torch.zeros_like(n.running_mean)), where
                assert torch.equal(n.running_var, torch.ones_like(n.running_var)), where
                assert torch.equal(n.weight, torch.ones_like(n.weight)), where
                assert torch.equal(n.bias, torch.zeros_like(n.bias)), where
    assert torch.equal(target[-1].linear.weight, source[-1].linear.weight)
    assert torch.equal(target[-1].linear.bias, source[-1].linear.bias)


def pm1(shape, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=g).double() * 2 - 1


def deterministic(model):
    """``model`` in float64 evaluation with every stochastic unit deterministic (the caller's context)."""
    return nsm.using_mode(model.double().eval(), "deterministic")


# The mapped parameters are stored in float32, so a target pre-activation may differ from the source's by float32
# rounding of its weights: a unit within FLOAT32_MARGIN (relative to its spread) of its threshold may flip.
FLOAT32_MARGIN = 1e-5


@pytest.mark.parametrize(
    "source_kind,target_kind",
    [("bd", "bnsm"), ("wbd", "bn"), ("bnsm", "bd"), ("gnsm", "bnsm"), ("bnsm", "wbd"), ("ste", "gnsm")],
)
@torch.no_grad()
def test_binary_source_gives_the_same_states_layer_by_layer(tmp_path, source_kind, target_kind):
    """Fed the source's states, every target layer emits the source layer's states (float64 evaluation), except
    at pre-activations within float32 rounding of the threshold, which must be rare; the logits agree."""
    source, path = source_checkpoint(tmp_path, source_kind)
    target = network(target_kind)
    warm_start(target, path)
    x = pm1((4, 2, 16, 16))
    with deterministic(source), deterministic(target):
        a = x
        for i, (s, t) in enumerate(zip(source, target)):
            out_s, out_t = s(a), t(a)
            if hasattr(s, "preactivation"):
                u = s.preactivation(a)
                clear = u.abs() > FLOAT32_MARGIN * u.abs().mean()
                assert torch.equal(out_s[clear], out_t[clear]), f"layer {i} ({type(s).__name__}) states differ"
                assert (~clear).double().mean() < 1e-3, f"layer {i}: too many pre-activations at the threshold"
                assert 0 < (out_s > 0).double().mean() < 1, f"layer {i}: constant states test nothing"
            elif i < len(source) - 1:
                assert torch.equal(out_s, out_t), f"layer {i} ({type(s).__name__}) differs"
            a = out_s
        assert torch.allclose(out_s, out_t)


@pytest.mark.parametrize("source_kind,target_kind", list(itertools.product(NEURON_KINDS, NEURON_KINDS)))
@torch.no_grad()
def test_first_layer_crosses_zero_where_the_source_does(tmp_path, source_kind, target_kind):
    """For every pair of kinds the first layer's active units (state +1 or ReLU output > 0) are the source's,
    a dcnn source's with its batch norm (running statistics) included; away from the border, which real-valued
    kinds pad with 0 and binary ones with -1."""
    source, path = source_checkpoint(tmp_path, source_kind)
    target = network(target_kind)
    warm_start(target, path)
    z = pm1((4, 2, 16, 16))
    with deterministic(source), deterministic(target):
        active_source, active_target = source[1](z) > 0, target[1](z) > 0
    inner = (..., slice(1, -1), slice(1, -1))
    assert 0.05 < active_source[inner].double().mean() < 0.95
    assert torch.equal(active_source[inner], active_target[inner])


def test_report_says_what_was_mapped_folded_and_dropped(tmp_path):
    _, dcnn = source_checkpoint(tmp_path, "dcnn")
    report = str(warm_start(network("bnsm"), dcnn))
    assert f"warm start from {dcnn.resolve()} (epoch 5)" in report and "with dcnn units -> " in report
    assert "12 weight, 12 bias, 12 beta, 1 readout weight, 1 readout bias" in report
    assert "batch-norm statistics folded" in report and "(12 layers)" in report
    assert "dropped: nothing" in report
    _, sn = source_checkpoint(tmp_path, "sn")
    report = str(warm_start(network("dcnn"), sn))
    assert "sn's noise n ~ N(0, 1^2) (12 layers)" in report
    assert "dcnn's batch norm, which a sn source lacks: reset to identity" in report


def test_warm_start_leaves_the_global_rng_as_it_was(tmp_path):
    _, path = source_checkpoint(tmp_path, "bd")
    target = network("bnsm")
    before = torch.get_rng_state()
    warm_start(target, path)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize(
    "target,mismatch",
    [
        (
            dict(width=0.5),
            "first different layer: 1, conv 2->16 3x3 stride 1x1 padding 1x1 in the checkpoint, "
            "conv 2->32 3x3 stride 1x1 padding 1x1 here",
        ),
        (dict(name="allconvnet12"), "name allconvnet18 in the checkpoint, allconvnet12 here; first different layer: 1"),
        (dict(num_classes=4), "num_classes 3 in the checkpoint, 4 here; first different layer: 16, readout 64->3"),
        (dict(input_size=(32, 32)), "input_size [16, 16] in the checkpoint, [32, 32] here"),
        (dict(in_channels=6), "in_channels 2 in the checkpoint, 6 here; first different layer: 1"),
    ],
)
def test_a_different_architecture_is_refused(tmp_path, target, mismatch):
    _, path = source_checkpoint(tmp_path, "dcnn")
    model = network("bnsm", **target)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError) as err:
        warm_start(model, path)
    message = str(err.value)
    assert mismatch in message
    assert (
        "from this checkpoint's allconvnet18(in_channels=2, input_size=[16, 16], num_classes=3, width=0.25) "
        "with dcnn units" in message
    )
    assert f"cannot warm-start {model.spec['name']}(" in message and "with bnsm units" in message
    assert "only the neuron kind may differ" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "a refused warm start changed it"


def test_missing_unreadable_or_foreign_checkpoints_are_refused(tmp_path):
    model = network("bnsm")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        warm_start(model, tmp_path / "missing.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        warm_start(model, tmp_path / "garbage.pt")
    _, path = source_checkpoint(tmp_path, "bd")
    with pytest.raises(ValueError, match=r"classes \['a', 'b', 'c'\] are not this run's \['a', 'c', 'b'\]"):
        warm_start(model, path, classes=["a", "c", "b"])


@pytest.mark.parametrize("damage", ["NaN", "infinite", "flipped bit"])
def test_a_damaged_checkpoint_is_refused_before_anything_is_copied(tmp_path, damage):
    """NaN or infinite weights, or a bit that changed on disk (the checksum): refused naming the file, where a run
    started from it would have stopped on a NaN loss blamed on its learning rate."""
    model = network("bnsm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source, path = source_checkpoint(tmp_path, "bd")
    state = torch.load(path, map_location="cpu", weights_only=True)
    name = next(k for k in state["model_state"] if k.endswith("weight"))
    if damage == "flipped bit":
        state["model_state"][name].view(torch.int32).view(-1)[0] ^= 1 << 3
        torch.save(state, path)
        problem = "damaged checkpoint (its tensors do not match the tensor_sha256 checksum"
    else:
        state["model_state"][name].view(-1)[0] = float("nan") if damage == "NaN" else float("inf")
        save_checkpoint(path, source, classes=CLASSES, model_state=state["model_state"])
        problem = f"the network's {name} has 1 {damage} values"
    with pytest.raises(ValueError) as info:
        warm_start(model, path)
    assert str(info.value).startswith(f"{path}: {problem}"), str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_finite_weights_that_map_to_non_finite_ones_are_refused_and_leave_the_model_as_it_was(tmp_path):
    model = network("bnsm")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = randomised(network("dcnn"))
    with torch.no_grad():
        units(source)[1].norm.running_var[2] = -1.0  # finite, but sqrt(var + eps) of the fold is NaN
    path = tmp_path / "dcnn.pt"
    save_checkpoint(path, source, classes=CLASSES)
    with pytest.raises(ValueError) as info:
        warm_start(model, path)
    message = str(info.value)
    assert message.startswith(f"{path.resolve()}: warm-starting allconvnet18(")
    assert "gives non-finite parameters (" in message and "NaN values" in message
    assert message.endswith("the checkpoint is damaged or unfit for a warm start")
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_init_from_with_resume_is_refused(tmp_path, capsys):
    args = [
        "train",
        "--resume",
        "--init-from",
        str(tmp_path / "other" / "best.pt"),
        "--data",
        str(tmp_path),
        "--out",
        str(tmp_path / "run"),
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "--init-from starts a fresh run" in err and "--resume" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_nsm_train_init_from_starts_from_the_checkpoint(gestures, tmp_path, capsys):
    """``nsm train --init-from`` on the tiny preset: a dcnn source, a bnsm run of one epoch at a learning rate
    too small to move anything, so the trained directions are still the source's folded ones. Without batch-
    normalized logits: their running moments move in the epoch (and with them the folded biases) even when the
    parameters do not."""
    data, cache = gestures
    source = randomised(
        models.create_model(
            "nmnist_cnn",
            in_channels=6,
            input_size=(32, 32),
            num_classes=11,
            neuron="dcnn",
            channels=[16, 32],
            hidden=256,
        )
    )
    ck = tmp_path / "dcnn.pt"
    save_checkpoint(ck, source, classes=GESTURE_CLASSES, epoch=3)
    out = tmp_path / "run"
    sets = [
        "train.epochs=1",
        "train.workers=0",
        "train.device=cpu",
        "train.lr=1e-12",
        "model.neuron=bnsm",
        "train.logit_norm=none",
    ]
    assert (
        cli.main(
            [
                "train",
                "--config",
                "tiny",
                "--data",
                str(data),
                "--out",
                str(out),
                "--cache",
                str(cache),
                "--quiet",
                *[a for s in sets for a in ("--set", s)],
                "--init-from",
                str(ck),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"warm start from {ck.resolve()} (epoch 3)" in printed and "batch-norm statistics folded" in printed
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["init_from"] == str(ck.resolve())
    trained = models.create_model(**state["model_spec"])
    trained.load_state_dict(state["model_state"])
    for s, t in zip(units(source), units(trained)):
        w, b = expected_map(s, "dcnn")
        assert torch.allclose(direction(t.weight), direction(w), atol=1e-5)
        assert torch.allclose(t.bias, b, atol=1e-5)
