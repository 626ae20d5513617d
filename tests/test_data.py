"""The data bridge (``pipelines.data``) with the paper presets' protocol options: the frame cap and a single
polarity decide what every item holds and the input the model is built for. Simulated digits, seconds."""

from __future__ import annotations

import numpy as np
import pytest

import events
from pipelines import config as configs
from pipelines.data import load_data


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    return events.simulate_digits(root / "data", seed=0, per_class=1, test_per_class=1, progress=False), root / "cache"


def test_frame_cap_and_one_polarity_size_every_item_and_the_model_input(digits):
    data, cache = digits
    full = load_data(configs.load_config("nmnist-cnn").data, data, cache, progress=False)
    assert (full.frame_spec.polarity, full.in_channels, full.input_size) == ("on", 10, (34, 34))
    capped = load_data(configs.load_config("nmnist-cnn", ["data.max_frames=4"]).data, data, cache, progress=False)
    assert capped.in_channels == 4
    for whole, cut in ((full.train, capped.train), (full.test, capped.test)):
        assert len(cut) == len(whole) > 0
        for i in (0, len(cut) - 1):
            frames, label = cut[i]
            assert tuple(frames.shape) == (4, 1, 34, 34) and label == whole[i][1]
            np.testing.assert_array_equal(frames.numpy(), whole[i][0].numpy()[:4])
