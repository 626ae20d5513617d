"""Calibration metrics (pipelines.calibration) and the figures (pipelines.figures)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from pipelines.calibration import (
    NLL_EPS,
    check_probs,
    classification_metrics,
    expected_calibration_error,
    fit_temperature,
    group_accuracy,
    reliability_bins,
    tempered_nll,
)
from pipelines.figures import plot_reliability
from pipelines.training.figures import plot_curves

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def random_probs(rng, n, c, sharpness=3.0):
    logits = rng.normal(size=(n, c)) * sharpness
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def sample_labels(rng, probs):
    """Labels drawn from each row's own distribution: a perfectly calibrated predictor."""
    u = rng.random(len(probs))[:, None]
    return np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), probs.shape[1] - 1)


# ---------------------------------------------------------------- ECE


def test_ece_matches_sklearn_calibration_curve():
    # Independent: sklearn computes per-bin accuracy and mean confidence itself
    # (calibration_curve, uniform strategy) and np.histogram counts the bins; we only combine them.
    # np.histogram's bins are left-closed while ours are right-closed, so the test asserts that no
    # confidence lies on an edge, where the conventions would differ.
    rng = np.random.default_rng(0)
    probs = random_probs(rng, 3000, 10, sharpness=1.5)
    labels = rng.integers(0, 10, 3000)
    labels[:1500] = probs[:1500].argmax(axis=1)  # a mix of right and wrong predictions
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(int)
    edges = np.linspace(0, 1, 16)
    assert not np.isin(confidence, edges).any()
    prob_true, prob_pred = calibration_curve(correct, confidence, n_bins=15, strategy="uniform")
    counts, _ = np.histogram(confidence, bins=edges)
    nonempty = counts[counts > 0]
    assert len(nonempty) == len(prob_true) >= 5
    expected = float(np.sum(nonempty / len(confidence) * np.abs(prob_true - prob_pred)))

    got = classification_metrics(probs, labels)["ece"]
    assert got == pytest.approx(expected, abs=1e-12)
    assert expected_calibration_error(confidence, correct) == pytest.approx(expected, abs=1e-12)


def test_reliability_bins_hand_computed_with_right_inclusive_edges():
    # 4 bins: (0, .25] (.25, .5] (.5, .75] (.75, 1]; 0.25 and 0.5 fall in the bin they close.
    conf = np.array([0.0, 0.25, 0.5, 0.6, 0.75, 1.0])
    correct = np.array([0, 1, 1, 0, 1, 1], dtype=bool)
    rb = reliability_bins(conf, correct, n_bins=4)
    assert rb.counts.tolist() == [2, 1, 2, 1]
    np.testing.assert_allclose(rb.accuracy, [0.5, 1.0, 0.5, 1.0])
    np.testing.assert_allclose(rb.confidence, [0.125, 0.5, 0.675, 1.0])
    # ECE = (2 |.5-.125| + 1 |1-.5| + 2 |.5-.675| + 1 |1-1|) / 6
    assert rb.ece() == pytest.approx((2 * 0.375 + 0.5 + 2 * 0.175) / 6)
    d = rb.to_dict()
    assert d["counts"] == [2, 1, 2, 1] and len(d["edges"]) == 5


def test_reliability_bins_empty_bins_are_nan_and_excluded():
    rb = reliability_bins([0.95, 0.97], [True, False], n_bins=15)
    assert rb.counts.sum() == 2 and rb.counts[-1] == 2
    assert np.isnan(rb.accuracy[:-1]).all() and np.isnan(rb.confidence[:-1]).all()
    assert rb.to_dict()["accuracy"][0] is None
    assert rb.ece() == pytest.approx(abs(0.5 - 0.96))


def test_ece_is_one_when_all_wrong_with_confidence_one():
    probs = np.tile([1.0, 0.0, 0.0], (50, 1))
    labels = np.full(50, 2)
    m = classification_metrics(probs, labels)
    assert m["ece"] == 1.0 and m["accuracy"] == 0.0 and m["mean_confidence"] == 1.0
    assert m["brier"] == 2.0
    assert m["nll"] == pytest.approx(-math.log(NLL_EPS))


def test_ece_is_zero_when_all_right_with_confidence_one():
    probs = np.eye(4)[np.arange(40) % 4]
    m = classification_metrics(probs, np.arange(40) % 4)
    assert m["ece"] == 0.0 and m["accuracy"] == 1.0 and m["brier"] == 0.0 and m["nll"] == 0.0


def test_ece_small_for_labels_drawn_from_the_predictions():
    # Given the confidences, correct_i ~ Bernoulli(c_i) independently (labels drawn from the rows),
    # so acc_b - conf_b has mean 0 and standard deviation s_b = sqrt(sum_b c(1-c)) / n_b <= 1/(2 sqrt n_b).
    # Each bin's gap must lie within 4 s_b, and the ECE within sum_b n_b/N * 4 s_b.
    rng = np.random.default_rng(1)
    probs = random_probs(rng, 20000, 5, sharpness=1.5)
    labels = sample_labels(rng, probs)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    rb = reliability_bins(conf, correct)
    full = rb.counts > 0
    idx = np.searchsorted(rb.edges[1:-1], conf, side="left")
    var_sum = np.bincount(idx, weights=conf * (1 - conf), minlength=15)[full]
    sigma = np.sqrt(var_sum) / rb.counts[full]
    gaps = np.abs(rb.accuracy[full] - rb.confidence[full])
    assert np.all(gaps <= 4 * sigma)
    bound = float(np.sum(rb.counts[full] / rb.n * 4 * sigma))
    ece = classification_metrics(probs, labels)["ece"]
    assert ece <= bound
    assert bound < 0.05  # the bound itself is tight at this N


def test_ece_detects_overconfidence():
    # The same rows, but the labels come from a flatter distribution: the predictor is overconfident,
    # and its ECE exceeds the sampling bound of the calibrated case several times over.
    rng = np.random.default_rng(2)
    probs = random_probs(rng, 20000, 5, sharpness=1.5)
    flat = np.sqrt(probs)
    flat /= flat.sum(axis=1, keepdims=True)
    labels = sample_labels(rng, flat)
    m = classification_metrics(probs, labels)
    assert m["ece"] > 0.1
    assert m["mean_confidence"] > m["accuracy"] + 0.1


# ---------------------------------------------------------------- NLL, Brier, accuracy


def test_nll_matches_torch_nll_loss():
    rng = np.random.default_rng(3)
    probs = random_probs(rng, 500, 11)
    labels = rng.integers(0, 11, 500)
    expected = F.nll_loss(torch.log(torch.from_numpy(probs)), torch.from_numpy(labels)).item()
    assert classification_metrics(probs, labels)["nll"] == pytest.approx(expected, rel=1e-12)


def test_brier_is_twice_sklearn_binary_brier():
    rng = np.random.default_rng(4)
    p1 = rng.random(400)
    probs = np.stack([1 - p1, p1], axis=1)
    labels = (rng.random(400) < 0.5).astype(int)
    binary = brier_score_loss(labels, p1)  # mean (p1 - y)^2, the binary convention
    assert classification_metrics(probs, labels)["brier"] == pytest.approx(2 * binary, rel=1e-12)


def test_brier_multiclass_matches_sklearn_unscaled():
    rng = np.random.default_rng(5)
    probs = random_probs(rng, 300, 6)
    labels = rng.integers(0, 6, 300)
    expected = brier_score_loss(labels, probs, labels=np.arange(6), scale_by_half=False)
    assert classification_metrics(probs, labels)["brier"] == pytest.approx(expected, rel=1e-12)


def test_accuracy_and_mean_confidence_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
    m = classification_metrics(probs, [0, 2, 1, 0])
    assert m["accuracy"] == 0.5 and m["n"] == 4
    assert m["mean_confidence"] == pytest.approx((0.7 + 0.6 + 0.5 + 0.6) / 4)
    assert all(type(m[k]) is float for k in ("accuracy", "nll", "brier", "ece", "mean_confidence"))
    assert type(m["n"]) is int


def test_accepts_torch_tensors_with_gradients():
    rng = np.random.default_rng(6)
    probs = random_probs(rng, 64, 4).astype(np.float32)
    labels = rng.integers(0, 4, 64)
    t = torch.tensor(probs, requires_grad=True)
    got = classification_metrics(t, torch.from_numpy(labels))
    want = classification_metrics(probs, labels)
    assert got == pytest.approx(want)


def test_float32_softmax_rows_pass_the_sum_check():
    logits = torch.randn(256, 11, generator=torch.Generator().manual_seed(0)) * 5
    m = classification_metrics(torch.softmax(logits, dim=1), torch.zeros(256, dtype=torch.long))
    assert m["n"] == 256


# ---------------------------------------------------------------- group accuracy


def test_group_accuracy_averages_probabilities_within_groups():
    # gesture "a": clip votes 0, 0, 1 but the mean favours 1; gesture "b": one clip, right.
    probs = np.array([[0.55, 0.45], [0.55, 0.45], [0.0, 1.0], [0.9, 0.1]])
    labels = np.array([1, 1, 1, 0])
    groups = np.array(["a", "a", "a", "b"])
    assert group_accuracy(probs, labels, groups) == 1.0
    assert classification_metrics(probs, labels)["accuracy"] == 0.5  # per clip: only 2 of 4


def test_group_accuracy_counts_groups_not_items():
    probs = np.array([[0.9, 0.1]] * 5 + [[0.2, 0.8]])
    labels = np.array([0] * 5 + [0])
    groups = np.array([7] * 5 + [8])
    assert group_accuracy(probs, labels, groups) == 0.5


def test_group_accuracy_rejects_mixed_labels():
    with pytest.raises(ValueError, match=r"group 3 mixes labels \[0, 1\]"):
        group_accuracy(np.full((3, 2), 0.5), [0, 1, 0], [3, 3, 4])


def test_group_accuracy_rejects_wrong_length_groups():
    with pytest.raises(ValueError, match="groups must have shape"):
        group_accuracy(np.full((3, 2), 0.5), [0, 1, 0], [1, 2])


# ---------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "probs, labels, message",
    [
        (np.zeros((0, 3)), np.zeros(0, int), "empty"),
        (np.full(3, 1 / 3), [0], "two-dimensional"),
        (np.array([[0.5, np.nan]]), [0], "non-finite"),
        (np.array([[1.5, -0.5]]), [0], "negative"),
        (np.array([[0.5, 0.6]]), [0], "sum to 1"),
        (np.array([[2.0, 1.0]]), [0], "logits"),
        (np.array([[0.5, 0.5]]), [2], r"\[0, 2\)"),
        (np.array([[0.5, 0.5]]), [-1], r"\[0, 2\)"),
        (np.array([[0.5, 0.5]]), [0.5], "integer"),
        (np.array([[0.5, 0.5]]), [0, 1], "2 entries but there are 1"),
        (np.array([[0.5, 0.5]]), [[0]], "one-dimensional"),
    ],
)
def test_bad_probabilities_or_labels_raise_clear_errors(probs, labels, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(probs, labels)


def test_check_probs_accepts_integral_float_labels():
    _, labels = check_probs(np.array([[0.5, 0.5], [0.2, 0.8]]), np.array([1.0, 0.0]))
    assert labels.dtype == np.int64 and labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "conf, correct, message",
    [
        ([], [], "empty"),
        ([0.5, 1.2], [1, 0], r"\[0, 1\]"),
        ([0.5, np.inf], [1, 0], "finite"),
        ([0.5, 0.7], [1], "shape"),
        ([0.5, 0.7], [1, 2], "0/1"),
    ],
)
def test_bad_confidence_raises_clear_errors(conf, correct, message):
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(np.asarray(conf, dtype=float), np.asarray(correct))


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True])
def test_bad_bin_count_raises(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        reliability_bins([0.5], [True], n_bins=n_bins)


# ---------------------------------------------------------------- figures


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_plot_reliability_writes_a_png_atomically(tmp_path):
    rng = np.random.default_rng(7)
    probs = random_probs(rng, 300, 11)
    labels = sample_labels(rng, probs)
    flat = np.full_like(probs, 1 / 11)
    out = tmp_path / "deep" / "er" / "reliability.png"
    written = plot_reliability(
        {"MC 16": (probs, labels), "1 sample": (torch.from_numpy(probs), labels), "uniform": (flat, labels)},
        out,
        title="test",
    )
    assert written == out
    assert_png(out)
    before = out.read_bytes()
    plot_reliability({"MC 16": (probs, labels)}, out)  # replaces the previous figure
    assert_png(out)
    assert out.read_bytes() != before


def test_plot_reliability_rejects_bad_input(tmp_path):
    out = tmp_path / "r.png"
    with pytest.raises(ValueError, match="non-empty dict"):
        plot_reliability({}, out)
    with pytest.raises(ValueError, match=r"results\['bad'\]: .*sum to 1"):
        plot_reliability({"bad": (np.array([[0.9, 0.9]]), [0])}, out)
    with pytest.raises(ValueError, match="pair"):
        plot_reliability({"bad": np.array([[0.5, 0.5]])}, out)
    assert not out.exists() and not list(tmp_path.iterdir())


def curve_records():
    return [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_accuracy": 0.5 + 0.05 * e,
            "val_loss": None if e == 2 else 2.2 / e,
            "val_accuracy": None if e == 2 else 0.45 + 0.05 * e,
            "lr": 0.01 * 0.5**e,
            "seconds": 3.0,
            "samples_per_s": 100.0,
        }
        for e in range(1, 6)
    ]


