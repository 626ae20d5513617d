"""``nsm train``: train a network on event data, resumably, on a CPU, a GPU or many through torchrun.

It writes a run folder (the files: ``pipelines.runs``).

Every file is replaced atomically after each epoch, so a run killed at any moment (even with
SIGKILL) loses at most the epoch in flight; ``--resume`` continues from ``checkpoint.pt`` and ends
with exactly the parameters an uninterrupted run would have on a CPU: data order (a seeded
permutation per epoch), augmentation (a function of seed, epoch and item) and the noise (the
restored RNG states) all repeat.

After each epoch's line the trainer prints one ``warning:`` line per hidden layer that is dead (its
output all but constant) or saturated (nearly all its firing probabilities near 0 or 1), and one when
the training loss sat at the class prior on every step of the epoch (the thresholds and their reasons
are in ``pipelines.health``).

Multi-process: launched by ``torchrun`` (WORLD_SIZE > 1), each process trains on its share of every
batch (``train.batch_size`` is the global batch, split evenly) under DistributedDataParallel
(NCCL on GPUs, gloo on CPUs); gradients are averaged, so parameters after a step equal those of a
single process on the whole batch (for units without sampling noise and batch statistics; noisy
units draw different noise per process, and batch-normalized logits use each process's share of the
batch). Only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import time
from contextlib import contextmanager, nullcontext

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

import models
import nsm
from events.atomic import remove_dead_temps, write_text_atomic
from nsm.grid import without_grid
from nsm.initialization import data_init
from nsm.neurons import gain_parameters
from nsm.normalization import LogitNormalization
from nsm.sampling import runs_in_torch, takes_expectations

from . import config as configs
from .activity import ActivityRecorder
from .checkpoint import load_checkpoint, rewrite_checkpoint, save_checkpoint
from .data import Splits, load_data
from .figures import plot_curves, plot_health
from .health import HealthMonitor
from .readout_fit import fit_readout, samples_the_readout
from .runs import (
    DEFAULT_CACHE,
    Process,
    RunFolder,
    cpu_has_native_bf16,
    flushing_denormals,
    start_process,
    write_records,
)
from .temperature import fit_run_temperature
from .warmstart import warm_start

VAL_SAMPLES = 8  # Monte Carlo samples per validation prediction
INIT_ITEMS = 256  # training items whose statistics initialise a fresh run (train.init = "data")


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite; the run stopped and its last good checkpoint is kept."""


def build_model(cfg: configs.Config, splits: Splits):
    m = cfg.model
    return models.create_model(
        m.name,
        in_channels=splits.in_channels,
        input_size=splits.input_size,
        num_classes=len(splits.classes),
        neuron=m.neuron,
        noise_p=m.noise_p,
        noise_sigma=m.noise_sigma,
        **m.options,
    )


def init_batch(train_set, device: torch.device, seed: int) -> torch.Tensor:
    """The inputs of ``INIT_ITEMS`` training items (a seeded choice) that ``data_init`` takes its statistics from."""
    n = min(INIT_ITEMS, len(train_set))
    chosen = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([train_set[int(i)][0] for i in chosen]).to(device)


@contextmanager
def _warmup_passes(model, mode: str):
    """The warm-up's ``mode``, off the model's weight grid if it has one (``nsm.grid.without_grid``)."""
    with nsm.using_mode(model, mode), without_grid(model):
        yield


def training_mode(model, epoch: int, tc: configs.TrainConfig):
    """The units' mode in training epoch ``epoch``: during the first ``tc.warmup_epochs`` epochs, for networks that
    take expectations (``nsm.sampling.takes_expectations``), ``tc.warmup_forward`` (``mean-input``: E z = erf(v) of
    the mean input; ``deterministic``: every stochastic unit z = sgn(E u)), for the others deterministic (the
    learning rate ramps up meanwhile for both: ``ramp_factor``); in the last ``tc.sampled_epochs`` epochs (the
    sampled phase) the units' own modes; between them the mode ``tc.forward`` names (``expected``, ``mean-input`` or
    ``sampled-logit``, the logit's variance by the rule ``tc.variance``) when the network takes expectations, else
    the units' own modes. A network on a weight grid (model option ``weight_bits``) computes off it in the warm-up
    epochs. The sampled and deterministic passes share the backward rule (the gradient of E z); the expectation modes
    back-propagate through their own pass."""
    expectations = takes_expectations(model)
    if epoch < tc.warmup_epochs:
        return _warmup_passes(model, tc.warmup_forward if expectations else "deterministic")
    if tc.forward != "sampled" and expectations and epoch < tc.epochs - tc.sampled_epochs:
        return _expectation_pass(model, tc)
    return nullcontext()


