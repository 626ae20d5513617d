"""Calibration and accuracy metrics of probabilistic classifiers (numpy in, plain Python numbers out).

Inputs are predicted class probabilities ``probs`` of shape ``(N, C)`` (each row a distribution:
finite, non-negative, summing to 1 within ``ROW_SUM_TOL``) and integer ``labels`` of shape ``(N,)``
in ``[0, C)``. NumPy arrays, lists and torch tensors (any device, with or without gradient) are
accepted. Every malformed input raises ``ValueError`` saying what is wrong; nothing is clipped or
renormalized silently except the documented NLL floor.

Definitions (``n`` samples, ``y_i`` the label of sample ``i``, ``p_ic`` its probability of class ``c``):

- accuracy: fraction of samples whose arg-max class (lowest index on ties) equals the label.
- nll: ``mean_i -log(max(p_i,y_i, NLL_EPS))``; the floor ``NLL_EPS = 1e-12`` keeps a zero
  probability on the true class finite (it then contributes ``-log(1e-12) ~ 27.6``).
- brier: the multi-class Brier score ``mean_i sum_c (p_ic - 1[c = y_i])^2``, in ``[0, 2]``. For two
  classes it is twice the binary convention ``mean_i (p_i1 - y_i)^2`` (sklearn's default there).
- ece: expected calibration error with confidence ``max_c p_ic`` and ``n_bins`` equal-width bins on
  ``[0, 1]``: ``ECE = sum_b n_b / n * |acc_b - conf_b|`` over non-empty bins, ``acc_b`` the accuracy
  and ``conf_b`` the mean confidence of the samples in bin ``b``. Bins include their RIGHT edge:
  bin ``b`` (0-based) is ``(b/n_bins, (b+1)/n_bins]``, except that bin 0 also takes confidence 0,
  i.e. ``[0, 1/n_bins]``. Edges are ``numpy.linspace(0, 1, n_bins + 1)`` (the same edges and
  right-inclusive convention as ``sklearn.calibration.calibration_curve(strategy="uniform")``).
- mean_confidence: ``mean_i max_c p_ic``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from events.errors import InputError
from events.types import check_int

NLL_EPS = 1e-12
ROW_SUM_TOL = 1e-3
DEFAULT_BINS = 15


def _array(x, name: str) -> np.ndarray:
    """``x`` as a NumPy array; torch tensors are detached and moved to the CPU first."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} is not an array of numbers: {err}") from None


def _check_bins(n_bins) -> int:
    return check_int("n_bins", n_bins, 1)


def _check_labels(labels, n: int, n_classes: int, name: str = "labels") -> np.ndarray:
    labels = _array(labels, name)
    if labels.ndim != 1:
        raise InputError(f"{name} must be one-dimensional (N,), got shape {labels.shape}")
    if len(labels) != n:
        raise InputError(f"{name} has {len(labels)} entries but there are {n} predictions")
    if labels.dtype == bool or not (
        np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)
    ):
        raise InputError(f"{name} must be integer class indices, got dtype {labels.dtype}")
    if np.issubdtype(labels.dtype, np.floating):
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise InputError(f"{name} must be integer class indices; found non-integer values")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_classes:
        bad = int(labels[(labels < 0) | (labels >= n_classes)][0])
        raise InputError(f"{name} must lie in [0, {n_classes}); found {bad}")
    return labels


