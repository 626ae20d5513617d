"""What one training step runs on: its autocast, the compiled model where a step can use it, the loss, and the
stop when the loss diverges."""

from __future__ import annotations

import os
import shutil
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F

from events.errors import UserError
from nsm.sampling import runs_in_torch

from ..runs import Process, RunFolder, cpu_has_native_bf16
from ..train_config import TrainConfig


class TrainingDiverged(UserError, ValueError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


def autocast_for(device: torch.device, tc: TrainConfig):
    """The training forward's autocast and gradient scaler: with ``tc.amp`` on a GPU, bfloat16 where it supports
    it, float16 with a scaler otherwise; with ``tc.cpu_bf16`` on a CPU with native bf16 instructions
    (``cpu_has_native_bf16``), bfloat16; else none (float32)."""
    if device.type == "cpu" and tc.cpu_bf16 and cpu_has_native_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16), None
    if device.type != "cuda" or not tc.amp:
        return nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def compiled_model(model: torch.nn.Module, tc: TrainConfig, proc: Process):
    """``torch.compile(model)`` for the training steps that can use it (``uses_compiled``) when ``tc.compile``, in a
    single process, with a C++ compiler for inductor's CPU kernels on a CPU; else None (with a note why when
    compilation was asked for). It shares ``model``'s parameters: both run the same network."""
    if not tc.compile:
        return None
    if proc.world > 1:
        why = "distributed runs train eagerly"
    elif proc.device.type == "cpu" and not any(
        shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")
    ):
        why = "no C++ compiler (g++, c++ or clang++, or $CXX) for inductor's CPU kernels"
    else:
        # An error inside the compiler (not in the network, which then fails eagerly too) falls back to eager steps.
        torch._dynamo.config.suppress_errors = True
        return torch.compile(model)
    if proc.main:
        print(f"note: train.compile is on but the run trains eagerly: {why}", flush=True)
    return None


def uses_compiled(model, batch: int, tc: TrainConfig, epoch: int, recording: bool) -> bool:
    """Whether a training step runs the compiled model: a full batch (another size would compile again), after the
    warm-up (its own mode, one epoch), not a step whose activity is recorded (the recorders' hooks run eagerly),
    and a pass that torch can trace alone (``nsm.sampling.runs_in_torch``: no numba sampling or thresholding)."""
    return batch == tc.batch_size and epoch >= tc.warmup_epochs and not recording and runs_in_torch(model)


def compute_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The training loss: cross-entropy of the logits (in float32 whatever the autocast) against the labels."""
    return F.cross_entropy(logits.float(), labels)


def stop_if_diverged(
    loss: torch.Tensor, proc: Process, epoch: int, step: int, run: RunFolder, init_from: str | None = None
) -> None:
    """Stop every process (``TrainingDiverged``) when any one's loss is NaN or infinite; the message names the warm
    start's checkpoint (``init_from``) as a suspect beside the learning rate."""
    bad = torch.tensor([0.0 if torch.isfinite(loss) else 1.0], device=loss.device)
    if proc.world > 1:
        dist.all_reduce(bad)
    if bad.item():
        kept = (
            f"{run.checkpoint} still holds epoch {epoch}, the last good one"
            if run.checkpoint.exists()
            else "no epoch had completed, so there is no checkpoint"
        )
        hint = (
            f" The run started from --init-from {init_from}: that checkpoint may be damaged or unfit for this "
            "neuron kind (its weights were finite when loaded); try another, or"
            if init_from is not None
            else " Try"
        )
        raise TrainingDiverged(
            f"the loss became {float(loss.detach())} at epoch {epoch + 1}, step {step + 1}; "
            f"training stopped and {kept}.{hint} a lower train.lr (now in {run.config})."
        )
