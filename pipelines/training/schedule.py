"""The optimizer's parameter groups and the learning rate over a run: the per-epoch schedule, the warm-up's ramp
and the sampled phase's own cosine (``train.lr``, ``lr_schedule``, ``lr_ramp``, ``sampled_epochs``)."""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from nsm.neurons import gain_parameters

from ..train_config import TrainConfig


def parameter_groups(model, tc: TrainConfig) -> list[dict]:
    """Adam's parameter groups: the units' gains (``nsm.neurons.gain_parameters``) at ``tc.lr`` times
    ``tc.gain_lr_factor``, everything else at ``tc.lr``; one group when the factor is 1 (as runs were before the
    factor existed, so that their checkpoints resume)."""
    gains = {id(p) for p in gain_parameters(model)} if tc.gain_lr_factor != 1 else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in gains]}]
    if gains:
        groups.append({"params": [p for p in model.parameters() if id(p) in gains], "lr": tc.lr * tc.gain_lr_factor})
    return groups


def lr_scheduler(optimizer: torch.optim.Optimizer, tc: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch schedule ``tc.lr_schedule`` names: "step" multiplies the rate by ``tc.lr_gamma`` every
    ``tc.lr_step_epochs`` epochs; "cosine" sets epoch e of E to lr (1 + cos(pi e / E)) / 2. With a sampled phase
    (its S = ``tc.sampled_epochs`` epochs end the run) that schedule runs over the first E - S epochs, and epoch
    E - S + k (k from 0) trains at lr f (1 + cos(pi k / S)) / 2, f = ``tc.sampled_lr_factor``."""
    if tc.sampled_epochs:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: two_phase_factor(tc, epoch))
    if tc.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=tc.lr_step_epochs, gamma=tc.lr_gamma)


def two_phase_factor(tc: TrainConfig, epoch: int) -> float:
    """The factor on every group's rate in ``epoch`` (from 0) of a run with a sampled phase (``lr_scheduler``)."""
    first = tc.epochs - tc.sampled_epochs
    if epoch >= first:
        return tc.sampled_lr_factor * (1 + math.cos(math.pi * (epoch - first) / tc.sampled_epochs)) / 2
    if tc.lr_schedule == "cosine":
        return (1 + math.cos(math.pi * epoch / first)) / 2
    return tc.lr_gamma ** (epoch // tc.lr_step_epochs)


def ramp_factor(tc: TrainConfig, global_step: int, steps_per_epoch: int) -> float:
    """The learning rate's ramp: with ``tc.lr_ramp`` "warmup", step k (from 0) of the n steps of the warm-up epochs
    trains at (k + 1)/n times the scheduled rate, later steps at the full rate; 1 with "none" or no warm-up."""
    steps = tc.warmup_epochs * steps_per_epoch if tc.lr_ramp == "warmup" else 0
    return min(1.0, (global_step + 1) / steps) if steps else 1.0


@contextmanager
def ramped(optimizer: torch.optim.Optimizer, factor: float):
    """Every parameter group's learning rate times ``factor`` inside the block (the scheduler's rates stay)."""
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] *= factor
    try:
        yield
    finally:
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate
