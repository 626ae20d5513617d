"""Benchmarks of the network's arithmetic: Monte Carlo inference and training steps of allconvnet18 against
plain convolutions, and event binning against tonic."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch

import events
import models
import nsm

from ..runs import cpu_has_native_bf16, flushing_denormals
from .common import Row, interleaved


def _autocast(bf16: bool):
    """bfloat16 autocast on the CPU (``bf16``) or nothing."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


def _precisions() -> list[bool]:
    """float32, and bfloat16 where the CPU multiplies it natively (``cpu_has_native_bf16``)."""
    return [False, True] if cpu_has_native_bf16() else [False]


def mc_precisions() -> list[str]:
    """The Monte Carlo precisions (``MCSettings.precision``) worth timing on this CPU: float32; bfloat16 where it
    multiplies bfloat16 natively (``cpu_has_native_bf16``); int8 where oneDNN's int8 kernels run
    (``nsm.spikes.unavailable``)."""
    return (
        ["float32"]
        + (["bfloat16"] if cpu_has_native_bf16() else [])
        + (["int8"] if nsm.spikes.unavailable(torch.device("cpu")) is None else [])
    )


def mc_inference(quick: bool) -> list[Row]:
    """MC samples per second of allconvnet18 (bnsm) vs the same layout of conv + hardtanh in float32, 64x64,
    batch 16, in each of ``mc_precisions``."""
    batch, k = 16, 4
    torch.manual_seed(0)
    x = torch.randint(0, 2, (batch, 6, 64, 64)).float()
    net = models.create_model("allconvnet18", neuron="bnsm")
    plain = models.create_model("allconvnet18", neuron=nsm.neurons.BENCH_REFERENCE)
    rows = []
    for precision in mc_precisions():
        settings = nsm.MCSettings(samples=k, precision=precision)
        t_nsm, t_plain, ratio = interleaved(
            partial(settings.predict, net, x), lambda: nsm.mc_predict(plain, x, samples=k), 3 if quick else 10
        )
        n = batch * k
        rows.append(
            Row(
                f"allconvnet18 MC inference{'' if precision == 'float32' else ', ' + precision}, 64x64, batch 16",
                "samples/s",
                n / t_nsm,
                "plain conv + hardtanh, float32",
                n / t_plain,
                ratio,
                ">= 0.8x (NSM costs at most 1.25x plain)" if precision == "float32" else ">= 2x (issue 28)",
            )
        )
    return rows


