"""``nsm evaluate`` on a ``tiny`` network trained for a few epochs on the session's simulated gesture set
(the conftest fixtures ``gestures`` and ``tiny_run``: 3 training users, 1 test user, 11 classes)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipelines import cli
from pipelines import config as configs
from pipelines import data as bridge
from pipelines.checkpoint import load_checkpoint

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
N_CLASSES = 11
CHANCE = 1 / N_CLASSES


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def evaluate(gestures, run, out, *extra) -> dict:
    data, cache = gestures
    assert (
        cli.main(
            [
                "evaluate",
                "--checkpoint",
                str(run / "best.pt"),
                "--data",
                str(data),
                "--cache",
                str(cache),
                "--out",
                str(out),
                "--device",
                "cpu",
                "--quiet",
                *extra,
            ]
        )
        == 0
    )
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def evaluated(gestures, tiny_run, tmp_path_factory):
    """(output folder, metrics.json) of ``nsm evaluate --checkpoint RUN/best.pt`` with the run's defaults."""
    out = tmp_path_factory.mktemp("evaluated")
    return out, evaluate(gestures, tiny_run, out)


@pytest.fixture(scope="module")
def clip_labels(gestures):
    data, cache = gestures
    return np.asarray(bridge.test_set(configs.load_config("tiny").data, data, cache, progress=False).labels)


def test_evaluate_writes_metrics_and_reliability_figure(evaluated, clip_labels):
    out, m = evaluated
    assert (out / "reliability.png").read_bytes()[:8] == PNG_MAGIC
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    for key in (
        "accuracy",
        "nll",
        "brier",
        "ece",
        "mean_samples",
        "gesture_accuracy",
        "single_sample",
        "deterministic",
        "reliability",
    ):
        assert key in m, key
    assert m["predictor"] == "MC 16" and m["mean_samples"] == 16.0  # tiny's eval.samples
    # Monte Carlo at the temperature nsm train fitted, and the same samples at temperature 1
    assert m["temperature"] == load_checkpoint(Path(m["checkpoint"])).state["temperature"]["temperature"] != 1.0
    raw = m["at_temperature_1"]
    assert raw["accuracy"] == m["accuracy"] and raw["nll"] != m["nll"] and raw["n"] == m["n"]
    assert m["n"] == len(clip_labels) and m["classes"] == N_CLASSES and m["gestures"] == 11
    assert (m["model"], m["neuron"], m["split"]) == ("nmnist_cnn", "bnsm", "test")
    for block in (m, m["single_sample"], m["deterministic"]):
        assert 0 <= block["accuracy"] <= 1 and block["nll"] > 0 and 0 <= block["brier"] <= 2
        assert 0 <= block["ece"] <= 1 and block["n"] == m["n"]
    assert 0 <= m["gesture_accuracy"] <= 1
    # the reliability bins hold the same predictions: their hits add up to the accuracy
    rel = m["reliability"]
    hits = sum(c * a for c, a in zip(rel["counts"], rel["accuracy"]) if c)
    assert sum(rel["counts"]) == m["n"] and hits / m["n"] == pytest.approx(m["accuracy"], abs=1e-12)


def test_cli_prints_the_summary_table(gestures, tiny_run, tmp_path, capsys):
    evaluate(gestures, tiny_run, tmp_path)
    printed = capsys.readouterr().out
    t = load_checkpoint(tiny_run / "best.pt").state["temperature"]["temperature"]
    assert f"| MC 16, T {t:.3g} |" in printed and "| MC 16, T 1 (the same samples) |" in printed
    assert "| 1 sample |" in printed and "| deterministic |" in printed
    assert "per-gesture accuracy (11 gestures" in printed and "chance is 9.1%" in printed


def test_adaptive_sampling_uses_between_min_and_max_samples(gestures, tiny_run, tmp_path):
    cfg = configs.load_config("tiny")
    m = evaluate(gestures, tiny_run, tmp_path, "--adaptive", "--threshold", "0.6", "--max-samples", "24")
    assert m["predictor"] == "MC adaptive (0.6)"
    assert cfg.eval.min_samples <= m["mean_samples"] <= 24
    # neither bound everywhere: confident clips stopped early, doubtful ones went on sampling
    assert cfg.eval.min_samples < m["mean_samples"] < 24


def test_a_max_samples_below_the_runs_minimum_lowers_the_minimum(gestures, tiny_run, tmp_path):
    assert configs.load_config("tiny").eval.min_samples > 2
    m = evaluate(gestures, tiny_run, tmp_path, "--adaptive", "--max-samples", "2")
    assert 1 <= m["mean_samples"] <= 2


def test_ece_equals_a_recomputation_from_the_saved_bins(evaluated):
    _, m = evaluated
    rel = m["reliability"]
    edges, counts = np.asarray(rel["edges"]), np.asarray(rel["counts"])
    np.testing.assert_allclose(edges, np.linspace(0, 1, 16))
    n = counts.sum()
    ece = sum(c / n * abs(a - conf) for c, a, conf in zip(counts, rel["accuracy"], rel["confidence"]) if c)
    assert m["ece"] == pytest.approx(ece, abs=1e-12)
    # each non-empty bin's mean confidence lies inside its own bin
    for lo, hi, c, conf in zip(edges[:-1], edges[1:], counts, rel["confidence"]):
        assert (conf is None) == (c == 0)
        if c:
            assert lo - 1e-12 <= conf <= hi + 1e-12


