"""The event-camera simulator (events.simulate) and the synthetic data sets it writes.

Statistical checks fix their seeds and state their tolerance from the sampling error.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from events import io
from events.datasets import NMNIST, DVSGesture
from events.simulate import EventCameraModel, simulate_digits, simulate_gestures
from events.simulate.body import GESTURE_CLASSES, LIGHTINGS
from events.types import EVENT_DTYPE


def _per_pixel_sorted(ev: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel index and time, ordered by pixel then time."""
    pix = ev["y"].astype(np.int64) * width + ev["x"]
    order = np.lexsort((ev["t"], pix))
    return pix[order], ev["t"][order]


# --------------------------------------------------------------------------------------------
# the camera model
# --------------------------------------------------------------------------------------------


def test_static_scene_gives_only_background_events_at_the_configured_rate():
    w, h, rate, seconds = 64, 64, 2.0, 2.0
    cam = EventCameraModel(w, h, background_rate_hz=rate, shot_noise_rate_hz=0.0, seed=3)
    ev = cam.simulate(lambda t: np.full((len(t), h, w), 0.5), duration_us=int(seconds * 1e6), step_us=1000)
    expected = w * h * rate * seconds  # 16384; Poisson sd = 128
    assert abs(len(ev) - expected) < 4 * np.sqrt(expected)
    assert np.all(ev["p"] == 1)  # background activity is ON (junction leak)
    # spread over the pixels as a Poisson process: per-pixel counts have variance ~ mean
    counts = np.bincount(ev["y"].astype(np.int64) * w + ev["x"], minlength=w * h)
    assert 0.8 < counts.var() / counts.mean() < 1.2  # sd of the ratio ~ sqrt(2/4096) = 0.02
    # without noise, a static scene gives nothing at all
    quiet = EventCameraModel(w, h, background_rate_hz=0.0, shot_noise_rate_hz=0.0, seed=3)
    assert len(quiet.simulate(lambda t: np.full((len(t), h, w), 0.5), duration_us=500_000)) == 0