@contextmanager
def _expectation_pass(model, tc: configs.TrainConfig):
    """The units in mode ``tc.forward``, their logits' variance by the rule ``tc.variance``."""
    with nsm.using_mode(model, tc.forward), nsm.using_variance_rule(model, tc.variance):
        yield model


def ramp_factor(tc: configs.TrainConfig, global_step: int, steps_per_epoch: int) -> float:
    """The learning rate's ramp: with ``tc.lr_ramp`` "warmup", step k (from 0) of the n steps of the warm-up epochs
    trains at (k + 1)/n times the scheduled rate, later steps at the full rate; 1 with "none" or no warm-up."""
    steps = tc.warmup_epochs * steps_per_epoch if tc.lr_ramp == "warmup" else 0
    return min(1.0, (global_step + 1) / steps) if steps else 1.0


def lr_scheduler(optimizer: torch.optim.Optimizer, tc: configs.TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch schedule ``tc.lr_schedule`` names: "step" multiplies the rate by ``tc.lr_gamma`` every
    ``tc.lr_step_epochs`` epochs; "cosine" sets epoch e of E to lr (1 + cos(pi e / E)) / 2. With a sampled phase
    (its S = ``tc.sampled_epochs`` epochs end the run) that schedule runs over the first E - S epochs, and epoch
    E - S + k (k from 0) trains at lr f (1 + cos(pi k / S)) / 2, f = ``tc.sampled_lr_factor``."""
    if tc.sampled_epochs:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: two_phase_factor(tc, epoch))
    if tc.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=tc.epochs)
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=tc.lr_step_epochs, gamma=tc.lr_gamma)


def two_phase_factor(tc: configs.TrainConfig, epoch: int) -> float:
    """The factor on every group's rate in ``epoch`` (from 0) of a run with a sampled phase (``lr_scheduler``)."""
    first = tc.epochs - tc.sampled_epochs
    if epoch >= first:
        return tc.sampled_lr_factor * (1 + math.cos(math.pi * (epoch - first) / tc.sampled_epochs)) / 2
    if tc.lr_schedule == "cosine":
        return (1 + math.cos(math.pi * epoch / first)) / 2
    return tc.lr_gamma ** (epoch // tc.lr_step_epochs)


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


def parameter_groups(model, tc: configs.TrainConfig) -> list[dict]:
    """Adam's parameter groups: the units' gains (``nsm.neurons.gain_parameters``) at ``tc.lr`` times
    ``tc.gain_lr_factor``, everything else at ``tc.lr``; one group when the factor is 1 (as runs were before the
    factor existed, so that their checkpoints resume)."""
    gains = {id(p) for p in gain_parameters(model)} if tc.gain_lr_factor != 1 else set()
    groups = [{"params": [p for p in model.parameters() if id(p) not in gains]}]
    if gains:
        groups.append({"params": [p for p in model.parameters() if id(p) in gains], "lr": tc.lr * tc.gain_lr_factor})
    return groups


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast_for(device: torch.device, tc: configs.TrainConfig):
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


def compiled_model(model: torch.nn.Module, tc: configs.TrainConfig, proc: Process):
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


def uses_compiled(model, batch: int, tc: configs.TrainConfig, epoch: int, recording: bool) -> bool:
    """Whether a training step runs the compiled model: a full batch (another size would compile again), after the
    warm-up (its own mode, one epoch), not a step whose activity is recorded (the recorders' hooks run eagerly),
    and a pass that torch can trace alone (``nsm.sampling.runs_in_torch``: no numba sampling or thresholding)."""
    return batch == tc.batch_size and epoch >= tc.warmup_epochs and not recording and runs_in_torch(model)


def compute_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), labels)


@torch.no_grad()
def validate(model, loader, device, samples: int = VAL_SAMPLES) -> dict:
    """Monte Carlo (``samples``) accuracy and NLL of ``model`` on ``loader``."""
    model.eval()
    correct, nll, n = 0, 0.0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        probs = nsm.mc_predict(model, x, samples=samples).probs
        correct += int((probs.argmax(1) == y).sum())
        nll += float(-torch.log(probs.gather(1, y[:, None]).clamp_min(1e-12)).sum())
        n += len(y)
    return {"val_accuracy": correct / n, "val_loss": nll / n}


