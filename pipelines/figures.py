"""Figures shared by the jobs: the Agg canvas and the atomic PNG writer, reliability diagrams and a stream's
timeline (a run's training curves and health: ``pipelines.training.figures``).

Drawing goes through matplotlib's object-oriented API on the Agg canvas (no pyplot, no global
backend switch, no display needed). Every PNG is written atomically: rendered to a temporary file in
the destination folder, then renamed over the destination, so a reader never sees a half-written
image and a failure leaves any previous file in place. Parent folders are created.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from events.atomic import atomic_file
from events.errors import InputError

from .calibration import DEFAULT_BINS, check_probs, reliability_bins


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
        raise InputError("plot_reliability needs a non-empty dict {name: (probs, labels)}")
    binned = {}
    for name, pair in results.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise InputError(f"results[{name!r}] must be a (probs, labels) pair")
        try:
            probs, labels = check_probs(*pair)
        except ValueError as err:
            raise InputError(f"results[{name!r}]: {err}") from None
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