def test_shot_noise_scales_with_darkness_and_has_both_polarities():
    w, h, rate, seconds = 64, 32, 3.0, 2.0
    frame = np.zeros((h, w))
    frame[:, w // 2 :] = 1.0  # left half black (full shot-noise rate), right half white (none)
    cam = EventCameraModel(w, h, background_rate_hz=0.0, shot_noise_rate_hz=rate, seed=5)
    ev = cam.simulate(lambda t: np.broadcast_to(frame, (len(t), h, w)), duration_us=int(seconds * 1e6))
    expected = (w // 2) * h * rate * seconds  # 6144 in the black half; sd 78
    assert abs(len(ev) - expected) < 4 * np.sqrt(expected)
    assert np.all(ev["x"] < w // 2)
    assert abs(ev["p"].mean() - 0.5) < 4 * 0.5 / np.sqrt(len(ev))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_brightness_step_of_k_thresholds_gives_k_events_per_pixel(k):
    w, h, c = 40, 30, 0.2
    exact = EventCameraModel(
        w,
        h,
        contrast_threshold=c,
        threshold_mismatch=0.0,
        refractory_us=0,
        background_rate_hz=0.0,
        shot_noise_rate_hz=0.0,
        seed=0,
    )
    f0 = np.full((h, w), 0.3)
    f1 = (f0 + exact.eps) * np.exp((k + 0.5) * c) - exact.eps  # log step of (k + 1/2) thresholds
    up = exact.simulate(np.stack([f0, f1]), [0, 1000])
    assert np.all(up["p"] == 1)
    assert np.all(np.bincount(up["y"].astype(np.int64) * w + up["x"], minlength=w * h) == k)
    # timestamps are interpolated within the step: crossing j at j / (k + 1/2) of it
    want = np.floor(1000 * np.arange(1, k + 1) / (k + 0.5))
    _, t = _per_pixel_sorted(up, w)
    assert np.all(np.abs(t.reshape(w * h, k) - want) <= 1)
    down = exact.simulate(np.stack([f1, f0]), [0, 1000])
    assert len(down) == k * w * h and np.all(down["p"] == 0)
    # with threshold mismatch each pixel fires floor(step / its own threshold) times: about k
    cam = EventCameraModel(
        w,
        h,
        contrast_threshold=c,
        threshold_mismatch=0.03,
        refractory_us=0,
        background_rate_hz=0.0,
        shot_noise_rate_hz=0.0,
        seed=1,
    )
    ev = cam.simulate(np.stack([f0, f1]), [0, 1000])
    counts = np.bincount(ev["y"].astype(np.int64) * w + ev["x"], minlength=w * h)
    step = np.log(f1 + cam.eps) - np.log(f0 + cam.eps)
    assert np.array_equal(counts, np.floor(step / cam.on_thresholds).astype(np.int64).ravel())
    assert abs(counts.mean() - k) < 0.25 * k
    assert np.all(ev["p"] == 1)


def test_refractory_period_is_respected():
    w, h, refractory = 32, 24, 700
    rng = np.random.default_rng(0)
    frames = rng.uniform(0.05, 1.0, (400, h, w))  # violent flicker: every pixel wants to fire often
    cam = EventCameraModel(w, h, refractory_us=refractory, background_rate_hz=20.0, shot_noise_rate_hz=20.0, seed=2)
    ev = cam.simulate(frames, np.arange(400) * 250)
    assert len(ev) > 10 * w * h
    pix, t = _per_pixel_sorted(ev, w)
    same = pix[1:] == pix[:-1]
    assert np.diff(t)[same].min() >= refractory
    # and without a refractory period the same scene fires more often than it allows
    free = EventCameraModel(w, h, refractory_us=0, background_rate_hz=20.0, shot_noise_rate_hz=20.0, seed=2)
    pix, t = _per_pixel_sorted(free.simulate(frames, np.arange(400) * 250), w)
    assert np.diff(t)[pix[1:] == pix[:-1]].min() < refractory


def _moving_bar(t_us: np.ndarray, w=48, h=36) -> np.ndarray:
    x = np.arange(w)[None, None, :]
    centre = 5 + 30 * (t_us[:, None, None] / 400_000)
    return np.broadcast_to(0.2 + 0.6 * (np.abs(x - centre) < 4), (len(t_us), h, w)).astype(np.float32)


def test_events_are_sorted_in_bounds_and_deterministic_by_seed():
    kw = dict(background_rate_hz=1.0, shot_noise_rate_hz=1.0)
    a = EventCameraModel(48, 36, seed=7, **kw).simulate(_moving_bar, duration_us=400_000)
    b = EventCameraModel(48, 36, seed=7, **kw).simulate(_moving_bar, duration_us=400_000)
    c = EventCameraModel(48, 36, seed=8, **kw).simulate(_moving_bar, duration_us=400_000)
    assert a.dtype == EVENT_DTYPE and len(a) > 1000
    assert np.all(np.diff(a["t"]) >= 0)
    assert a["x"].min() >= 0 and a["x"].max() < 48 and a["y"].min() >= 0 and a["y"].max() < 36
    assert set(np.unique(a["p"])) == {0, 1}
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_feeding_in_chunks_equals_one_call_and_callable_equals_frames():
    t = np.arange(0, 400_001, 1000)
    frames = _moving_bar(t)
    kw = dict(background_rate_hz=3.0, shot_noise_rate_hz=3.0, seed=4)
    whole = EventCameraModel(48, 36, **kw).simulate(frames, t, chunk_frames=len(t))
    cam = EventCameraModel(48, 36, **kw)
    parts = [cam.feed(frames[a:b], t[a:b]) for a, b in ((0, 1), (1, 50), (50, 51), (51, 333), (333, len(t)))]
    chunked = np.concatenate(parts)
    key = ["t", "y", "x", "p"]
    assert np.array_equal(np.sort(whole, order=key), np.sort(chunked, order=key))
    from_callable = EventCameraModel(48, 36, **kw).simulate(_moving_bar, duration_us=400_000, step_us=1000)
    assert np.array_equal(whole, from_callable)
    # a reset model repeats itself; another noise seed changes only the noise
    again = cam.simulate(frames, t)
    assert np.array_equal(again, whole)
    other = cam.simulate(frames, t, noise_seed=99)
    assert not np.array_equal(other, whole)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="width"):
        EventCameraModel(0, 10)
    with pytest.raises(ValueError, match="refractory_us"):
        EventCameraModel(10, 10, refractory_us=-1)
    with pytest.raises(ValueError, match="contrast_threshold"):
        EventCameraModel(10, 10, contrast_threshold=0.0)
    cam = EventCameraModel(10, 8, seed=0)
    with pytest.raises(ValueError, match="shape"):
        cam.feed(np.zeros((2, 8, 9)), [0, 1])
    with pytest.raises(ValueError, match="increase"):
        cam.feed(np.zeros((2, 8, 10)), [5, 5])
    cam.feed(np.full((2, 8, 10), 0.5), [0, 1000])
    with pytest.raises(ValueError, match="increase"):
        cam.feed(np.full((1, 8, 10), 0.5), [1000])
    bad = np.full((3, 8, 10), 0.5)
    bad[2, 4, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cam.feed(bad, [2000, 3000, 4000])
    # the model was reset: the next frame only sets the references again
    assert len(cam.feed(np.full((1, 8, 10), 0.9), [0])) == 0


# --------------------------------------------------------------------------------------------
# synthetic data sets
# --------------------------------------------------------------------------------------------

GESTURE_KW = dict(users=4, per_class=1, gesture_s=(0.8, 1.0), progress=False)
DIGIT_KW = dict(per_class=3, progress=False)


@pytest.fixture(scope="module")
def gestures(tmp_path_factory) -> Path:
    return simulate_gestures(tmp_path_factory.mktemp("gestures"), seed=0, **GESTURE_KW)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    return simulate_digits(tmp_path_factory.mktemp("digits"), seed=0, **DIGIT_KW)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    kw = dict(users=2, per_class=1, lightings=["lab"], gesture_s=(0.6, 0.7), progress=False)
    g = [_tree(simulate_gestures(tmp_path / f"g{i}", seed=s, **kw)) for i, s in enumerate((5, 5, 6))]
    assert g[0] == g[1]
    assert g[0].keys() == g[2].keys()
    assert all(g[0][n] != g[2][n] for n in g[0] if n.endswith((".aedat", ".csv")))
    kw = dict(per_class=1, test_per_class=1, progress=False)
    d = [_tree(simulate_digits(tmp_path / f"d{i}", seed=s, **kw)) for i, s in enumerate((5, 5, 6))]
    assert d[0] == d[1]
    assert d[0].keys() == d[2].keys()
    assert all(d[0][n] != d[2][n] for n in d[0] if n.endswith(".bin"))


def test_gesture_layout_trials_and_metadata(gestures):
    aedat = sorted(p.name for p in gestures.glob("*.aedat"))
    assert aedat == ["user01_fluorescent.aedat", "user02_fluorescent_led.aedat", "user03_lab.aedat", "user04_led.aedat"]
    for name in aedat:
        assert (gestures / name.replace(".aedat", "_labels.csv")).is_file()
    train = (gestures / "trials_to_train.txt").read_text().split()
    test = (gestures / "trials_to_test.txt").read_text().split()
    assert sorted(train + test) == aedat and not set(train) & set(test)
    assert test == ["user04_led.aedat"]  # the last fifth of the users (at least one)
    meta = json.loads((gestures / "simulation.json").read_text())
    assert meta["users"] == 4 and meta["per_class"] == 1 and meta["seed"] == 0
    assert meta["classes"] == list(GESTURE_CLASSES)
    assert (gestures / "README.txt").read_text().startswith("Synthetic DVS Gesture")
    assert not [p for p in gestures.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_gesture_recordings_are_readable_sorted_in_bounds_with_valid_labels(gestures):
    for path in sorted(gestures.glob("*.aedat")):
        rec = io.read(path)
        ev = rec.events
        assert tuple(rec.sensor_size)[:2] == (128, 128)
        assert np.all(np.diff(ev["t"]) >= 0)
        assert ev["x"].min() >= 0 and ev["x"].max() < 128 and ev["y"].min() >= 0 and ev["y"].max() < 128
        assert set(np.unique(ev["p"])) == {0, 1}
        lines = path.with_name(path.stem + "_labels.csv").read_text().splitlines()
        assert lines[0] == "class,startTime_usec,endTime_usec"
        rows = np.array([[int(v) for v in line.split(",")] for line in lines[1:]])
        assert sorted(rows[:, 0]) == list(range(1, 12))  # per_class=1: every class once
        assert np.all(rows[:, 1] < rows[:, 2])
        assert rows[0, 1] > ev["t"][0] and rows[-1, 2] < ev["t"][-1]  # inside the recording
        assert np.all(rows[1:, 1] >= rows[:-1, 2])  # in time order, no overlap
        # moving arms: 20k-150k events a second of gesture (real DVS Gesture: ~100k/s)
        in_gesture = sum(np.count_nonzero((ev["t"] >= s) & (ev["t"] < e)) for _, s, e in rows)
        rate = in_gesture / ((rows[:, 2] - rows[:, 1]).sum() * 1e-6)
        assert 20_000 < rate < 150_000
        # rests between gestures hold only sensor noise, at the lighting's rates
        lighting = LIGHTINGS[path.stem.split("_", 1)[1]]
        gaps = [(e + 20_000, s - 20_000) for e, s in zip(rows[:-1, 2], rows[1:, 1])]
        n_gap = sum(np.count_nonzero((ev["t"] >= a) & (ev["t"] < b)) for a, b in gaps)
        gap_rate = n_gap / (sum(b - a for a, b in gaps) * 1e-6) / (128 * 128)  # per pixel, Hz
        bg, shot = lighting["background_rate_hz"], lighting["shot_noise_rate_hz"]
        assert 0.8 * bg < gap_rate < 1.2 * (bg + shot)


def _gesture_events(ds: DVSGesture) -> dict[tuple[int, str], np.ndarray]:
    out = {}
    for i in range(len(ds)):
        ev, label = ds[i]
        out[ds.sample_info(i)["user"], ds.classes[label]] = ev
    return out


def _rotation(ev: np.ndarray, bins: int = 40) -> float:
    """Sum of cross products of the event centroid's successive positions (image coordinates,
    y down): positive for clockwise motion as the camera sees it."""
    edges = np.searchsorted(ev["t"], np.linspace(ev["t"][0], ev["t"][-1], bins + 1))
    c = np.array([[ev["x"][a:b].mean(), ev["y"][a:b].mean()] for a, b in zip(edges[:-1], edges[1:]) if b > a])
    c -= c.mean(axis=0)
    return float(np.sum(c[:-1, 0] * c[1:, 1] - c[:-1, 1] * c[1:, 0]))


def test_gesture_dataset_loads_and_classes_differ_as_described(gestures):
    train, test = DVSGesture(gestures, train=True), DVSGesture(gestures, train=False)
    assert (len(train), len(test)) == (33, 11)
    assert sorted(test[i][1] for i in range(len(test))) == list(range(11))
    samples = {**_gesture_events(train), **_gesture_events(test)}
    for user in range(1, 5):
        # left/right variants differ by side (the person faces the camera: right hand on the image's left)
        for right, left in (
            ("right_hand_wave", "left_hand_wave"),
            ("right_arm_clockwise", "left_arm_clockwise"),
            ("right_arm_counter_clockwise", "left_arm_counter_clockwise"),
        ):
            assert samples[user, right]["x"].mean() + 10 < samples[user, left]["x"].mean()
        # clockwise / counter-clockwise differ by the direction of rotation
        for side in ("right", "left"):
            assert _rotation(samples[user, f"{side}_arm_clockwise"]) > 0
            assert _rotation(samples[user, f"{side}_arm_counter_clockwise"]) < 0
    # users differ in style: the same gesture lands at other positions and event counts
    waves = [samples[u, "hand_clapping"] for u in range(1, 5)]
    assert len({round(float(w["x"].mean())) for w in waves}) > 1
    assert len({len(w) for w in waves}) == 4


def test_digit_layout_files_and_dataset(digits):
    for split, n in (("Train", 3), ("Test", 1)):  # default test_per_class = ceil(3 / 6) = 1
        for d in range(10):
            assert len(list((digits / split / str(d)).glob("*.bin"))) == n
    meta = json.loads((digits / "simulation.json").read_text())
    assert meta["per_class"] == 3 and meta["test_per_class"] == 1 and meta["seed"] == 0
    train, test = NMNIST(digits, train=True), NMNIST(digits, train=False)
    assert (len(train), len(test)) == (30, 10)
    assert sorted(train[i][1] for i in range(len(train))) == sorted(list(range(10)) * 3)
    times = []
    for ds in (train, test):
        for i in range(len(ds)):
            ev, _ = ds[i]
            assert 1500 < len(ev) < 8000  # real N-MNIST samples: a few thousand events
            assert np.all(np.diff(ev["t"]) >= 0) and ev["t"][0] >= 0 and ev["t"][-1] < 320_000
            assert ev["x"].max() < 34 and ev["y"].max() < 34
            assert 0.35 < ev["p"].mean() < 0.65
            times.append(ev["t"])
    # three saccades of ~100 ms: events bunch mid-saccade, and nearly stop at the corners
    hist = np.bincount(np.concatenate(times) // 10_000, minlength=32)
    for mid, corner in ((4, 10), (14, 20), (24, 20)):
        assert hist[mid] > 5 * hist[corner]


def test_dataset_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="per_class"):
        simulate_digits(tmp_path, per_class=0, progress=False)
    with pytest.raises(ValueError, match="lightings"):
        simulate_gestures(tmp_path, lightings=["disco"], progress=False)
    with pytest.raises(ValueError, match="gesture_s"):
        simulate_gestures(tmp_path, gesture_s=(0.2, 0.3), progress=False)
    with pytest.raises(ValueError, match="users"):
        simulate_gestures(tmp_path, users=0, progress=False)


def test_rerun_replaces_an_earlier_simulation_and_never_touches_foreign_data(tmp_path):
    kw = dict(test_per_class=0, progress=False)
    simulate_digits(tmp_path / "d", seed=1, per_class=2, **kw)
    simulate_digits(tmp_path / "d", seed=1, per_class=1, **kw)  # smaller: no sample of the first run lingers
    assert len(NMNIST(tmp_path / "d", train=True)) == 10
    assert sorted(p.name for p in (tmp_path / "d" / "Train" / "0").iterdir()) == ["00000.bin"]
    # a folder holding data the simulator did not write is refused, and left as it was
    real = tmp_path / "real"
    (real / "Train" / "3").mkdir(parents=True)
    (real / "Train" / "3" / "00007.bin").write_bytes(b"\x01\x02\x80\x00\x10")
    with pytest.raises(FileExistsError, match="not written by"):
        simulate_digits(real, per_class=1, **kw)
    assert sorted(p.relative_to(real).as_posix() for p in real.rglob("*") if p.is_file()) == ["Train/3/00007.bin"]
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "user01_lab.aedat").write_bytes(b"#!AER-DAT3.1\r\n")
    with pytest.raises(FileExistsError, match="not written by"):
        simulate_gestures(tmp_path / "g", users=1, per_class=1, progress=False)
    assert (tmp_path / "g" / "user01_lab.aedat").read_bytes() == b"#!AER-DAT3.1\r\n"
    # nor is one data set written into another's folder
    with pytest.raises(FileExistsError, match="not written by"):
        simulate_gestures(tmp_path / "d", users=1, per_class=1, progress=False)