def prepare_run(
    cfg: configs.Config, run: RunFolder, resume: bool, saved_epochs: int | None
) -> tuple[configs.Config, dict | None]:
    """Check the run folder against ``resume``; return the configuration to use and the checkpoint state."""
    if not resume:
        if run.checkpoint.exists():
            raise ValueError(
                f"{run.out} already holds a run (checkpoint.pt): pass --resume to continue it, or choose another --out"
            )
        return cfg, None
    if not run.checkpoint.is_file():
        raise FileNotFoundError(f"{run.out}: nothing to resume (no checkpoint.pt); start the run without --resume")
    ck = load_checkpoint(run.checkpoint)
    saved = configs.from_dict(ck.config, str(run.checkpoint))
    epochs = saved_epochs if saved_epochs is not None else saved.train.epochs
    saved = dataclasses.replace(saved, train=dataclasses.replace(saved.train, epochs=epochs))
    return saved, ck.state


def train(
    cfg: configs.Config,
    data_root,
    out,
    *,
    cache_dir=DEFAULT_CACHE,
    resume: bool = False,
    epochs: int | None = None,
    progress: bool = True,
    init_from=None,
) -> dict:
    """Train ``cfg`` on the data under ``data_root`` into run folder ``out``; return the last epoch's metrics.

    ``init_from``: a checkpoint whose network (same architecture, any neuron kind) a fresh run starts from
    (``pipelines.warmstart``); every checkpoint of the run records it as ``init_from``. Subnormal numbers are
    flushed to zero while it runs (``flushing_denormals``)."""
    with flushing_denormals():
        return _train(
            cfg,
            data_root,
            out,
            cache_dir=cache_dir,
            resume=resume,
            epochs=epochs,
            progress=progress,
            init_from=init_from,
        )


