"""One training epoch (its steps, their loss and accuracy over every process) and the validation after it."""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
from tqdm import tqdm

from nsm.sampling import MCSettings

from ..calibration import classification_metrics
from .modes import training_mode
from .schedule import ramp_factor, ramped
from .setup import TrainingRun
from .steps import compute_loss, stop_if_diverged, uses_compiled

VALIDATION = MCSettings(samples=8)
"""How validation predicts after each epoch: Monte Carlo, 8 passes per item, in float32."""


def train_epoch(t: TrainingRun, epoch: int, progress: bool) -> tuple[dict, list[str]]:
    """Train ``t``'s network for epoch ``epoch`` (from 0): every batch a step in the epoch's mode
    (``modes.training_mode``), its learning rate ramped (``schedule.ramp_factor``), activity and health recorded
    every ``train.record_every`` steps; then the schedule's step. Returns the epoch's record without validation (the
    training loss and accuracy over every process's items, the learning rate it trained at, its seconds and
    throughput, the health monitor's summary) and the health monitor's warnings."""
    tc, proc = t.cfg.train, t.proc
    t.sampler.set_epoch(epoch)
    t.splits.train.set_epoch(epoch)
    t.net.train()
    started = time.perf_counter()
    loss_sum, correct, seen = 0.0, 0, 0
    steps_per_epoch = len(t.loader)
    bar = tqdm(
        t.loader, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="batch", disable=not (progress and proc.main), leave=False
    )
    for step, (x, y) in enumerate(bar):
        x, y = x.to(proc.device, non_blocking=True), y.to(proc.device, non_blocking=True)
        global_step = epoch * steps_per_epoch + step
        recording = global_step % tc.record_every == 0
        if recording:
            t.recorder.arm()
            t.health.arm()
        with t.autocast, training_mode(t.model, epoch, tc):
            fast = t.compiled is not None and uses_compiled(t.model, len(y), tc, epoch, recording)
            logits = (t.compiled if fast else t.net)(x)
        loss = compute_loss(logits, y)
        stop_if_diverged(loss, proc, epoch, step, t.run, t.init_from)
        t.optimizer.zero_grad(set_to_none=True)
        (t.scaler.scale(loss) if t.scaler is not None else loss).backward()
        t.health.record_gradients(t.scaler)  # before the step: the gradients that made it
        with ramped(t.optimizer, ramp_factor(tc, global_step, steps_per_epoch)):
            if t.scaler is not None:
                t.scaler.step(t.optimizer)
                t.scaler.update()
            else:
                t.optimizer.step()
        t.recorder.record(epoch + step / steps_per_epoch, global_step)
        t.health.observe_loss(loss, y)
        loss_sum += loss.item() * len(y)
        correct += int((logits.argmax(1) == y).sum())
        seen += len(y)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}")
    bar.close()
    seconds = time.perf_counter() - started
    epoch_health = t.health.end_epoch()
    if proc.world > 1:  # the epoch's loss and accuracy over every process's share
        totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=proc.device)
        dist.all_reduce(totals)
        loss_sum, correct, seen = totals[0].item(), int(totals[1].item()), int(totals[2].item())
    lr = t.optimizer.param_groups[0]["lr"]
    t.scheduler.step()
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / seen,
        "train_accuracy": correct / seen,
        "val_loss": None,
        "val_accuracy": None,
        "lr": lr,
        "seconds": round(seconds, 3),
        "samples_per_s": seen / seconds,
        "health": epoch_health.summary,
    }, epoch_health.warnings


@torch.no_grad()
def validate(model, loader, device, mc: MCSettings = VALIDATION) -> dict:
    """``val_accuracy`` and ``val_loss`` (the NLL) of ``model``'s Monte Carlo prediction (``mc``) on ``loader``'s
    items, with evaluation's definitions (``pipelines.calibration.classification_metrics``)."""
    model.eval()
    probs, labels = [], []
    for x, y in loader:
        probs.append(mc.predict(model, x.to(device)).probs.float().cpu())
        labels.append(y)
    figures = classification_metrics(torch.cat(probs).numpy(), torch.cat(labels).numpy())
    return {"val_accuracy": figures["accuracy"], "val_loss": figures["nll"]}
