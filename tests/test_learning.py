"""The mission's model learns: allconvnet18 of Bernoulli NSM units, trained from scratch by ``nsm train``, beats
chance on held-out users at every seed tried (the regression test of docs/training-study.md).

Before the data-dependent initialisation and the warm-up epoch, this run stayed at chance: loss ln 11 = 2.40 every
epoch and 8.8 % on the held-out clips (train.init = "none", train.warmup_epochs = 0). With the deterministic warm-up
of sessions 3-7 it learned at seed 0 only (32.9, 9.7 and 8.3 % MC 8 at seeds 0, 1, 2); with the smooth warm-up and
its ramped learning rate, the defaults now, 37.5, 44.9 and 42.1 % (docs/training-study.md, section 9); with the
preset's four-level input code (session 16; the width here stays 0.25) 49.5, 44.4 and 37.5 %.
"""

from __future__ import annotations

import pytest

from pipelines import config as configs
from pipelines.evaluate import evaluate
from pipelines.training import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPOCHS = 6
SEEDS = (0, 1, 2)
CHANCE = 1 / 11
# The test user's clips come from 11 gestures, and the clips of one gesture are strongly correlated, so the
# spread of a network at chance is that of about 11 draws, not of one per clip: sqrt(p (1 - p) / 11) = 8.7
# points. Requiring two such spreads above chance (26.5 %) cannot be met by a network that ignores its input.
SPREAD = (CHANCE * (1 - CHANCE) / 11) ** 0.5
REQUIRED = CHANCE + 2 * SPREAD
MAX_ECE = 0.2  # the Monte Carlo average's calibration bound (test_the_default_recipe_keeps_its_margin_...)


def learned(gestures, root, seed: int, neuron: str = "bnsm", preset: str = "gestures-allconv18") -> dict:
    """``nsm evaluate``'s metrics (8 samples) of ``preset``'s network (allconvnet18 at width 0.25; specknet as the
    Speck preset builds it), 32x32, trained from scratch for 6 epochs of batch 8 on three simulated users (the fourth
    held out) with the preset's recipe and ``neuron`` units."""
    data, cache = gestures
    width = ["model.options.width=0.25"] if preset == "gestures-allconv18" else []
    cfg = configs.load_config(
        preset,
        [
            f"model.neuron={neuron}",
            *width,
            "data.val_fraction=0",
            f"train.epochs={EPOCHS}",
            "train.batch_size=8",
            "train.lr_schedule=step",  # a constant rate: the set-up as measured (docs/training-study.md, section 9)
            "train.lr_step_epochs=100",
            "train.compile=false",  # compiling would take longer than these six short epochs
            "train.device=cpu",
            f"train.seed={seed}",
        ],
    )
    history = train(cfg, data, root / "run", cache_dir=cache, progress=False)
    assert history["epoch"] == EPOCHS
    return evaluate(root / "run" / "best.pt", data, cache_dir=cache, samples=8, progress=False)


@pytest.fixture(scope="module")
def bnsm_runs(gestures, tmp_path_factory) -> dict[int, dict]:
    """The default recipe's bNSM at each of SEEDS (``learned``)."""
    return {seed: learned(gestures, tmp_path_factory.mktemp(f"bnsm{seed}"), seed) for seed in SEEDS}


def test_preset_recipe_is_the_one_measured():
    cfg = configs.load_config("gestures-allconv18")
    assert cfg.model.neuron == "bnsm" and cfg.train.init == "data" and cfg.train.warmup_epochs == 1
    assert cfg.train.warmup_forward == "mean-input" and cfg.train.lr_ramp == "warmup"


@pytest.mark.parametrize("seed", SEEDS)
def test_allconvnet18_of_nsm_units_learns_from_scratch(bnsm_runs, seed):
    """Monte Carlo and the deterministic network both two chance spreads above chance on the held-out user."""
    m = bnsm_runs[seed]
    assert m["accuracy"] >= REQUIRED, m["accuracy"]
    assert m["deterministic"]["accuracy"] >= REQUIRED, m["deterministic"]["accuracy"]


def test_the_default_recipe_keeps_its_margin_over_bn_and_its_calibration(bnsm_runs, gestures, tmp_path):
    """Issue 27's regression test. The noise-free binary network with erf gradients (``bn``), trained the same way,
    stayed near chance here (17.1, 7.9 and 9.7 % at seeds 0-2, docs/training-study.md, section 14; 8.3 % at seed 0
    with the input code of session 16) where the bNSM reached 37.5-49.5 %: the bNSM's mean over three seeds must
    beat bn at seed 0 by two chance spreads (17 points). And its Monte Carlo average must stay calibrated: an ECE of
    at most MAX_ECE at every seed, where it measured 0.087-0.129 (0.097-0.111 with the code). With 6 epochs, no
    validation clips and so no readout fit or temperature, the deterministic network can be the better calibrated
    one here (0.067 against 0.101 at seed 0, section 14), so the bound is absolute,
    about twice the worst measured: a Monte Carlo average as confident as its training clips (about 0.9 at 40 %
    accuracy: an ECE near 0.5) or half as confident as it is right exceeds it."""
    bn = learned(gestures, tmp_path, 0, neuron="bn")
    mean = sum(m["accuracy"] for m in bnsm_runs.values()) / len(bnsm_runs)
    assert mean >= bn["accuracy"] + 2 * SPREAD, (mean, bn["accuracy"])
    for seed, m in bnsm_runs.items():
        assert m["ece"] <= MAX_ECE, (seed, m["ece"])


def test_specknet_on_the_chips_weight_grid_learns_from_scratch(gestures, tmp_path):
    """The Speck preset's network, trained on Speck's 8-bit weight grid (``nsm.grid``), learns too: Monte Carlo
    and the deterministic network (the one the chip runs, its 8-bit export exactly) two chance spreads above chance
    on the held-out user at seed 0. Measured: 46.3 % MC 8 and 49.1 % deterministic (off the grid 47.7 and 45.8 %);
    on the grid from the first step, warm-up included, it stayed at chance (9.3 %), which is why the warm-up epochs
    train off the grid (``pipelines.training.modes.training_mode``)."""
    m = learned(gestures, tmp_path, 0, preset="gestures-speck")
    assert m["accuracy"] >= REQUIRED, m["accuracy"]
    assert m["deterministic"]["accuracy"] >= REQUIRED, m["deterministic"]["accuracy"]
