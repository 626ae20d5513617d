"""Benchmarks of the network's arithmetic: Monte Carlo inference and training steps of allconvnet18 against
plain convolutions, and event binning against tonic."""

from __future__ import annotations

import numpy as np
import torch

import events
import models
import nsm

from ..runs import flushing_denormals
from .common import Row, interleaved


def mc_inference(quick: bool) -> Row:
    """MC samples per second of allconvnet18 (bnsm) vs the same layout of nn.Conv2d + hardtanh, 64x64, batch 16."""
    batch, k = 16, 4
    torch.manual_seed(0)
    x = torch.randint(0, 2, (batch, 6, 64, 64)).float()
    net = models.create_model("allconvnet18", neuron="bnsm")
    plain = models.create_model("allconvnet18", neuron=nsm.neurons.BENCH_REFERENCE)
    t_nsm, t_plain, ratio = interleaved(
        lambda: nsm.mc_predict(net, x, samples=k), lambda: nsm.mc_predict(plain, x, samples=k), 3 if quick else 10
    )
    n = batch * k
    return Row(
        "allconvnet18 MC inference, 64x64, batch 16",
        "samples/s",
        n / t_nsm,
        "plain conv + hardtanh",
        n / t_plain,
        ratio,
        ">= 0.8x (NSM costs at most 1.25x plain)",
    )


def training(quick: bool) -> list[Row]:
    """Training samples per second of allconvnet18 (bnsm) vs the plain conv + hardtanh layout, 64x64, batch 16.

    One step: forward, cross-entropy, backward and an Adam update, on the same random binary input; the bnsm
    network trains as ``nsm train`` trains it after its warm-up epochs, on batch-normalized firing logits
    (``nsm.normalization``), in the ``expected`` mode (``train.forward = "expected"``, the default: a mean and a
    variance convolution per layer) and, second row, sampling its states (``train.forward = "sampled"``); subnormal
    numbers flushed to zero, as ``nsm train`` does."""
    batch = 16
    torch.manual_seed(0)
    x = torch.randint(0, 2, (batch, 6, 64, 64)).float()
    y = torch.randint(0, 11, (batch,))

    def stepper(neuron, mode=None):
        net = models.create_model("allconvnet18", neuron=neuron)
        if nsm.LogitNormalization.units_of(net):
            nsm.LogitNormalization.attach(net, x)
        if mode is not None:
            nsm.set_mode(net, mode)
        opt = torch.optim.Adam(net.parameters(), lr=3e-4)

        def step():
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return step

    rows = []
    for forward, mode in (("expected", "expected"), ("sampled", None)):
        with flushing_denormals():  # as nsm train runs
            t_nsm, t_plain, ratio = interleaved(
                stepper("bnsm", mode), stepper(nsm.neurons.BENCH_REFERENCE), 2 if quick else 6
            )
        rows.append(
            Row(
                f"allconvnet18 training step ({forward}), 64x64, batch 16",
                "samples/s",
                batch / t_nsm,
                "plain conv + hardtanh",
                batch / t_plain,
                ratio,
                ">= 0.8x plain (original NSM code: 8 samples/s here)",
            )
        )
    return rows


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
        ">= 25x tonic",
    )


def tiny_model():
    """The ``tiny`` preset's network (``pipelines/presets/tiny.toml``) on six 32x32 frames, 11 classes."""
    from ..config import load_config

    m = load_config("tiny").model
    return models.create_model(
        m.name, in_channels=6, input_size=(32, 32), num_classes=11, neuron=m.neuron, noise_p=m.noise_p, **m.options
    )