def _train(
    cfg: configs.Config, data_root, out, *, cache_dir, resume: bool, epochs: int | None, progress: bool, init_from
) -> dict:
    if resume and init_from is not None:
        raise ValueError(
            "--init-from starts a fresh run from another run's weights; a resumed run continues from "
            "its own checkpoint.pt (drop --init-from or --resume)"
        )
    proc = start_process(cfg.train.device)
    run = RunFolder(out, proc.main)
    if not resume and epochs is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
    cfg, state = prepare_run(cfg, run, resume, epochs)
    tc = cfg.train
    if tc.batch_size % proc.world:
        raise ValueError(
            f"train.batch_size {tc.batch_size} is the global batch; it must divide evenly over {proc.world} processes"
        )

    splits = load_data(
        cfg.data,
        data_root,
        cache_dir,
        augmentation=tc.augment,
        seed=tc.seed,
        with_test=False,
        progress=progress and proc.main,
    )
    torch.manual_seed(tc.seed)
    model = build_model(cfg, splits).to(proc.device)
    first = init_batch(splits.train, proc.device, tc.seed) if state is None else None  # fresh runs' statistics
    if init_from is not None:  # warm start (--init-from): fresh runs only, before the optimizer
        report = warm_start(model, init_from, classes=splits.classes)
        init_from = report.source
        if proc.main:
            print(report, flush=True)
    elif state is None and tc.init == "data":  # a fresh run; DDP then copies rank 0's parameters to all
        with training_mode(model, 0, tc):  # initialised in the mode its first epoch trains in
            data_init(model, first)
    norm = None  # batch-normalized logits (a resumed run: as it began)
    if state is None and tc.logit_norm == "batch" and LogitNormalization.units_of(model):
        with training_mode(model, 0, tc):
            norm = LogitNormalization.attach(model, first)
    optimizer = torch.optim.Adam(parameter_groups(model, tc), lr=tc.lr, eps=tc.adam_eps, weight_decay=tc.weight_decay)
    scheduler = lr_scheduler(optimizer, tc)
    autocast, scaler = autocast_for(proc.device, tc)
    start_epoch, best = 0, -math.inf
    if state is not None:
        if state.get("logit_norm") is not None:  # the parameters as trained, and the running moments
            model.load_state_dict(state["train_model_state"])
            norm = LogitNormalization.resume(model, state["logit_norm"])
        else:
            model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        if scaler is not None and state.get("scaler_state"):
            scaler.load_state_dict(state["scaler_state"])
        set_rng_state(state["rng_state"])
        start_epoch, best = state["epoch"], state.get("best_accuracy", -math.inf)
        init_from = state.get("init_from")
    # drop what a killed run wrote after its last checkpoint (everything, when it died in its first epoch)
    run.records(run.activity, start_epoch)
    history = run.records(run.metrics, start_epoch)
    if proc.main:
        run.out.mkdir(parents=True, exist_ok=True)
        remove_dead_temps(run.out)  # left by a run killed in the middle of writing a file
        write_text_atomic(run.config, cfg.to_toml())
    net = DistributedDataParallel(model) if proc.world > 1 else model
    compiled = compiled_model(model, tc, proc)

    sampler = DistributedSampler(
        splits.train, num_replicas=proc.world, rank=proc.rank, shuffle=True, seed=tc.seed, drop_last=True
    )
    loader = DataLoader(
        splits.train,
        batch_size=tc.batch_size // proc.world,
        sampler=sampler,
        num_workers=tc.workers,
        persistent_workers=False,
        drop_last=False,
        pin_memory=proc.device.type == "cuda",
    )
    val_loader = (
        DataLoader(splits.val, batch_size=cfg.eval.batch_size, num_workers=tc.workers)
        if splits.val is not None
        else None
    )
    recorder = ActivityRecorder(model, cfg.model.neuron, run.activity if proc.main else None)
    health = HealthMonitor(model, splits.train.labels, len(splits.classes), enabled=proc.main)
    meta = dict(
        classes=splits.classes, frame_spec=splits.frame_spec.to_dict(), config=cfg.to_dict(), init_from=init_from
    )
    if proc.main:
        print(
            f"training {cfg.model.name} ({cfg.model.neuron}) on {len(splits.train)} items "
            f"({len(splits.val) if splits.val else 0} held out for validation), {tc.epochs} epochs, "
            f"{proc.world} process(es) on {proc.device}; run folder {run.out}",
            flush=True,
        )
    metrics: dict = {}
    steps_per_epoch = len(loader)
    for epoch in range(start_epoch, tc.epochs):
        sampler.set_epoch(epoch)
        splits.train.set_epoch(epoch)
        net.train()
        started = time.perf_counter()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(
            loader,
            desc=f"epoch {epoch + 1}/{tc.epochs}",
            unit="batch",
            disable=not (progress and proc.main),
            leave=False,
        )
        for step, (x, y) in enumerate(bar):
            x, y = x.to(proc.device, non_blocking=True), y.to(proc.device, non_blocking=True)
            global_step = epoch * steps_per_epoch + step
            recording = global_step % tc.record_every == 0
            if recording:
                recorder.arm()
                health.arm()
            with autocast, training_mode(model, epoch, tc):
                fast = compiled is not None and uses_compiled(model, len(y), tc, epoch, recording)
                logits = (compiled if fast else net)(x)
            loss = compute_loss(logits, y)
            check_finite(loss, proc, epoch, step, run, init_from)
            optimizer.zero_grad(set_to_none=True)
            (scaler.scale(loss) if scaler is not None else loss).backward()
            health.record_gradients(scaler)  # before the step: the gradients that made it
            with ramped(optimizer, ramp_factor(tc, global_step, steps_per_epoch)):
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
            recorder.record(epoch + step / steps_per_epoch, global_step)
            health.observe_loss(loss, y)
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.1%}")
        bar.close()
        seconds = time.perf_counter() - started
        epoch_health = health.end_epoch()
        if proc.world > 1:  # the epoch's loss and accuracy over every process's share
            totals = torch.tensor([loss_sum, correct, seen], dtype=torch.float64, device=proc.device)
            dist.all_reduce(totals)
            loss_sum, correct, seen = totals[0].item(), int(totals[1].item()), int(totals[2].item())
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        metrics = {
            "epoch": epoch + 1,
            "train_loss": loss_sum / seen,
            "train_accuracy": correct / seen,
            "val_loss": None,
            "val_accuracy": None,
            "lr": lr,
            "seconds": round(seconds, 3),
            "samples_per_s": seen / seconds,
            "health": epoch_health.summary,
        }
        if val_loader is not None:
            metrics.update(validate(model, val_loader, proc.device))
        score = metrics["val_accuracy"] if metrics["val_accuracy"] is not None else -metrics["train_loss"]
        improved = score > best
        best = max(best, score)
        if proc.main:
            history.append(metrics)
            write_records(run.metrics, history)
            # checkpoints hold the plain NSM; checkpoint.pt also the normalized parameters that --resume continues
            plain = dict(model_state=norm.folded_state_dict()) if norm is not None else {}
            if improved:  # before checkpoint.pt: a kill in between redoes this epoch
                save_checkpoint(run.best, model, epoch=epoch + 1, **plain, **meta)
            save_checkpoint(
                run.checkpoint,
                model,
                epoch=epoch + 1,
                optimizer_state=optimizer.state_dict(),
                scheduler_state=scheduler.state_dict(),
                rng_state=rng_state(),
                best_accuracy=best,
                scaler_state=scaler.state_dict() if scaler is not None else None,
                logit_norm=norm.state_dict() if norm is not None else None,
                train_model_state=model.state_dict() if norm is not None else None,
                **plain,
                **meta,
            )
            plot_curves(history, run.curves)
            plot_health(history, run.health)
            val = (
                f", val loss {metrics['val_loss']:.3f}, val accuracy {metrics['val_accuracy']:.1%}"
                if metrics["val_accuracy"] is not None
                else ""
            )
            print(
                f"epoch {epoch + 1}/{tc.epochs}: loss {metrics['train_loss']:.3f}, accuracy "
                f"{metrics['train_accuracy']:.1%}{val}, {metrics['samples_per_s']:.0f} samples/s"
                f"{' (best)' if improved else ''}",
                flush=True,
            )
            for warning in epoch_health.warnings:
                print(warning, flush=True)
    recorder.close()
    health.close()
    if proc.main and tc.readout_fit == "sampled":
        fit_best_readout(run, splits.train.without_augmentation(), splits.val, tc.seed, proc.device, progress)
    if proc.main and tc.temperature_fit == "validation":
        fit_best_temperature(run, splits.val, cfg.eval.samples, tc.seed, proc.device)
    if proc.world > 1:
        dist.barrier()
    return metrics


