"""Figures of a training run: its curves (loss, accuracy, learning rate) and its health per layer, from the
``metrics.jsonl`` records, written as PNG files atomically (``pipelines.figures.save_png``)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from events.errors import InputError

from ..figures import new_figure, save_png
from ..runs import read_records
from .health import DEAD_RATE, SATURATED_SHARE, SATURATION_P


def _series(records: list[dict], key: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of the records where ``key`` is a finite number; null or missing is skipped."""
    xs, ys = [], []
    for i, r in enumerate(records):
        value = r.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{source}: record {i + 1}: {key!r} must be a number or null, got {value!r}")
        if math.isfinite(value):
            xs.append(r["epoch"])
            ys.append(float(value))
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _epoch_records(records) -> tuple[list[dict], str]:
    """(records, their source's name) of a list of ``metrics.jsonl`` records or the file's path, each checked to be
    a dict with a finite numeric ``epoch``."""
    source = str(records) if isinstance(records, (str, os.PathLike)) else "records"
    if isinstance(records, (str, os.PathLike)):
        records = read_records(records)
    if not isinstance(records, (list, tuple)) or not records:
        raise InputError(f"{source}: no training records to plot")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise InputError(f"{source}: record {i + 1} is not a dict")
        epoch = r.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch):
            raise InputError(f"{source}: record {i + 1}: 'epoch' must be a finite number, got {epoch!r}")
    return list(records), source


def plot_curves(records, path) -> Path:
    """Training curves from ``metrics.jsonl`` records (a list of dicts, or the file's path).

    Record format (one per epoch, written by the trainer): ``{"epoch": int, "train_loss": float,
    "train_accuracy": float, "val_loss": float|null, "val_accuracy": float|null, "lr": float,
    "seconds": float, "samples_per_s": float}``. Panels: loss (train, val), accuracy (train, val) and
    learning rate (log scale, positive values only). Missing, null and non-finite values are skipped;
    every record needs a numeric ``epoch``. Returns the path written.
    """
    records, source = _epoch_records(records)
    fig = new_figure(12.0, 3.6)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    for ax, key, label in (
        (ax_loss, "train_loss", "train"),
        (ax_loss, "val_loss", "validation"),
        (ax_acc, "train_accuracy", "train"),
        (ax_acc, "val_accuracy", "validation"),
    ):
        x, y = _series(records, key, source)
        if len(x):
            ax.plot(x, y, marker="o", markersize=3, label=label)
    x, y = _series(records, "lr", source)
    keep = y > 0
    if keep.any():
        ax_lr.plot(x[keep], y[keep], marker="o", markersize=3)
        ax_lr.set_yscale("log")
    for ax, name in ((ax_loss, "loss"), (ax_acc, "accuracy"), (ax_lr, "learning rate")):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0] and ax is not ax_lr:
            ax.legend(fontsize="small")
        if not ax.lines:
            ax.text(0.5, 0.5, "no values recorded", ha="center", va="center", transform=ax.transAxes, color="0.5")
    return save_png(fig, path)


HEALTH_PANELS = (
    ("firing_rate", "firing rate (share of outputs on)"),
    ("saturated", f"saturated share (P < {SATURATION_P:g} or > {1 - SATURATION_P:g})"),
    ("pool_rate", "max-pool rate (share of outputs on)"),
    ("grad_norm", "weight gradient norm"),
)


def plot_health(records, path) -> Path:
    """Per-layer training health from ``metrics.jsonl`` records (a list of dicts, or the file's path).

    Reads each record's ``health`` field (format in ``pipelines.training.health``: per module name, ``module`` (its
    class) and ``firing_rate``, ``saturated``, ``grad_norm`` for a hidden layer or ``pool_rate`` for a max-pool
    layer).
    Four panels against epoch: firing rate (the dead-layer limits dashed), saturated share (the warning's limit
    dashed), max-pool rates, and weight-gradient norm (log scale, positive values only). One line per layer, in
    the same colour in every panel, named once in a legend beside the panels (two columns past 16 layers).
    Records without ``health`` (runs from before it) and null or non-finite values are skipped; a panel with
    nothing to draw says so. Returns the path written.
    """
    from matplotlib import colormaps

    records, source = _epoch_records(records)
    labels: dict[str, str] = {}  # module name -> legend label, in forward order
    for i, r in enumerate(records):
        health = r.get("health") or {}
        if not isinstance(health, dict) or not all(isinstance(e, dict) for e in health.values()):
            raise InputError(f"{source}: record {i + 1}: 'health' must map layer names to dicts")
        for name, entry in health.items():
            labels.setdefault(name, f"{name} {entry.get('module', '')}".rstrip())
    if len(labels) <= 20:  # tab20's ten dark colours first, then their light pairs
        colors = {name: colormaps["tab20"](2 * (k % 10) + k // 10) for k, name in enumerate(labels)}
    else:
        colors = {name: colormaps["turbo"](k / (len(labels) - 1)) for k, name in enumerate(labels)}

    fig = new_figure(13.0, 7.5)
    axes = fig.subplots(2, 2, sharex=True).flatten()
    handles = {}
    for ax, (key, title) in zip(axes, HEALTH_PANELS):
        for name in labels:
            xs, ys = [], []
            for r in records:
                value = (r.get("health") or {}).get(name, {}).get(key)
                if (
                    isinstance(value, (int, float))
                    and not isinstance(value, bool)
                    and math.isfinite(value)
                    and (key != "grad_norm" or value > 0)
                ):
                    xs.append(r["epoch"])
                    ys.append(float(value))
            if xs:
                (handles[name],) = ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, color=colors[name])
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if key == "grad_norm":
            if ax.lines:
                ax.set_yscale("log")
        else:
            ax.set_ylim(-0.03, 1.03)
        if not ax.lines:
            empty = (
                "no firing probabilities (only NSM units have them)"
                if key == "saturated" and handles
                else "no values recorded"
            )
            ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes, color="0.5")
    for ax in axes[2:]:
        ax.set_xlabel("epoch")
    epochs = [r["epoch"] for r in records if r.get("health")]
    if epochs and min(epochs) == max(epochs):  # one epoch: an integer tick, not a zoom around it
        axes[0].set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
        axes[0].set_xticks([epochs[0]])
    for limit in (DEAD_RATE, 1 - DEAD_RATE):
        axes[0].axhline(limit, color="0.4", linestyle="--", linewidth=1)
    axes[1].axhline(SATURATED_SHARE, color="0.4", linestyle="--", linewidth=1)
    if handles:
        names = [name for name in labels if name in handles]
        fig.legend(
            [handles[n] for n in names],
            [labels[n] for n in names],
            loc="outside right upper",
            fontsize="small",
            title="layer",
            ncol=1 if len(names) <= 16 else 2,
        )
    fig.suptitle("training health per layer (means over each epoch's recorded steps; dashed: warning limits)")
    return save_png(fig, path)
