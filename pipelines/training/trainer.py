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
are in ``pipelines.training.health``).

Multi-process: launched by ``torchrun`` (WORLD_SIZE > 1), each process trains on its share of every
batch (``train.batch_size`` is the global batch, split evenly) under DistributedDataParallel
(NCCL on GPUs, gloo on CPUs); gradients are averaged, so parameters after a step equal those of a
single process on the whole batch (for units without sampling noise and batch statistics; noisy
units draw different noise per process, and batch-normalized logits use each process's share of the
batch). Only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import dataclasses

import torch.distributed as dist

from events.errors import InputError

from .. import config as configs
from ..checkpoint import save_checkpoint
from ..data import load_data
from ..runs import DEFAULT_CACHE, RunFolder, flushing_denormals, start_process, write_records
from .epoch import train_epoch, validate
from .figures import plot_curves, plot_health
from .fits import fit_best_readout, fit_best_temperature
from .setup import TrainingRun, prepare_run, rng_state, set_up


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
    (``pipelines.training.warmstart``); every checkpoint of the run records it as ``init_from``. Subnormal numbers are
    flushed to zero while it runs (``flushing_denormals``)."""
    if resume and init_from is not None:
        raise InputError(
            "--init-from starts a fresh run from another run's weights; a resumed run continues from "
            "its own checkpoint.pt (drop --init-from or --resume)"
        )
    with flushing_denormals():
        t = _start(cfg, data_root, out, cache_dir, resume, epochs, progress, init_from)
        tc = t.cfg.train
        if t.proc.main:
            print(
                f"training {t.cfg.model.name} ({t.cfg.model.neuron}) on {len(t.splits.train)} items "
                f"({len(t.splits.val) if t.splits.val else 0} held out for validation), {tc.epochs} epochs, "
                f"{t.proc.world} process(es) on {t.proc.device}; run folder {t.run.out}",
                flush=True,
            )
        metrics: dict = {}
        for epoch in range(t.start_epoch, tc.epochs):
            metrics, warnings = train_epoch(t, epoch, progress)
            if t.val_loader is not None:
                metrics.update(validate(t.model, t.val_loader, t.proc.device))
            _end_epoch(t, epoch, metrics, warnings)
        t.recorder.close()
        t.health.close()
        if t.proc.main and tc.readout_fit == "sampled":
            train_items = t.splits.train.without_augmentation()
            fit_best_readout(t.run, train_items, t.splits.val, tc.seed, t.proc.device, progress)
        if t.proc.main and tc.temperature_fit == "validation":
            fit_best_temperature(t.run, t.splits.val, t.cfg.eval.samples, tc.seed, t.proc.device)
        if t.proc.world > 1:
            dist.barrier()
        return metrics


def _start(cfg, data_root, out, cache_dir, resume: bool, epochs: int | None, progress: bool, init_from) -> TrainingRun:
    """The process group, the run folder checked against ``resume``, the data, and the run set up (``set_up``)."""
    proc = start_process(cfg.train.device)
    run = RunFolder(out, proc.main)
    if not resume and epochs is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=epochs))
    cfg, state = prepare_run(cfg, run, resume, epochs)
    tc = cfg.train
    if tc.batch_size % proc.world:
        raise InputError(
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
    return set_up(cfg, proc, run, splits, state, init_from)


def _end_epoch(t: TrainingRun, epoch: int, metrics: dict, warnings: list[str]) -> None:
    """Keep the epoch (rank 0 only): its record in ``metrics.jsonl``, ``best.pt`` when it improved on the best
    validation accuracy (without validation: the training loss), ``checkpoint.pt`` with everything ``--resume``
    needs, the figures, the epoch's line and the health warnings."""
    score = metrics["val_accuracy"] if metrics["val_accuracy"] is not None else -metrics["train_loss"]
    improved = score > t.best
    t.best = max(t.best, score)
    if not t.proc.main:
        return
    run, norm, tc = t.run, t.norm, t.cfg.train
    t.history.append(metrics)
    write_records(run.metrics, t.history)
    # checkpoints hold the plain NSM; checkpoint.pt also the normalized parameters that --resume continues
    plain = dict(model_state=norm.folded_state_dict()) if norm is not None else {}
    if improved:  # before checkpoint.pt: a kill in between redoes this epoch
        save_checkpoint(run.best, t.model, epoch=epoch + 1, **plain, **t.meta)
    save_checkpoint(
        run.checkpoint,
        t.model,
        epoch=epoch + 1,
        optimizer_state=t.optimizer.state_dict(),
        scheduler_state=t.scheduler.state_dict(),
        rng_state=rng_state(),
        best_accuracy=t.best,
        scaler_state=t.scaler.state_dict() if t.scaler is not None else None,
        logit_norm=norm.state_dict() if norm is not None else None,
        train_model_state=t.model.state_dict() if norm is not None else None,
        **plain,
        **t.meta,
    )
    plot_curves(t.history, run.curves)
    plot_health(t.history, run.health)
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
    for warning in warnings:
        print(warning, flush=True)