def test_evaluation_repeats_exactly_with_the_same_seed(gestures, tiny_run, evaluated, tmp_path):
    _, first = evaluated  # --seed 0, the default
    again = evaluate(gestures, tiny_run, tmp_path / "again", "--seed", "0")
    assert again == first
    other = evaluate(gestures, tiny_run, tmp_path / "other", "--seed", "1")
    assert other["nll"] != first["nll"], "the seed does not reach the sampling noise"
    assert other["deterministic"] == first["deterministic"]  # the mean-field network has no noise


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_lower_precision_evaluation_names_its_precision_and_keeps_the_accuracy(
    gestures, tiny_run, evaluated, tmp_path, precision
):
    """``--precision bfloat16`` or ``int8``: the predictor says so; the products' rounding (of the weights, in int8)
    changes a few draws, not what the network predicts: MC accuracy within 4 points of float32's on these clips (they
    differ by their draws; the spread between two noise seeds in float32 is about 2 points here), the deterministic
    network's equal (it is evaluated in float32)."""
    _, first = evaluated
    low = evaluate(gestures, tiny_run, tmp_path, "--precision", precision)
    assert low["predictor"] == f"{first['predictor']}, {precision}"
    assert abs(low["accuracy"] - first["accuracy"]) <= 0.04
    assert low["deterministic"] == first["deterministic"]


def test_trained_tiny_model_is_well_above_chance(evaluated, clip_labels):
    """Bar: accuracy on the test user's clips > 3 x chance (27.3 % of 11 classes).

    It cannot be passed by luck: a predictor that ignores its input is right on each clip with probability
    1/11, and on the N >= 150 test clips P(accuracy > 3/11) is a binomial tail below 1e-8; a constant
    prediction scores the share of its class, which is checked to stay below the bar. A network that learned
    (four epochs here) reaches 39-49 % across training seeds 0-4 on this set, clear of the bar.
    """
    _, m = evaluated
    n = len(clip_labels)
    assert n >= 150
    assert np.bincount(clip_labels, minlength=N_CLASSES).max() / n < 3 * CHANCE
    assert m["accuracy"] > 3 * CHANCE, f"MC accuracy {m['accuracy']:.1%} on {n} test clips"
    assert m["deterministic"]["accuracy"] > 3 * CHANCE


def _checkpoint(path: Path, preset: str, in_channels: int, input_size, num_classes: int) -> Path:
    """An untrained checkpoint whose run configuration is ``preset``'s and whose network takes ``in_channels`` x
    ``input_size`` and predicts ``num_classes``, saved as ``nsm train`` saves one."""
    import models
    from pipelines.checkpoint import save_checkpoint

    cfg = configs.load_config(preset)
    model = models.create_model(
        cfg.model.name, in_channels=in_channels, input_size=input_size, num_classes=num_classes, **cfg.model.options
    )
    classes = [str(i) for i in range(num_classes)]
    save_checkpoint(path, model, classes=classes, frame_spec=cfg.data.frame_spec().to_dict(), config=cfg.to_dict())
    return path


@pytest.mark.parametrize(
    "network, differs",
    [
        (
            (10, (34, 34), 10),
            [
                "input channels 10 in the network, 6 in the data",
                "input size 34x34 in the network, 32x32 in the data",
                "number of classes 10 in the network, 11 in the data",
            ],
        ),
        ((2, (32, 32), 11), ["input channels 2 in the network, 6 in the data"]),
        ((6, (16, 16), 11), ["input size 16x16 in the network, 32x32 in the data"]),
        ((6, (32, 32), 4), ["number of classes 4 in the network, 11 in the data"]),
    ],
    ids=["nmnist-network", "channels", "size", "classes"],
)
def test_a_checkpoint_that_does_not_fit_the_data_is_one_line_before_anything_is_binned(
    gestures, tmp_path, capsys, network, differs
):
    """A network built for other items (an N-MNIST network under a gesture run's configuration, or one size off)
    on the gesture set: one line naming the checkpoint, the data folder and each difference, no traceback from
    the first convolution; nothing binned, nothing written."""
    data, _ = gestures
    ck = _checkpoint(tmp_path / "ck.pt", "tiny", *network)
    cache = tmp_path / "cache"
    argv = ["evaluate", "--checkpoint", str(ck), "--data", str(data), "--cache", str(cache), "--device", "cpu"]
    assert cli.main([*argv, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"nsm evaluate: error: {ck}: its network does not fit the test items of {data}"
    ), err
    for what in differs:
        assert what in err[0]
    assert err[0].count(" in the network, ") == len(differs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]  # no cache built, no metrics written


def test_an_evaluation_output_that_is_the_checkpoint_is_refused(gestures, tmp_path, capsys):
    """``--out`` whose metrics.json or reliability.png is the checkpoint itself (a hard link here) or a folder."""
    data, cache = gestures
    ck = _checkpoint(tmp_path / "ck.pt", "tiny", 6, (32, 32), 11)
    saved = ck.read_bytes()
    (tmp_path / "out").mkdir()
    os.link(ck, tmp_path / "out" / "reliability.png")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "metrics.json").mkdir()
    for out, why in (
        ("out", f"out/reliability.png: it is the same file as --checkpoint {ck}"),
        ("other", "other/metrics.json: Is a directory"),
    ):
        argv = ["evaluate", "--checkpoint", str(ck), "--data", str(data), "--cache", str(cache), "--quiet"]
        assert cli.main([*argv, "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("nsm evaluate: error: could not write ") and why in err[0], err
    assert ck.read_bytes() == saved and (tmp_path / "out" / "reliability.png").read_bytes() == saved
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["reliability.png"]