def check_probs(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert ``(probs, labels)``: returns ``float64 (N, C)`` and ``int64 (N,)`` arrays.

    Raises ``ValueError`` for: no samples, a shape other than ``(N, C)`` with ``C >= 1``, non-finite or
    negative probabilities, rows not summing to 1 within ``ROW_SUM_TOL``, labels of another length,
    non-integer labels, labels outside ``[0, C)``.
    """
    probs = _array(probs, "probs")
    if probs.ndim != 2:
        raise InputError(f"probs must be two-dimensional (N, C), got shape {probs.shape}")
    if probs.shape[0] == 0:
        raise InputError("no predictions: probs is empty (N = 0)")
    if probs.shape[1] == 0:
        raise InputError("probs has no classes (C = 0)")
    if not (np.issubdtype(probs.dtype, np.floating) or np.issubdtype(probs.dtype, np.integer)):
        raise InputError(f"probs must hold real numbers, got dtype {probs.dtype}")
    probs = probs.astype(np.float64)
    if not np.all(np.isfinite(probs)):
        row = int(np.flatnonzero(~np.all(np.isfinite(probs), axis=1))[0])
        raise InputError(f"probs has non-finite values (first in row {row})")
    if probs.min() < 0:
        row = int(np.flatnonzero(probs.min(axis=1) < 0)[0])
        raise InputError(f"probs has negative values (first in row {row}: {probs[row].min():g})")
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1.0) > ROW_SUM_TOL
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise InputError(
            f"probs rows must sum to 1 (tolerance {ROW_SUM_TOL:g}); row {row} sums to {sums[row]:.6g} "
            "(pass probabilities, e.g. softmax outputs, not logits)"
        )
    labels = _check_labels(labels, probs.shape[0], probs.shape[1])
    return probs, labels


def _check_confidence(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    confidence = _array(confidence, "confidence")
    if confidence.ndim != 1:
        raise InputError(f"confidence must be one-dimensional (N,), got shape {confidence.shape}")
    if len(confidence) == 0:
        raise InputError("no predictions: confidence is empty (N = 0)")
    if confidence.dtype == bool or not (
        np.issubdtype(confidence.dtype, np.floating) or np.issubdtype(confidence.dtype, np.integer)
    ):
        raise InputError(f"confidence must hold real numbers, got dtype {confidence.dtype}")
    confidence = confidence.astype(np.float64)
    if not np.all(np.isfinite(confidence)) or confidence.min() < 0 or confidence.max() > 1:
        raise InputError("confidence must be finite and lie in [0, 1]")
    correct = _array(correct, "correct")
    if correct.shape != confidence.shape:
        raise InputError(f"correct has shape {correct.shape} but confidence has shape {confidence.shape}")
    if correct.dtype != bool:
        if not (np.issubdtype(correct.dtype, np.integer) or np.issubdtype(correct.dtype, np.floating)) or not np.all(
            (correct == 0) | (correct == 1)
        ):
            raise InputError("correct must be booleans or 0/1 values")
        correct = correct.astype(bool)
    return confidence, correct


@dataclass(frozen=True)
class ReliabilityBins:
    """The data behind a reliability diagram.

    ``edges`` ``(n_bins + 1,)``: bin edges ``linspace(0, 1, n_bins + 1)``, bins right-inclusive (see the
    module docstring); ``counts`` ``(n_bins,)`` int64: samples per bin; ``accuracy`` and ``confidence``
    ``(n_bins,)``: fraction correct and mean confidence per bin, NaN for an empty bin.
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray

    @property
    def n(self) -> int:
        return int(self.counts.sum())

    def ece(self) -> float:
        """``sum_b n_b / n * |acc_b - conf_b|`` over non-empty bins."""
        full = self.counts > 0
        gap = np.abs(self.accuracy[full] - self.confidence[full])
        return float(np.sum(self.counts[full] * gap) / self.n)

    def to_dict(self) -> dict:
        """JSON-ready lists; empty bins have ``None`` accuracy and confidence."""

        def floats(a):
            return [None if np.isnan(v) else float(v) for v in a]

        return {
            "edges": [float(e) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "accuracy": floats(self.accuracy),
            "confidence": floats(self.confidence),
        }


def bin_index(confidence: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin of each confidence: ``b`` with ``edges[b] < c <= edges[b + 1]``, confidence 0 in bin 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # searchsorted(side="left") on the inner edges counts the inner edges strictly below c
    return np.searchsorted(edges[1:-1], confidence, side="left")


def reliability_bins(confidence, correct, n_bins: int = DEFAULT_BINS) -> ReliabilityBins:
    """Per-bin counts, accuracy and mean confidence of ``n_bins`` equal-width confidence bins.

    ``confidence`` ``(N,)`` in ``[0, 1]``; ``correct`` ``(N,)`` booleans (or 0/1).
    """
    n_bins = _check_bins(n_bins)
    confidence, correct = _check_confidence(confidence, correct)
    idx = bin_index(confidence, n_bins)
    counts = np.bincount(idx, minlength=n_bins).astype(np.int64)
    hits = np.bincount(idx, weights=correct.astype(np.float64), minlength=n_bins)
    conf_sum = np.bincount(idx, weights=confidence, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(counts > 0, hits / counts, np.nan)
        mean_conf = np.where(counts > 0, conf_sum / counts, np.nan)
    return ReliabilityBins(np.linspace(0.0, 1.0, n_bins + 1), counts, accuracy, mean_conf)


def expected_calibration_error(confidence, correct, n_bins: int = DEFAULT_BINS) -> float:
    """ECE of ``n_bins`` equal-width, right-inclusive confidence bins (module docstring)."""
    return reliability_bins(confidence, correct, n_bins).ece()


def classification_metrics(probs, labels, n_bins: int = DEFAULT_BINS) -> dict:
    """``accuracy``, ``nll``, ``brier``, ``ece``, ``mean_confidence`` (floats) and ``n`` (int).

    ``probs`` ``(N, C)`` class probabilities, ``labels`` ``(N,)`` class indices; definitions in the
    module docstring (NLL floored at ``NLL_EPS``; Brier summed over classes, in ``[0, 2]``; ECE with
    ``n_bins`` right-inclusive bins).
    """
    n_bins = _check_bins(n_bins)
    probs, labels = check_probs(probs, labels)
    rows = np.arange(len(labels))
    p_true = probs[rows, labels]
    prediction = probs.argmax(axis=1)
    correct = prediction == labels
    confidence = probs.max(axis=1)
    onehot = np.zeros_like(probs)
    onehot[rows, labels] = 1.0
    return {
        "accuracy": float(correct.mean()),
        "nll": float(np.mean(-np.log(np.maximum(p_true, NLL_EPS)))),
        "brier": float(np.mean(np.sum((probs - onehot) ** 2, axis=1))),
        "ece": expected_calibration_error(np.minimum(confidence, 1.0), correct, n_bins),
        "mean_confidence": float(confidence.mean()),
        "n": int(len(labels)),
    }


def group_accuracy(probs, labels, groups) -> float:
    """Accuracy over groups: the probabilities of all items of a group are averaged, then arg-maxed.

    ``groups`` ``(N,)`` holds any group identifiers (ints or strings), e.g. the gesture each 96 ms clip
    was cut from. Every item of a group must carry the same label: a group with mixed labels raises
    ``ValueError`` naming the group and its labels. Returns the fraction of groups predicted correctly.
    """
    probs, labels = check_probs(probs, labels)
    groups = _array(groups, "groups")
    if groups.ndim != 1 or len(groups) != len(labels):
        raise InputError(f"groups must have shape ({len(labels)},), got {groups.shape}")
    keys, inverse = np.unique(groups, return_inverse=True)
    inverse = inverse.reshape(-1)
    n_groups = len(keys)
    group_label = np.full(n_groups, -1, dtype=np.int64)
    group_label[inverse] = labels  # any member's label
    mixed = group_label[inverse] != labels
    if mixed.any():
        g = int(inverse[np.flatnonzero(mixed)[0]])
        found = sorted({int(v) for v in labels[inverse == g]})
        key = keys[g].item() if isinstance(keys[g], np.generic) else keys[g]
        raise InputError(f"group {key!r} mixes labels {found}; all items of a group must share one label")
    summed = np.zeros((n_groups, probs.shape[1]))
    np.add.at(summed, inverse, probs)
    counts = np.bincount(inverse, minlength=n_groups)[:, None]
    mean = summed / counts
    return float(np.mean(mean.argmax(axis=1) == group_label))


TEMPERATURE_RANGE = (0.01, 100.0)  # the temperatures fit_temperature searches (the upper one nsm's MAX_TEMPERATURE)
_GOLDEN_STEPS = 80  # golden-section steps over log(1/T): the bracket shrinks by 0.618^80, far below float precision


def tempered_nll(probs, labels, temperature: float) -> float:
    """The NLL of softmax(log p / T) (``nsm.sampling.temper``), with each probability floored at ``NLL_EPS``
    before its logarithm, as ``nll`` floors the true class's."""
    probs, labels = check_probs(probs, labels)
    return _tempered_nll(np.log(np.maximum(probs, NLL_EPS)), labels, 1.0 / temperature)


def _tempered_nll(log_p: np.ndarray, labels: np.ndarray, inverse: float) -> float:
    scaled = log_p * inverse
    top = scaled.max(axis=1, keepdims=True)
    log_z = top[:, 0] + np.log(np.exp(scaled - top).sum(axis=1))
    return float(np.mean(log_z - scaled[np.arange(len(labels)), labels]))


def fit_temperature(probs, labels) -> float:
    """The temperature T in ``TEMPERATURE_RANGE`` that minimises ``tempered_nll`` on ``(probs, labels)``.

    The NLL of softmax(b log p) is convex in b = 1/T (a log-sum-exp of linear functions of b minus a linear
    function), so a golden-section search over log b finds its minimum within the range."""
    probs, labels = check_probs(probs, labels)
    log_p = np.log(np.maximum(probs, NLL_EPS))
    lo, hi = np.log(1.0 / TEMPERATURE_RANGE[1]), np.log(1.0 / TEMPERATURE_RANGE[0])
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _tempered_nll(log_p, labels, np.exp(a)), _tempered_nll(log_p, labels, np.exp(b))
    for _ in range(_GOLDEN_STEPS):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _tempered_nll(log_p, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _tempered_nll(log_p, labels, np.exp(b))
    return float(1.0 / np.exp((lo + hi) / 2.0))