def test_plot_curves_from_records_and_from_jsonl(tmp_path):
    records = curve_records()
    a = plot_curves(records, tmp_path / "a" / "curves.png")
    assert_png(a)
    jsonl = tmp_path / "metrics.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    b = plot_curves(jsonl, tmp_path / "b" / "curves.png")
    assert_png(b)


def test_plot_curves_without_validation_values(tmp_path):
    records = [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": 0.1 * e, "lr": 0.1} for e in range(1, 4)]
    assert_png(plot_curves(records, tmp_path / "c.png"))


def test_plot_curves_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no training records"):
        plot_curves([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="'epoch' must be a finite number"):
        plot_curves([{"train_loss": 1.0}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="'train_loss' must be a number or null"):
        plot_curves([{"epoch": 1, "train_loss": "high"}], tmp_path / "x.png")
    bad = tmp_path / "metrics.jsonl"
    bad.write_text(json.dumps(curve_records()[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 2: not valid JSON"):
        plot_curves(bad, tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="nsm train"):
        plot_curves(tmp_path / "missing.jsonl", tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


# ---------------------------------------------------------------- temperature


def independent_tempered_nll(probs, labels, temperature):
    """NLL of softmax(log p / T), written with scipy's log_softmax (no code shared with pipelines.calibration)."""
    from scipy.special import log_softmax

    return -log_softmax(np.log(np.maximum(probs, NLL_EPS)) / temperature, axis=1)[np.arange(len(labels)), labels].mean()


@pytest.mark.parametrize("true_temperature", [0.4, 1.0, 2.5])
def test_fit_temperature_finds_the_minimum_an_independent_optimizer_finds(true_temperature):
    """Labels drawn from p^(1/T) normalized: the predictions p are miscalibrated by T; the fitted temperature is
    the minimizer that scipy's bounded scalar search finds on an independently written NLL."""
    from scipy.optimize import minimize_scalar

    rng = np.random.default_rng(3)
    probs = random_probs(rng, 3000, 6, sharpness=1.5)
    truth = np.exp(np.log(probs) / true_temperature)
    labels = sample_labels(rng, truth / truth.sum(axis=1, keepdims=True))
    t = fit_temperature(probs, labels)
    ref = minimize_scalar(
        lambda log_t: independent_tempered_nll(probs, labels, np.exp(log_t)),
        bounds=(np.log(0.01), np.log(100)),
        method="bounded",
        options={"xatol": 1e-9},
    )
    assert t == pytest.approx(np.exp(ref.x), rel=1e-4)
    assert tempered_nll(probs, labels, t) == pytest.approx(independent_tempered_nll(probs, labels, t), rel=1e-9)
    assert tempered_nll(probs, labels, t) <= tempered_nll(probs, labels, 1.0) + 1e-12
    # the sampling error of a 3000-item fit is a few percent of T; 20 % is far outside it
    assert t == pytest.approx(true_temperature, rel=0.2)


@pytest.mark.parametrize(
    "record", [{"temperature": -1.0}, {"temperature": float("nan")}, {"temperature": "0.5"}, {"t": 1.0}, [0.5], True]
)
def test_a_damaged_temperature_record_is_an_error_naming_the_checkpoint(record):
    from pipelines.temperature import checkpoint_temperature

    with pytest.raises(ValueError, match=r"ck\.pt: its temperature record is not a temperature in \(0, 100\]"):
        checkpoint_temperature({"temperature": record}, "ck.pt")
    assert checkpoint_temperature({}, "ck.pt") == 1.0
    assert checkpoint_temperature({"temperature": {"temperature": 2}}, "ck.pt") == 2.0
