"""A training run's set-up: its configuration against the run folder (fresh or ``--resume``), the network (built,
warm-started or initialised from data, or restored), its optimizer, schedule and precision, and the loaders; the
random number generators' state that a resumed run restores."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

import models
from events.atomic import remove_dead_temps, write_text_atomic
from events.errors import InputError, MissingInputError
from nsm.initialization import data_init
from nsm.normalization import LogitNormalization

from .. import config as configs
from ..checkpoint import load_checkpoint
from ..data import Splits
from ..runs import Process, RunFolder
from .activity import ActivityRecorder
from .health import HealthMonitor
from .modes import training_mode
from .schedule import lr_scheduler, parameter_groups
from .steps import autocast_for, compiled_model
from .warmstart import warm_start

INIT_ITEMS = 256  # training items whose statistics initialise a fresh run (train.init = "data")


def build_model(cfg: configs.Config, splits: Splits):
    """The network ``cfg.model`` names, built for the items and classes of ``splits``."""
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


def rng_state() -> dict:
    """The random number generators' state (torch's, and every CUDA device's) that a checkpoint keeps."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``'s state (the CUDA part where this machine has CUDA)."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def prepare_run(
    cfg: configs.Config, run: RunFolder, resume: bool, saved_epochs: int | None
) -> tuple[configs.Config, dict | None]:
    """Check the run folder against ``resume``; return the configuration to use and the checkpoint state."""
    if not resume:
        if run.checkpoint.exists():
            raise InputError(
                f"{run.out} already holds a run (checkpoint.pt): pass --resume to continue it, or choose another --out"
            )
        return cfg, None
    if not run.checkpoint.is_file():
        raise MissingInputError(f"{run.out}: nothing to resume (no checkpoint.pt); start the run without --resume")
    ck = load_checkpoint(run.checkpoint)
    saved = configs.from_dict(ck.config, str(run.checkpoint))
    epochs = saved_epochs if saved_epochs is not None else saved.train.epochs
    saved = dataclasses.replace(saved, train=dataclasses.replace(saved.train, epochs=epochs))
    return saved, ck.state


@dataclass
class TrainingRun:
    """Everything a run's epochs share. ``model`` is the network, ``net`` what the steps call (``model`` under
    DistributedDataParallel in a multi-process run), ``compiled`` its compiled form or None; ``norm`` the
    batch-normalized logits (``nsm.normalization``) or None; ``best`` the best validation accuracy so far (or
    minus the training loss, without validation); ``meta`` what every checkpoint records beside the weights."""

    cfg: configs.Config
    proc: Process
    run: RunFolder
    splits: Splits
    model: torch.nn.Module
    net: torch.nn.Module
    compiled: Any
    norm: LogitNormalization | None
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: Any
    scaler: Any
    sampler: DistributedSampler
    loader: DataLoader
    val_loader: DataLoader | None
    recorder: ActivityRecorder
    health: HealthMonitor
    history: list[dict]
    meta: dict
    start_epoch: int = 0
    best: float = -math.inf
    init_from: str | None = None


def set_up(
    cfg: configs.Config, proc: Process, run: RunFolder, splits: Splits, state: dict | None, init_from
) -> TrainingRun:
    """The run ready for its first epoch to come: a fresh network (warm-started from ``init_from``, or initialised
    on the statistics of the training items, in the mode its first epoch trains in) or, with ``state`` (a resumed
    run's checkpoint), the network, optimizer, schedule, scaler and random state as the last epoch left them."""
    tc = cfg.train
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
    return TrainingRun(
        cfg=cfg,
        proc=proc,
        run=run,
        splits=splits,
        model=model,
        net=DistributedDataParallel(model) if proc.world > 1 else model,
        compiled=compiled_model(model, tc, proc),
        norm=norm,
        optimizer=optimizer,
        scheduler=scheduler,
        autocast=autocast,
        scaler=scaler,
        sampler=sampler,
        loader=loader,
        val_loader=val_loader,
        recorder=ActivityRecorder(model, cfg.model.neuron, run.activity if proc.main else None),
        health=HealthMonitor(model, splits.train.labels, len(splits.classes), enabled=proc.main),
        history=history,
        meta=dict(
            classes=splits.classes, frame_spec=splits.frame_spec.to_dict(), config=cfg.to_dict(), init_from=init_from
        ),
        start_epoch=start_epoch,
        best=best,
        init_from=init_from,
    )
