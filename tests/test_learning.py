"""The mission's model learns: allconvnet18 of Bernoulli NSM units, trained from scratch by ``nsm train``, beats
chance on held-out users at every seed tried (the regression test of docs/training-study.md).

Before the data-dependent initialisation and the warm-up epoch, this run stayed at chance: loss ln 11 = 2.40 every
epoch and 8.8 % on the held-out clips (train.init = "none", train.warmup_epochs = 0). With the deterministic warm-up
of sessions 3-7 it learned at seed 0 only (32.9, 9.7 and 8.3 % MC 8 at seeds 0, 1, 2); with the smooth warm-up and
its ramped learning rate, the defaults now, 37.5, 44.9 and 42.1 % (docs/training-study.md, section 9).
"""

from __future__ import annotations

import pytest

from pipelines import config as configs
from pipelines.evaluate import evaluate
from pipelines.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPOCHS = 6
CHANCE = 1 / 11
# The test user's clips come from 11 gestures, and the clips of one gesture are strongly correlated, so the
# spread of a network at chance is that of about 11 draws, not of one per clip: sqrt(p (1 - p) / 11) = 8.7
# points. Requiring two such spreads above chance (26.5 %) cannot be met by a network that ignores its input.
REQUIRED = CHANCE + 2 * (CHANCE * (1 - CHANCE) / 11) ** 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_allconvnet18_of_nsm_units_learns_from_scratch(gestures, tmp_path, seed):
    """width 0.25 at 32x32, 6 epochs of batch 8 on three simulated users; the fourth user is held out."""
    data, cache = gestures
    cfg = configs.load_config(
        "gestures-allconv18",
        [
            "model.options.width=0.25",
            "data.val_fraction=0",
            f"train.epochs={EPOCHS}",
            "train.batch_size=8",
            "train.lr_schedule=step",  # a constant rate: the set-up as measured (docs/training-study.md, section 9)
            "train.lr_step_epochs=100",
            "train.device=cpu",
            f"train.seed={seed}",
        ],
    )
    assert cfg.model.neuron == "bnsm" and cfg.train.init == "data" and cfg.train.warmup_epochs == 1
    assert cfg.train.warmup_forward == "mean-input" and cfg.train.lr_ramp == "warmup"
    history = train(cfg, data, tmp_path / "run", cache_dir=cache, progress=False)
    assert history["epoch"] == EPOCHS
    m = evaluate(tmp_path / "run" / "best.pt", data, cache_dir=cache, samples=8, progress=False)
    assert m["accuracy"] >= REQUIRED, m["accuracy"]
    assert m["deterministic"]["accuracy"] >= REQUIRED, m["deterministic"]["accuracy"]
