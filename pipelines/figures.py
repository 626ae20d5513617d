"""Figures of a run: reliability diagrams, training curves and training health, written as PNG files.

Drawing goes through matplotlib's object-oriented API on the Agg canvas (no pyplot, no global
backend switch, no display needed). Every PNG is written atomically: rendered to a temporary file in
the destination folder, then renamed over the destination, so a reader never sees a half-written
image and a failure leaves any previous file in place. Parent folders are created.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from events.atomic import atomic_file

from .calibration import DEFAULT_BINS, check_probs, reliability_bins
from .health import DEAD_RATE, SATURATED_SHARE, SATURATION_P
from .runs import read_records


def new_figure(width: float, height: float) -> Figure:
    """A figure bound to an Agg canvas."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path) -> Path:
    """Write ``fig`` to ``path`` as PNG atomically (temporary file in the same folder, then rename)."""
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)
    return Path(path)


def plot_reliability(results: dict, path, n_bins: int = DEFAULT_BINS, title: str | None = None) -> Path:
    """Reliability diagram of one or more predictors, with a confidence histogram below.

    ``results`` maps a predictor's name (e.g. ``"1 sample"``, ``"MC 16"``, ``"deterministic"``) to
    ``(probs (N, C), labels (N,))``. Top panel: accuracy vs mean confidence of each non-empty bin of
    ``n_bins`` equal-width confidence bins, against the diagonal of perfect calibration; each legend
    entry carries the predictor's ECE. Bottom panel: fraction of samples per confidence bin.
    Returns the path written.
    """
    if not isinstance(results, dict) or not results:
        raise ValueError("plot_reliability needs a non-empty dict {name: (probs, labels)}")
    binned = {}
    for name, pair in results.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"results[{name!r}] must be a (probs, labels) pair")
        try:
            probs, labels = check_probs(*pair)
        except ValueError as err:
            raise ValueError(f"results[{name!r}]: {err}") from None
        correct = probs.argmax(axis=1) == labels
        binned[name] = reliability_bins(probs.max(axis=1).clip(0.0, 1.0), correct, n_bins)

    fig = new_figure(6.0, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    edges = next(iter(binned.values())).edges
    centers = (edges[:-1] + edges[1:]) / 2
    width = (edges[1] - edges[0]) / (len(binned) + 1)
    for k, (name, rb) in enumerate(binned.items()):
        full = rb.counts > 0
        (line,) = top.plot(
            rb.confidence[full],
            rb.accuracy[full],
            marker="o",
            markersize=4,
            label=f"{name} (ECE {rb.ece():.3f}, n={rb.n})",
        )
        offset = (k - (len(binned) - 1) / 2) * width
        bottom.bar(centers + offset, rb.counts / rb.n, width=width, color=line.get_color(), alpha=0.8)
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    top.set_title(title or "Reliability diagram")
    top.legend(loc="upper left", fontsize="small")
    top.grid(alpha=0.3)
    bottom.set_xlabel(f"confidence (max probability), {len(edges) - 1} bins")
    bottom.set_ylabel("fraction")
    bottom.grid(alpha=0.3)
    return save_png(fig, path)


def _series(records: list[dict], key: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of the records where ``key`` is a finite number; null or missing is skipped."""
    xs, ys = [], []
    for i, r in enumerate(records):
        value = r.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: record {i + 1}: {key!r} must be a number or null, got {value!r}")
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
        raise ValueError(f"{source}: no training records to plot")
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ValueError(f"{source}: record {i + 1} is not a dict")
        epoch = r.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, (int, float)) or not math.isfinite(epoch):
            raise ValueError(f"{source}: record {i + 1}: 'epoch' must be a finite number, got {epoch!r}")
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

    Reads each record's ``health`` field (format in ``pipelines.health``: per module name, ``module`` (its class)
    and ``firing_rate``, ``saturated``, ``grad_norm`` for a hidden layer or ``pool_rate`` for a max-pool layer).
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
            raise ValueError(f"{source}: record {i + 1}: 'health' must map layer names to dicts")
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


def plot_timeline(
    path,
    ends_us: np.ndarray,
    probs: np.ndarray,
    *,
    origin_us: int,
    classes=None,
    labels=None,
    accumulated_confidence: np.ndarray | None = None,
    title: str = "",
) -> Path:
    """Class probabilities of each window (at its end time) over the recording, labelled gestures shaded,
    and the accumulated evidence's confidence (dashed) when given. Written atomically."""
    from matplotlib import colormaps

    n_classes = probs.shape[1] if probs.ndim == 2 else 0
    names = list(classes) if classes is not None else [str(k) for k in range(n_classes)]
    colors = colormaps["tab20" if n_classes > 10 else "tab10"]
    fig = new_figure(12, 4.5)
    ax = fig.add_subplot()
    t = (np.asarray(ends_us, dtype=np.int64) - origin_us) * 1e-6
    for c, s, e in labels or []:
        k = int(c) - 1
        ax.axvspan((s - origin_us) * 1e-6, (e - origin_us) * 1e-6, color=colors(k % colors.N), alpha=0.18, lw=0)
        ax.text(
            ((s + e) / 2 - origin_us) * 1e-6,
            1.02,
            names[k] if k < len(names) else str(k),
            ha="center",
            va="bottom",
            fontsize=7,
            rotation=30,
            color=colors(k % colors.N),
        )
    for k in range(n_classes):
        ax.plot(t, probs[:, k], lw=1.0, color=colors(k % colors.N), label=names[k] if k < len(names) else str(k))
    if accumulated_confidence is not None:
        ax.plot(t, accumulated_confidence, "k--", lw=1.0, label="accumulated confidence")
    ax.set_xlabel("time since the first window's start (s)")
    ax.set_ylabel("class probability (MC mean)")
    ax.set_ylim(0, 1.15)
    if len(t):
        ax.set_xlim(min(t[0], 0), t[-1])
    ax.set_title(title, fontsize=9, pad=30)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    return save_png(fig, path)