def fit_best_readout(run: RunFolder, train_items, val_items, seed: int, device: torch.device, progress: bool) -> None:
    """Refit the readout of the run's ``best.pt`` (``pipelines.readout_fit``) and rewrite it with the fit's figures
    under ``readout_fit``; nothing when it has no such network or has been fitted (a resumed finished run), and a note
    when there are no validation items to check a fit on."""
    if not run.best.exists():
        return
    ck = load_checkpoint(run.best)
    if ck.state.get("readout_fit") is not None or not samples_the_readout(ck.model):
        return
    if val_items is None or len(val_items) == 0:
        print("readout not refitted: no validation items to check a fit on (data.val_fraction is 0)", flush=True)
        return
    ck.model.to(device)
    fit = fit_readout(ck.model, train_items, val_items, seed=seed, device=device, progress=progress)
    rewrite_checkpoint(ck, run.best, readout_fit=fit.to_dict())
    print(fit, flush=True)


def fit_best_temperature(run: RunFolder, val_items, samples: int, seed: int, device: torch.device) -> None:
    """Fit the Monte Carlo temperature of the run's ``best.pt`` (``pipelines.temperature``) and rewrite it with the
    fit under ``temperature``; nothing when there is no ``best.pt`` or it has one (a resumed finished run), a note
    when there are no validation items."""
    if not run.best.exists():
        return
    ck = load_checkpoint(run.best)
    if ck.state.get("temperature") is not None:
        return
    if val_items is None or len(val_items) == 0:
        print("no temperature fitted: no validation items (data.val_fraction is 0)", flush=True)
        return
    fit = fit_run_temperature(ck.model.to(device), val_items, samples, seed=seed, device=device)
    rewrite_checkpoint(ck, run.best, temperature=fit.to_dict())
    print(fit, flush=True)


def check_finite(
    loss: torch.Tensor, proc: Process, epoch: int, step: int, run: RunFolder, init_from: str | None = None
) -> None:
    """Stop every process when any one's loss is NaN or infinite; the message names the warm start's checkpoint
    (``init_from``) as a suspect beside the learning rate."""
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
