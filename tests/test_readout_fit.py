"""The readout fit after training (``pipelines.training.readout_fit``, ``train.readout_fit``) on the shared tiny run."""

from __future__ import annotations

import shutil

import pytest
import torch

import models
import nsm
from pipelines import config as configs
from pipelines import runs
from pipelines.checkpoint import load_checkpoint
from pipelines.data import load_data
from pipelines.training import fits, readout_fit
from pipelines.training.readout_fit import DRAWS, fit_readout, sampled_features, samples_the_readout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def split(run, gestures):
    """(the run's training items as stored, its validation items)."""
    data, cache = gestures
    cfg = configs.from_dict(load_checkpoint(run / runs.BEST).config)
    splits = load_data(cfg.data, data, cache, augmentation=cfg.train.augment, with_test=False, progress=False)
    return splits.train.without_augmentation(), splits.val


def test_trained_runs_best_checkpoint_holds_the_fit(tiny_run):
    fit = load_checkpoint(tiny_run / runs.BEST).state["readout_fit"]
    assert fit["draws"] == DRAWS and fit["items"] > 0 and fit["val_items"] > 0
    assert fit["loss_after"] < fit["loss_before"]  # L-BFGS from the trained readout lowers its objective
    assert fit["kept"] == (fit["val_nll_after"] < fit["val_nll_before"])


@pytest.mark.parametrize("val_nll_falls", [True, False])
def test_the_fit_changes_only_the_readout_and_only_when_validation_agrees(
    tiny_run, gestures, monkeypatch, val_nll_falls
):
    """From the last epoch as trained: the training loss falls; the readout's weight and bias change, and nothing
    else, exactly when the validation NLL falls too (forced either way by shifting what the check measures)."""
    ck = load_checkpoint(tiny_run / runs.CHECKPOINT)
    before = {k: v.clone() for k, v in ck.model.state_dict().items()}
    measured = readout_fit.monte_carlo_nll
    calls = []

    def shifted(*args):  # the first call measures the trained readout, the second the fitted one
        calls.append(None)
        return measured(*args) + (100.0 if (len(calls) == 1) == val_nll_falls else 0.0)

    monkeypatch.setattr(readout_fit, "monte_carlo_nll", shifted)
    fit = readout_fit.fit_readout(ck.model, *split(tiny_run, gestures), seed=0, progress=False)
    assert len(calls) == 2 and fit.loss_after < fit.loss_before and fit.kept == val_nll_falls
    after = ck.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    readout = len(ck.model) - 1
    assert changed == ({f"{readout}.linear.weight", f"{readout}.linear.bias"} if val_nll_falls else set())


def test_monte_carlo_nll_averages_probabilities_not_logs():
    w, b = torch.eye(2), torch.zeros(2)
    features = torch.tensor([[[5.0, 0.0], [0.0, 5.0]]])  # one item, two draws: sure of class 0, then of class 1
    p0 = torch.softmax(torch.tensor([5.0, 0.0]), 0)[0]
    expected = -torch.log((p0 + (1 - p0)) / 2)  # the average of the two draws' probability of class 0 is 1/2
    assert readout_fit.monte_carlo_nll(w, b, features, torch.tensor([0])) == pytest.approx(float(expected))


def test_features_stay_with_their_items_and_labels(tiny_run, gestures):
    """Units made deterministic: every draw of an item is the same pass, in item order, beside the item's label."""
    model = load_checkpoint(tiny_run / runs.BEST).model
    items = torch.utils.data.Subset(split(tiny_run, gestures)[0], range(70))  # more than one batch
    nsm.set_mode(model, "deterministic")
    features, labels, positions = sampled_features(
        model, items, draws=3, generator=torch.Generator().manual_seed(0), device="cpu", progress=False
    )
    x = torch.stack([items[i][0] for i in range(len(items))])
    with torch.no_grad():
        h = x
        for layer in list(model)[:-1]:
            h = layer(h)
        expected = model[-1].pool(h)
    assert features.shape == (70, 3, expected.shape[1])
    for d in range(3):
        torch.testing.assert_close(features[:, d], expected)
    assert labels.tolist() == [items[i][1] for i in range(len(items))]
    assert positions == model[-1].positions(h)


def test_networks_that_do_not_sample_are_left_alone():
    dcnn = models.create_model("nmnist_cnn", in_channels=1, input_size=(32, 32), num_classes=11, neuron="dcnn")
    bnsm = models.create_model("nmnist_cnn", in_channels=1, input_size=(32, 32), num_classes=11, neuron="bnsm")
    assert not samples_the_readout(dcnn) and samples_the_readout(bnsm)
    with pytest.raises(ValueError, match="units sample"):
        fit_readout(dcnn, [], [], progress=False)
    assert not samples_the_readout(nsm.set_mode(bnsm, "deterministic"))


def test_a_fitted_run_is_not_fitted_again(tiny_run, gestures, tmp_path):
    """What a resumed, finished run does at its end: best.pt already holds a fit, so it stays byte for byte."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    written = (run / runs.BEST).read_bytes()
    train_items, val_items = split(run, gestures)
    fits.fit_best_readout(runs.RunFolder(run), train_items, val_items, 0, torch.device("cpu"), False)
    assert (run / runs.BEST).read_bytes() == written


def test_readout_fit_setting_is_checked():
    with pytest.raises(ValueError, match="train.readout_fit must be one of"):
        configs.load_config("tiny", ["train.readout_fit=mc"])