def _stepper(net, x: torch.Tensor, y: torch.Tensor, *, bf16: bool = False, compiled: bool = False, lr: float = 3e-4):
    """One training step of ``net`` on (x, y) as ``nsm train`` takes it: forward (under bfloat16 autocast with
    ``bf16``, through ``torch.compile`` with ``compiled``), cross-entropy, backward, an Adam update."""
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    forward = torch.compile(net) if compiled else net

    def step():
        with _autocast(bf16):
            logits = forward(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def training(quick: bool) -> list[Row]:
    """Training samples per second of allconvnet18 (bnsm) vs the plain conv + hardtanh layout in float32, 64x64,
    batch 16 (``fullwidth_steps``): in the ``expected`` mode (``train.forward = "expected"``, the default: a mean and a
    variance convolution per layer), the same with the ``window-mean`` variance (``train.variance``: an average pool
    instead of the variance convolution) and sampling its states (``train.forward = "sampled"``), each in float32
    and, where the CPU has native bf16, under bfloat16 autocast (``train.cpu_bf16``), and (not with ``quick``:
    compiling takes minutes) the expected pass compiled too (``train.compile``), with each variance rule; subnormal
    numbers flushed to zero, as ``nsm train`` does. The reference is always float32 and eager."""
    batch = FULLWIDTH_BATCH
    variants = [(forward, mode, rule, bf16, False) for bf16 in _precisions() for forward, mode, rule in FORWARDS]
    if not quick and cpu_has_native_bf16():
        variants += [("expected", "expected", rule, True, True) for rule in nsm.moments.VARIANCE_RULES]
    rows = []
    goals = {"expected": ">= 0.6x (issue 28)", "sampled": ">= 1.0x (issue 28)"}
    for forward, mode, rule, bf16, compiled in variants:
        ours, plain = fullwidth_steps(mode, rule, bf16=bf16, compiled=compiled)
        with flushing_denormals():  # as nsm train runs
            t_nsm, t_plain, ratio = interleaved(ours, plain, 2 if quick else 6)
        how = "".join(
            (
                f", {rule} variance" if rule != "exact" else "",
                ", bfloat16" if bf16 else "",
                ", compiled" if compiled else "",
            )
        )
        rows.append(
            Row(
                f"allconvnet18 training step ({forward}{how}), 64x64, batch {batch}",
                "samples/s",
                batch / t_nsm,
                "plain conv + hardtanh, float32",
                batch / t_plain,
                ratio,
                goals[forward],
            )
        )
    return rows


FULLWIDTH_BATCH = 16


def fullwidth_steps(mode: str | None, rule: str, *, bf16: bool = False, compiled: bool = False):
    """(bNSM step, plain step): one training step (``_stepper``) each of allconvnet18 at full width on the same
    random binary 6x64x64 input, batch ``FULLWIDTH_BATCH``. The bnsm network trains as ``nsm train`` trains it after
    its warm-up epochs, on batch-normalized firing logits (``nsm.normalization``), its units in ``mode`` (None:
    their own) with the variance rule ``rule``, under bfloat16 autocast with ``bf16``, compiled with ``compiled``;
    the plain conv + hardtanh layout always in float32, eager."""
    torch.manual_seed(0)
    x = torch.randint(0, 2, (FULLWIDTH_BATCH, 6, 64, 64)).float()
    y = torch.randint(0, 11, (FULLWIDTH_BATCH,))
    net = models.create_model("allconvnet18", neuron="bnsm")
    nsm.LogitNormalization.attach(net, x)
    if mode is not None:
        nsm.set_mode(net, mode)
    step = _stepper(net, x, y, bf16=bf16, compiled=compiled)

    def by_rule():
        with nsm.using_variance_rule(net, rule):
            step()

    return by_rule, _stepper(models.create_model("allconvnet18", neuron=nsm.neurons.BENCH_REFERENCE), x, y)


FORWARDS = (("expected", "expected", "exact"), ("expected", "expected", "window-mean"), ("sampled", None, "exact"))
"""The training passes the training rows time: (``train.forward``, the units' mode (None: their own),
``train.variance``)."""


def preset_training(quick: bool) -> list[Row]:
    """Training samples per second of the ``gestures-allconv18`` preset's network (bnsm) trained as its recipe says
    against its dcnn twin trained by the same recipe (``--set model.neuron=dcnn``): the preset's model options,
    batch and 32x32 input, each kind in the mode its epochs after the warm-up train in, bfloat16 autocast and
    compiled steps where the preset turns them on (``train.cpu_bf16`` on a CPU with native bf16,
    ``train.compile``). One row for the preset's ``train.variance``, one for each other rule (``--set
    train.variance=...``). The ratio is an epoch's (data loading, the same for both, aside)."""
    from ..config import load_config

    preset = load_config("gestures-allconv18").train.variance
    rules = [preset] + [rule for rule in nsm.moments.VARIANCE_RULES if rule != preset]
    return [_preset_row(rule, rule == preset, quick) for rule in rules]


def _preset_row(rule: str, as_preset: bool, quick: bool) -> Row:
    """``preset_training``'s row for the preset with ``train.variance = rule``."""
    ours, twin, how = preset_steps(rule)
    with flushing_denormals():
        t_nsm, t_twin, ratio = interleaved(ours, twin, 3 if quick else 8)
    batch = how["batch"]
    return Row(
        f"gestures-allconv18 training step {'as the preset trains' if as_preset else f'with train.variance = {rule}'}"
        f" ({how['precision']}), batch {batch}",
        "samples/s",
        batch / t_nsm,
        "its dcnn twin, same recipe",
        batch / t_twin,
        ratio,
        ">= 0.83x (an epoch <= 1.2x the twin's, issue 28)",
    )


def preset_steps(rule: str | None = None):
    """(bNSM step, dcnn twin step, how): one training step each of the ``gestures-allconv18`` preset's network
    (``train.variance = rule``; None: the preset's) and its twin (``--set model.neuron=dcnn``) as the recipe trains
    them: the preset's model options, batch and a random 6x32x32 input of counts, each kind in the mode its epochs
    after the warm-up train in, bfloat16 autocast and compiled steps where the preset turns them on. ``how``: the
    batch and a description of the precision."""
    from ..config import load_config
    from ..training.modes import training_mode
    from ..training.steps import autocast_for

    cfg = load_config("gestures-allconv18", [f"train.variance={rule}"] if rule is not None else [])
    tc, m = cfg.train, cfg.model
    torch.manual_seed(0)
    x = torch.randint(0, 4, (tc.batch_size, 6, 32, 32)).float()
    y = torch.randint(0, 11, (tc.batch_size,))
    bf16 = isinstance(autocast_for(torch.device("cpu"), tc)[0], torch.autocast)  # as nsm train decides it

    def stepper(neuron):
        net = models.create_model(
            m.name, in_channels=6, input_size=(32, 32), num_classes=11, neuron=neuron, **m.options
        )
        step = _stepper(net, x, y, bf16=bf16, compiled=tc.compile, lr=tc.lr)

        def in_mode():
            with training_mode(net, tc.warmup_epochs, tc):  # the mode of the epochs after the warm-up
                step()

        return in_mode

    precision = ", ".join(["bfloat16" if bf16 else "float32"] + (["compiled"] if tc.compile else []))
    return stepper("bnsm"), stepper("dcnn"), {"batch": tc.batch_size, "precision": precision}


def binning(quick: bool) -> Row:
    """Events per second binned into frames: events.to_frames vs tonic.transforms.ToFrame on 2 M events, 128x128."""
    import tonic.transforms

    n = 2_000_000
    rng = np.random.default_rng(0)
    ev = events.make_events(
        rng.integers(0, 128, n), rng.integers(0, 128, n), np.sort(rng.integers(0, 6_000_000, n)), rng.integers(0, 2, n)
    )
    sensor = events.SensorSize(128, 128, 2)
    tonic_frames = tonic.transforms.ToFrame(sensor_size=tuple(sensor), time_window=16_000)
    t_ours, t_ref, ratio = interleaved(
        lambda: events.to_frames(ev, sensor, time_window_us=16_000), lambda: tonic_frames(ev), 3 if quick else 5
    )
    return Row(
        "event binning, 2 M events, 128x128, 16 ms frames",
        "M events/s",
        n / t_ours / 1e6,
        "tonic ToFrame",
        n / t_ref / 1e6,
        ratio,
        ">= 40x tonic (issue 28)",
    )


def tiny_model():
    """The ``tiny`` preset's network (``pipelines/presets/tiny.toml``) on six 32x32 frames, 11 classes."""
    from ..config import load_config

    m = load_config("tiny").model
    return models.create_model(
        m.name, in_channels=6, input_size=(32, 32), num_classes=11, neuron=m.neuron, noise_p=m.noise_p, **m.options
    )
