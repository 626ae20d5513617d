"""events.frames: identity with tonic.transforms.ToFrame, the extensions (polarity, crop, downsample,
binary, fixed windows, the frame cap, clips), FrameSpec and input checking."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tomli_w
import tomllib

from events.frames import FrameSpec, frames_from_spec, split_clips, to_frames
from events.frames import binning as frame_binning
from events.types import EVENT_DTYPE, EventFormatError, SensorSize

ToFrame = pytest.importorskip("tonic.transforms").ToFrame


def random_events(seed: int, n: int, width: int, height: int, duration_us: int = 100_000, t0: int = 0) -> np.ndarray:
    """Sorted random events; repeated timestamps occur on purpose (edges land on events)."""
    rng = np.random.default_rng(seed)
    ev = np.empty(n, dtype=EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(t0, t0 + duration_us, n) // 7 * 7)
    ev["x"] = rng.integers(0, width, n)
    ev["y"] = rng.integers(0, height, n)
    ev["p"] = rng.integers(0, 2, n)
    return ev


def tonic_frames(ev, sensor, **kw) -> np.ndarray:
    return ToFrame(sensor_size=(sensor[0], sensor[1], 2), **kw)(ev.copy())


SENSORS = [(34, 34), (128, 128), (40, 23)]
SEEDS = [0, 1, 2]


def assert_same(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.astype(np.int64), theirs.astype(np.int64))


# ---------------------------------------------------------------- identity with tonic


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sensor", SENSORS)
@pytest.mark.parametrize(
    "window,overlap,incomplete", [(10_000, 0, False), (7_000, 0, True), (10_000, 2_500, False), (3_000, 1_000, True)]
)
def test_time_window_identical_to_tonic(seed, sensor, window, overlap, incomplete):
    ev = random_events(seed, 3000, *sensor)
    ours = to_frames(ev, sensor, time_window_us=window, overlap=overlap, include_incomplete=incomplete)
    theirs = tonic_frames(ev, sensor, time_window=window, overlap=overlap, include_incomplete=incomplete)
    assert_same(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sensor", SENSORS)
@pytest.mark.parametrize(
    "count,overlap,incomplete", [(500, 0, False), (700, 0, True), (400, 150, False), (450, 100, True), (5000, 0, False)]
)
def test_event_count_identical_to_tonic(seed, sensor, count, overlap, incomplete):
    ev = random_events(seed, 3000, *sensor)
    ours = to_frames(ev, sensor, event_count=count, overlap=overlap, include_incomplete=incomplete)
    theirs = tonic_frames(ev, sensor, event_count=count, overlap=overlap, include_incomplete=incomplete)
    assert_same(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("sensor", SENSORS)
@pytest.mark.parametrize("bins,overlap", [(1, 0), (7, 0), (10, 0.25), (3, 0.5)])
def test_n_time_bins_identical_to_tonic(seed, sensor, bins, overlap):
    ev = random_events(seed, 3000, *sensor, t0=12_345)
    ours = to_frames(ev, sensor, n_time_bins=bins, overlap=overlap)
    theirs = tonic_frames(ev, sensor, n_time_bins=bins, overlap=overlap)
    assert_same(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    "start,end,incomplete",
    [(-20_000, 150_000, False), (5_000, 60_000, True), (30_000, 35_000, False), (0, 96_000, False)],
)
def test_fixed_window_identical_to_tonic(seed, start, end, incomplete):
    ev = random_events(seed, 2000, 64, 48, duration_us=100_000)
    ours = to_frames(ev, (64, 48), time_window_us=16_000, start_us=start, end_us=end, include_incomplete=incomplete)
    theirs = tonic_frames(
        ev, (64, 48), time_window=16_000, start_time=start, end_time=end, include_incomplete=incomplete
    )
    assert_same(ours, theirs)


def test_real_nmnist_sample_identical_to_tonic(real_data):
    import tonic.io

    dtype = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
    ev = tonic.io.read_mnist_file(str(real_data / "nmnist_sample.bin"), dtype=dtype)
    assert len(ev) == 4325
    for kw in ({"n_time_bins": 10}, {"time_window_us": 20_000}, {"event_count": 400, "overlap": 50}):
        tkw = {("time_window" if k == "time_window_us" else k): v for k, v in kw.items()}
        assert_same(to_frames(ev, (34, 34), **kw), tonic_frames(ev, (34, 34), **tkw))


# ---------------------------------------------------------------- empty input


def test_empty_input_shapes():
    ev = np.zeros(0, dtype=EVENT_DTYPE)
    s = (34, 34)
    f = to_frames(ev, s, n_time_bins=5)
    assert f.shape == (5, 2, 34, 34) and f.dtype == np.uint16 and not f.any()
    assert to_frames(ev, s, time_window_us=1000).shape == (0, 2, 34, 34)
    assert to_frames(ev, s, time_window_us=1000, start_us=0).shape == (0, 2, 34, 34)
    assert to_frames(ev, s, event_count=10, polarity="on").shape == (0, 1, 34, 34)
    # fixed window: floor((96000 - 16000) / 16000) + 1 = 6 frames; with include_incomplete ceil of 80500/16000
    f = to_frames(ev, (128, 128), time_window_us=16_000, start_us=0, end_us=96_000, polarity="merge", downsample=2)
    assert f.shape == (6, 1, 64, 64) and not f.any()
    f = to_frames(ev, s, time_window_us=16_000, start_us=0, end_us=96_500, include_incomplete=True)
    assert f.shape == (7, 2, 34, 34)


def test_quiet_period_gives_zero_frames_in_fixed_window():
    ev = random_events(3, 500, 32, 32, duration_us=16_000, t0=32_000)  # activity only in the third frame
    f = to_frames(ev, (32, 32), time_window_us=16_000, start_us=0, end_us=96_000)
    assert f.shape[0] == 6
    assert f[2].sum() == 500
    assert not f[[0, 1, 3, 4, 5]].any()


# ---------------------------------------------------------------- polarity, crop, downsample, binary


@pytest.mark.parametrize("mode", [{"time_window_us": 9_000}, {"event_count": 333}, {"n_time_bins": 4}])
def test_polarity_modes(mode):
    ev = random_events(4, 2000, 30, 20)
    both = to_frames(ev, (30, 20), **mode)
    on = to_frames(ev, (30, 20), polarity="on", **mode)
    off = to_frames(ev, (30, 20), polarity="off", **mode)
    merge = to_frames(ev, (30, 20), polarity="merge", **mode)
    assert both.shape[1] == 2 and on.shape[1] == 1 and off.shape[1] == 1 and merge.shape[1] == 1
    np.testing.assert_array_equal(on[:, 0], both[:, 1])
    np.testing.assert_array_equal(off[:, 0], both[:, 0])
    np.testing.assert_array_equal(merge[:, 0], both.sum(axis=1))
    # the slicing is the same whatever the polarity: T does not change
    assert both.shape[0] == on.shape[0] == off.shape[0] == merge.shape[0]


def test_on_polarity_counts_only_on_events():
    ev = random_events(5, 1000, 16, 16)
    f = to_frames(ev, (16, 16), n_time_bins=1, polarity="on")
    # n_time_bins drops the events at or past the last bin's end (tonic's convention)
    kept = ev[ev["t"] < ev["t"][0] + (ev["t"][-1] - ev["t"][0])]
    assert f.sum() == int((kept["p"] == 1).sum())


@pytest.mark.parametrize("seed", SEEDS)
def test_on_polarity_equals_tonic_and_a_manual_count_on_the_on_events_alone(seed):
    """The N-MNIST protocol's ON-only frames: tonic's ToFrame on the ON events only (same fixed window, so
    the same slices) and a count by hand give the very frames of ``polarity="on"``."""
    ev = random_events(seed, 3000, 34, 34, duration_us=300_000)
    start, end, window = 0, 300_000, 30_000
    ours = to_frames(ev, (34, 34), time_window_us=window, start_us=start, end_us=end, polarity="on")
    on_events = ev[ev["p"] == 1]
    theirs = tonic_frames(on_events, (34, 34), time_window=window, start_time=start, end_time=end)
    assert ours.shape == (10, 1, 34, 34) and theirs.shape == (10, 2, 34, 34)
    assert not theirs[:, 0].any()
    assert_same(ours[:, 0], theirs[:, 1])
    manual = np.zeros((10, 34, 34), dtype=np.int64)
    np.add.at(manual, ((on_events["t"] - start) // window, on_events["y"], on_events["x"]), 1)
    assert_same(ours[:, 0], manual)
    assert ours.sum() == len(on_events) < len(ev)


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_downsample_is_sum_pooling_with_ceil_sizes(factor):
    w, h = 35, 34
    ev = random_events(6, 4000, w, h)
    full = to_frames(ev, (w, h), time_window_us=20_000).astype(np.int64)
    small = to_frames(ev, (w, h), time_window_us=20_000, downsample=factor)
    ho, wo = -(-h // factor), -(-w // factor)
    assert small.shape == (full.shape[0], 2, ho, wo)
    padded = np.zeros((full.shape[0], 2, ho * factor, wo * factor), np.int64)
    padded[:, :, :h, :w] = full
    expect = padded.reshape(full.shape[0], 2, ho, factor, wo, factor).sum(axis=(3, 5))
    np.testing.assert_array_equal(small, expect)


def test_crop_is_centre_window_applied_before_downsampling():
    w, h = 40, 30
    ev = random_events(7, 4000, w, h)
    full = to_frames(ev, (w, h), event_count=800)
    crop = to_frames(ev, (w, h), event_count=800, crop=(21, 10))
    x0, y0 = (w - 21) // 2, (h - 10) // 2
    np.testing.assert_array_equal(crop, full[:, :, y0 : y0 + 10, x0 : x0 + 21])
    both = to_frames(ev, (w, h), event_count=800, crop=(20, 10), downsample=2)
    x0 = (w - 20) // 2
    expect = full[:, :, y0 : y0 + 10, x0 : x0 + 20].astype(np.int64).reshape(-1, 2, 5, 2, 10, 2).sum(axis=(3, 5))
    np.testing.assert_array_equal(both, expect)
    with pytest.raises(ValueError, match="larger than"):
        to_frames(ev, (w, h), event_count=800, crop=(41, 10))


def test_paper_gesture_input_shape():
    ev = random_events(8, 5000, 128, 128, duration_us=96_000)
    f = to_frames(
        ev,
        SensorSize(128, 128, 2),
        time_window_us=16_000,
        start_us=0,
        end_us=96_000,
        polarity="on",
        downsample=2,
        binary=True,
    )
    assert f.shape == (6, 1, 64, 64)


def test_binary_marks_pixels_with_events():
    ev = random_events(9, 3000, 20, 20)
    counts = to_frames(ev, (20, 20), time_window_us=10_000)
    binary = to_frames(ev, (20, 20), time_window_us=10_000, binary=True)
    np.testing.assert_array_equal(binary, (counts > 0).astype(binary.dtype))
    spec = FrameSpec(time_window_us=10_000, binary=True)
    assert frames_from_spec(ev, (20, 20), spec).dtype == np.uint8


def test_counts_saturate_instead_of_wrapping():
    ev = np.zeros(300, dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"] = 3, 2, np.arange(300)
    f = to_frames(ev, (8, 8), event_count=300, dtype=np.uint8)
    assert f[0, 0, 2, 3] == 255 and f.sum() == 255
    assert to_frames(ev, (8, 8), event_count=300, dtype=np.float32)[0, 0, 2, 3] == 300


def test_other_dtypes_and_strided_views():
    ev = random_events(10, 1500, 25, 25)
    dt = np.dtype([("t", np.int64), ("x", np.int32), ("y", np.uint16), ("p", np.bool_)])
    other = np.empty(len(ev), dtype=dt)
    for n in "txyp":
        other[n] = ev[n]
    np.testing.assert_array_equal(
        to_frames(other, (25, 25), time_window_us=5000), to_frames(ev, (25, 25), time_window_us=5000)
    )
    view = ev[::3]
    np.testing.assert_array_equal(
        to_frames(view, (25, 25), n_time_bins=3), to_frames(view.copy(), (25, 25), n_time_bins=3)
    )


# ---------------------------------------------------------------- threads


@pytest.mark.parametrize(
    "mode",
    [
        {"time_window_us": 4_000},
        {"time_window_us": 6_000, "overlap": 2_500},
        {"event_count": 97, "overlap": 30, "include_incomplete": True},
        {"n_time_bins": 9, "overlap": 0.4},
    ],
)
def test_threads_do_not_change_the_result(mode):
    ev = random_events(13, 5000, 33, 21)
    one = to_frames(ev, (33, 21), threads=1, **mode)
    for threads in (2, 3, 64):
        np.testing.assert_array_equal(to_frames(ev, (33, 21), threads=threads, **mode), one)
    with pytest.raises(ValueError, match="threads"):
        to_frames(ev, (33, 21), threads=0, **mode)


@pytest.mark.parametrize("where", [0, 1234, 2500, 4999])
def test_threaded_binning_checks_every_event(where):
    ev = random_events(14, 5000, 16, 16)
    ev["x"][where] = 16
    ev["x"][4000] = -3  # a second bad event: the first one is reported
    with pytest.raises(EventFormatError, match=f"event {min(where, 4000)} "):
        to_frames(ev, (16, 16), n_time_bins=3, threads=3)  # the last event lies outside every bin
    if where:
        ev = random_events(14, 5000, 16, 16)
        ev["t"][where] = ev["t"][where - 1] - 1
        with pytest.raises(EventFormatError, match=f"timestamps decrease at event {where} "):
            to_frames(ev, (16, 16), time_window_us=30_000, threads=4)


# ---------------------------------------------------------------- bad input


def test_bad_events_raise_event_format_error():
    ev = random_events(11, 100, 10, 10)
    bad = ev.copy()
    bad["x"][40] = 10
    with pytest.raises(EventFormatError, match=r"event 40 \(x=10, y=.*outside the 10x10 sensor"):
        to_frames(bad, (10, 10), time_window_us=1000)
    bad = ev.copy()
    bad["y"][7] = -1
    with pytest.raises(EventFormatError, match="event 7"):
        to_frames(bad, (10, 10), n_time_bins=2)
    bad = ev.copy()
    bad["p"][99] = 2  # the last event lies outside every n_time_bins slice: still checked
    with pytest.raises(EventFormatError, match="event 99 has polarity 2"):
        to_frames(bad, (10, 10), n_time_bins=2)
    bad = ev.copy()
    bad["t"][50] = bad["t"][49] - 1
    with pytest.raises(EventFormatError, match="timestamps decrease at event 50"):
        to_frames(bad, (10, 10), event_count=10)
    wide = np.zeros(3, dtype=[("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
    wide["x"][1] = 65536 + 3  # would wrap to 3 if cast to int16 blindly
    with pytest.raises(EventFormatError, match="event 1"):
        to_frames(wide, (10, 10), n_time_bins=1)
    with pytest.raises(ValueError, match="fields x, y, t, p"):
        to_frames(np.zeros(3, dtype=[("x", int), ("t", int)]), (10, 10), n_time_bins=1)


@pytest.mark.parametrize(
    "kw,message",
    [
        ({}, "exactly one"),
        ({"n_time_bins": 3, "event_count": 4}, "exactly one"),
        ({"time_window_us": 0}, "positive integer"),
        ({"time_window_us": 1.5}, "positive integer"),
        ({"n_time_bins": True}, "positive integer"),
        ({"event_count": 5, "polarity": "split"}, r"polarity must be one of \('both', 'on', 'off', 'merge'\)"),
        ({"event_count": 5, "downsample": 0}, "downsample"),
        ({"event_count": 5, "crop": (3,)}, "crop"),
        ({"event_count": 5, "overlap": 5}, "overlap"),
        ({"time_window_us": 100, "overlap": -1}, "overlap"),
        ({"n_time_bins": 5, "overlap": 1.0}, "overlap"),
        ({"n_time_bins": 5, "include_incomplete": True}, "include_incomplete"),
        ({"event_count": 5, "frames_per_clip": 0}, "frames_per_clip"),
        ({"event_count": 5, "span": "sample"}, "span"),
        ({"event_count": 5, "binary": 1}, "binary"),
        ({"event_count": 5, "max_frames": 0}, "max_frames must be None or an integer >= 1"),
        ({"event_count": 5, "max_frames": 2.0}, "max_frames must be None or an integer >= 1"),
        ({"time_window_us": 5, "frames_per_clip": 6, "max_frames": 5}, "max_frames=5 holds no clip"),
    ],
)
def test_frame_spec_validation(kw, message):
    with pytest.raises(ValueError, match=message):
        FrameSpec(**kw)


def test_window_arguments_are_checked():
    ev = random_events(12, 50, 8, 8)
    with pytest.raises(ValueError, match="time_window_us binning only"):
        to_frames(ev, (8, 8), n_time_bins=2, start_us=0)
    with pytest.raises(ValueError, match="before start_us"):
        to_frames(ev, (8, 8), time_window_us=10, start_us=10, end_us=5)
    with pytest.raises(ValueError, match="sensor"):
        to_frames(ev, (0, 8), time_window_us=10)


# ---------------------------------------------------------------- FrameSpec


def test_frame_spec_round_trips_through_json_and_toml():
    specs = [
        FrameSpec(
            time_window_us=16_000,
            polarity="on",
            downsample=2,
            crop=(120, 100),
            binary=True,
            frames_per_clip=6,
            overlap=1_000,
            include_incomplete=True,
            span="sample",
            max_frames=108,
        ),
        FrameSpec(n_time_bins=10, overlap=0.25),
        FrameSpec(event_count=3000),
    ]
    for spec in specs:
        d = spec.to_dict()
        assert FrameSpec.from_dict(d) == spec
        assert FrameSpec.from_dict(json.loads(json.dumps(d))) == spec
        assert FrameSpec.from_dict(tomllib.loads(tomli_w.dumps(d))) == spec
        assert FrameSpec.from_dict(json.loads(json.dumps(d))).key() == spec.key()
    with pytest.raises(ValueError, match="unknown frame spec key"):
        FrameSpec.from_dict({"n_time_bins": 3, "bins": 4})


def test_frame_spec_key_is_stable_and_covers_every_field():
    base = FrameSpec(time_window_us=16_000, frames_per_clip=6)
    # the key is part of cache file names: it must not change between runs or releases unnoticed
    assert base.key() == "175ecbbccef439a0"
    assert FrameSpec(time_window_us=16_000, frames_per_clip=6).key() == base.key()
    variants = [
        FrameSpec(time_window_us=16_001, frames_per_clip=6),
        FrameSpec(time_window_us=16_000, frames_per_clip=5),
        FrameSpec(time_window_us=16_000, frames_per_clip=6, polarity="on"),
        FrameSpec(time_window_us=16_000, frames_per_clip=6, downsample=2),
        FrameSpec(time_window_us=16_000, frames_per_clip=6, crop=(10, 10)),
        FrameSpec(time_window_us=16_000, frames_per_clip=6, binary=True),
        FrameSpec(time_window_us=16_000, frames_per_clip=6, overlap=1),
        FrameSpec(time_window_us=16_000, frames_per_clip=6, include_incomplete=True),
        FrameSpec(time_window_us=16_000, frames_per_clip=6, span="sample"),
        FrameSpec(time_window_us=16_000, frames_per_clip=6, polarity="off"),
        FrameSpec(time_window_us=16_000, frames_per_clip=6, max_frames=108),
        FrameSpec(time_window_us=16_000, frames_per_clip=6, max_frames=12),
    ]
    keys = {v.key() for v in variants}
    assert len(keys) == len(variants) and base.key() not in keys


def test_output_shape():
    assert FrameSpec(n_time_bins=3).output_shape(SensorSize(34, 34, 2)) == (2, 34, 34)
    assert FrameSpec(n_time_bins=3, polarity="merge", downsample=2).output_shape((128, 128)) == (1, 64, 64)
    assert FrameSpec(n_time_bins=3, crop=(240, 180), downsample=4).output_shape((346, 260)) == (2, 45, 60)
    assert FrameSpec(n_time_bins=3, downsample=3).output_shape((35, 34)) == (2, 12, 12)


# ---------------------------------------------------------------- the frame cap

CAPPED_MODES = [
    ({"time_window_us": 7_000}, {}),
    ({"time_window_us": 7_000, "include_incomplete": True, "overlap": 2_000}, {}),
    ({"time_window_us": 16_000}, {"start_us": -20_000, "end_us": 150_000}),
    ({"event_count": 300, "overlap": 50}, {}),
    ({"n_time_bins": 10}, {}),
    ({"n_time_bins": 10, "overlap": 0.25}, {}),
]


@pytest.mark.parametrize("mode,window", CAPPED_MODES)
@pytest.mark.parametrize("cap", [1, 4, 9, 1000])
def test_max_frames_gives_exactly_the_first_frames_of_the_uncapped_stack(mode, window, cap):
    ev = random_events(13, 3000, 40, 23)
    full = frames_from_spec(ev, (40, 23), FrameSpec(polarity="merge", **mode), **window)
    capped = frames_from_spec(ev, (40, 23), FrameSpec(polarity="merge", max_frames=cap, **mode), **window)
    assert full.shape[0] > 4  # the caps 1 and 4 cut something off
    assert capped.shape == (min(cap, full.shape[0]), *full.shape[1:])
    np.testing.assert_array_equal(capped, full[:cap])
    np.testing.assert_array_equal(to_frames(ev, (40, 23), polarity="merge", max_frames=cap, **mode, **window), capped)


def test_max_frames_caps_empty_input_too():
    ev = np.zeros(0, dtype=EVENT_DTYPE)
    assert to_frames(ev, (34, 34), n_time_bins=10, max_frames=3).shape == (3, 2, 34, 34)
    assert to_frames(ev, (34, 34), time_window_us=16_000, start_us=0, end_us=960_000, max_frames=4).shape == (
        4,
        2,
        34,
        34,
    )
    assert FrameSpec(n_time_bins=10, max_frames=3).frames_per_sample == 3
    assert FrameSpec(n_time_bins=10, max_frames=30).frames_per_sample == 10
    assert FrameSpec(n_time_bins=10).frames_per_sample == 10
    assert FrameSpec(time_window_us=16_000, max_frames=3).frames_per_sample is None


def test_max_frames_bins_only_the_frames_it_keeps(monkeypatch):
    """Bounded work: a gesture of 100 windows capped at 12 bins 12 frames, not 100 then discards 88."""
    binned = []
    kernel = frame_binning.bin_events

    def counting(ev, width, height, starts, ends, *rest):
        binned.append(len(starts))
        return kernel(ev, width, height, starts, ends, *rest)

    monkeypatch.setattr(frame_binning, "bin_events", counting)
    ev = random_events(14, 5000, 32, 32, duration_us=1_600_000)
    spec = FrameSpec(time_window_us=16_000, frames_per_clip=6, max_frames=12, span="sample")
    frames = frames_from_spec(ev, (32, 32), spec, start_us=0, end_us=1_600_000, threads=1)
    assert frames.shape[0] == 12 and binned == [12]
    assert split_clips(frames, spec.frames_per_clip).shape[0] == 2


# ---------------------------------------------------------------- clips


def test_split_clips():
    frames = np.arange(14 * 2 * 3 * 3, dtype=np.uint16).reshape(14, 2, 3, 3)
    clips = split_clips(frames, 6)
    assert clips.shape == (2, 6, 2, 3, 3)
    np.testing.assert_array_equal(clips[1], frames[6:12])
    clips = split_clips(frames, 6, stride=4)
    assert clips.shape == (3, 6, 2, 3, 3)
    np.testing.assert_array_equal(clips[2], frames[8:14])
    assert split_clips(frames[:5], 6).shape == (0, 6, 2, 3, 3)
    clips[0, 0] = 0
    assert frames[0].any()  # a new array, not a view
    with pytest.raises(ValueError):
        split_clips(frames, 0)
    with pytest.raises(ValueError):
        split_clips(frames[0], 2)
