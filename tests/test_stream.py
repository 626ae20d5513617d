"""Streaming inference (issue 5): events.stream windows and pipelines.stream / ``nsm stream``.

Small untrained networks and one short simulated DVS Gesture recording keep this file fast; every
equality here is exact (same window, same seed, same noise).
"""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pytest
import torch

import events
import models
from events.datasets import GESTURE_CLASSES, parse_labels
from events.formats.aedat3 import Aedat3Reader, write_aedat3
from events.stream import SlidingWindows, fit_frame_spec, iter_windows, read_windows, window_frames
from events.types import EventFormatError
from nsm import MCSettings
from pipelines.calibration import expected_calibration_error
from pipelines.checkpoint import save_checkpoint
from pipelines.commands.stream import add_parser, main
from pipelines.replay import LabelScorer
from pipelines.stream import STREAM_MC, TIMING_FIELDS, StreamingClassifier, predict_recording

SPEC = events.FrameSpec(time_window_us=16_000, polarity="merge", downsample=8, frames_per_clip=6)
K2 = MCSettings(samples=2)  # the settings of `nsm stream --samples 2` (at the checkpoint's temperature, 1 here)


def result(pred) -> dict:
    """A prediction's content without its timings (exact floats, not the JSON rounding)."""
    d = {k: v for k, v in vars(pred).items() if k not in TIMING_FIELDS}
    for k in ("probs", "accumulated_probs"):
        d[k] = None if d[k] is None else d[k].tolist()
    return d


def json_result(line: dict) -> dict:
    return {k: v for k, v in line.items() if k not in TIMING_FIELDS}


def tiny_net(input_size=(16, 16), in_channels=6):
    torch.manual_seed(0)
    return models.create_model(
        "allconvnet18", in_channels=in_channels, input_size=input_size, num_classes=11, width=0.125
    )


def random_events(n, duration_us, width=128, height=128, seed=0, t0=1_000_000):
    rng = np.random.default_rng(seed)
    return events.make_events(
        rng.integers(0, width, n),
        rng.integers(0, height, n),
        np.sort(rng.integers(t0, t0 + duration_us, n)),
        rng.integers(0, 2, n),
    )


def random_chunks(ev, rng, n_cuts):
    cuts = np.sort(rng.integers(0, len(ev) + 1, n_cuts))
    return np.split(ev, cuts)  # includes empty chunks and repeated cut points


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gestures(tmp_path_factory):
    """A simulated DVS Gesture recording cut to its first 6 s (its labels CSV still lists all 11 gestures)."""
    root = events.simulate_gestures(
        tmp_path_factory.mktemp("gestures"), seed=0, users=1, per_class=1, gesture_s=(0.55, 0.6), progress=False
    )
    aedat = next(root.glob("*.aedat"))
    rec = events.read(aedat)
    ev = rec.events[rec.events["t"] < rec.events["t"][0] + 6_000_000]
    write_aedat3(aedat, ev, rec.sensor_size)
    return aedat, aedat.with_name(aedat.stem + "_labels.csv"), events.read(aedat)


@pytest.fixture(scope="module")
def short(gestures):
    """The first 2.5 s of the simulated recording."""
    rec = gestures[2]
    return rec.events[rec.events["t"] < rec.events["t"][0] + 2_500_000], rec.sensor_size


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(path, tiny_net(), classes=GESTURE_CLASSES, frame_spec=SPEC.to_dict())
    return path


# ------------------------------------------------------------------------------------------------
# events.stream: windows
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window_us,hop_us", [(96_000, 48_000), (50_000, 50_000), (30_000, 70_000)])
def test_sliding_windows_equal_offline_windowing_for_any_chunking(window_us, hop_us):
    ev = random_events(4000, 2_000_000, seed=1)
    ev = ev[(ev["t"] < 1_600_000) | (ev["t"] > 1_900_000)]  # a quiet gap: empty windows
    offline = list(iter_windows(ev, window_us, hop_us))
    assert offline[-1].end_us <= int(ev["t"][-1]) + 1 < offline[-1].end_us + hop_us
    assert any(w.empty for w in offline)
    rng = np.random.default_rng(2)
    for trial in range(3):
        sw = SlidingWindows(window_us, hop_us, sensor_size=(128, 128))
        got = []
        for chunk in random_chunks(ev, rng, 1 + 40 * trial):
            got += sw.push(chunk)
        got += sw.flush()
        assert [(w.index, w.start_us, w.end_us) for w in got] == [(w.index, w.start_us, w.end_us) for w in offline]
        for a, b in zip(got, offline):
            assert np.array_equal(a.events, b.events)
            assert np.all((a.events["t"] >= a.start_us) & (a.events["t"] < a.end_us))


def test_sliding_windows_keep_only_events_of_pending_windows():
    ev = random_events(20_000, 5_000_000, seed=3)
    sw = SlidingWindows(96_000, 48_000)
    for chunk in np.array_split(ev, 500):
        sw.push(chunk)
        next_start = sw.origin_us + sw.next_index * sw.hop_us
        assert sw.buffered == np.count_nonzero(ev["t"][: sw.events_seen] >= next_start)
        assert next_start + sw.window_us > sw.last_t  # the next window is not complete yet
    assert sw.buffered < 20_000 * 96_000 / 5_000_000 * 1.5  # about one window of events, not the stream


def test_window_completes_only_when_time_has_passed_its_end():
    ev = events.make_events([1, 2, 3], [1, 1, 1], [0, 99, 100], [1, 1, 1])
    sw = SlidingWindows(100, 50)
    assert sw.push(ev[:2]) == []  # t=99: window [0, 100) may still get events at 99
    (w,) = sw.push(ev[2:])  # t=100 proves [0, 100) complete
    assert (w.start_us, w.end_us, len(w.events)) == (0, 100, 2)
    assert [(x.start_us, x.end_us) for x in sw.push(ev[:0], now_us=250)] == [(50, 150), (100, 200), (150, 250)]
    assert [(x.start_us, x.end_us, x.empty) for x in sw.flush(end_us=300)] == [(200, 300, True)]
    sw2 = SlidingWindows(100, 50)
    assert len(sw2.push(ev)) == 1
    assert sw2.flush() == []  # the stream ends at 101 µs: [50, 150) never completes


def test_read_windows_streams_a_file_in_chunks(short, tmp_path):
    ev, sensor = short
    path = tmp_path / "rec.aedat"
    write_aedat3(path, ev, sensor)
    got = list(read_windows(path, 96_000, 48_000, chunk_events=3000))
    expected = list(iter_windows(ev, 96_000, 48_000))
    assert [(w.index, w.start_us, w.end_us) for w in got] == [(w.index, w.start_us, w.end_us) for w in expected]
    assert all(np.array_equal(a.events, b.events) for a, b in zip(got, expected))


def test_window_frames_equal_whole_recording_frames_cut_into_clips(short):
    ev, sensor = short
    hop = 48_000
    windows = list(iter_windows(ev, 96_000, hop))
    origin, end = windows[0].start_us, windows[-1].end_us
    whole = events.to_frames(
        ev, sensor, time_window_us=16_000, polarity="merge", downsample=8, start_us=origin, end_us=end
    )
    clips = events.split_clips(whole, 6, stride=hop // 16_000)
    assert len(clips) == len(windows)
    for w, clip in zip(windows, clips):
        frames = window_frames(w.events, sensor, SPEC, w.start_us, w.end_us, 6)
        assert frames.dtype == np.float32 and frames.shape == (6, 1, 16, 16)
        assert np.array_equal(frames, clip)


def test_fit_frame_spec_crops_a_larger_sensor_and_rejects_a_smaller_one():
    spec = events.FrameSpec(time_window_us=16_000, polarity="merge", downsample=4)
    assert fit_frame_spec(spec, (128, 128), (32, 32)).crop is None
    assert fit_frame_spec(spec, (346, 260), (32, 32)).crop == (128, 128)
    assert fit_frame_spec(spec, (320, 240), (32, 32), downsample=2).crop == (64, 64)
    assert fit_frame_spec(spec, (127, 128), (32, 32)).crop is None  # ceil(127 / 4) = 32: a partial border cell
    with pytest.raises(ValueError, match="cannot fill the model's input height of 64"):
        fit_frame_spec(spec, (320, 240), (64, 64))
    with pytest.raises(ValueError, match="50x50 .* takes 32x32"):
        fit_frame_spec(spec, (320, 240), (32, 32), crop=(200, 200))
    with pytest.raises(ValueError, match="larger than the 320x240 sensor"):
        fit_frame_spec(spec, (320, 240), (32, 32), crop=(256, 256))


# ------------------------------------------------------------------------------------------------
# StreamingClassifier
# ------------------------------------------------------------------------------------------------


def test_predictions_are_identical_for_any_chunking_and_equal_offline(short):
    ev, sensor = short
    net = tiny_net()
    kw = dict(mc=K2, seed=5, classes=GESTURE_CLASSES)
    clf = StreamingClassifier(net, SPEC, sensor, **kw)
    at_once = [result(p) for p in clf.push(ev) + clf.flush()]
    assert len(at_once) == (int(ev["t"][-1]) + 1 - int(ev["t"][0]) - 96_000) // 48_000 + 1
    rng = np.random.default_rng(0)
    for n_cuts in (7, 300):
        preds = []
        for chunk in random_chunks(ev, rng, n_cuts):
            preds += clf.push(chunk)
        preds += clf.flush()
        assert [result(p) for p in preds] == at_once
    offline = [result(p) for p in predict_recording(net, ev, SPEC, sensor, **kw)]
    assert offline == at_once
    other_seed = [result(p) for p in predict_recording(net, ev, SPEC, sensor, mc=K2, seed=6)]
    assert [p["probs"] for p in other_seed] != [p["probs"] for p in at_once]  # the seed matters


def test_prediction_fields_and_model_input(short):
    ev, sensor = short
    net = tiny_net()
    clf = StreamingClassifier(net, SPEC, sensor, mc=MCSettings(samples=3), classes=GESTURE_CLASSES)
    assert (clf.window_us, clf.hop_us) == (96_000, 48_000)
    windows = list(iter_windows(ev, 96_000, 48_000))
    x = clf.model_input(windows[3])
    assert x.dtype == torch.float32 and tuple(x.shape) == (1, 6, 1, 16, 16)
    assert float(x.sum()) == np.count_nonzero((ev["t"] >= windows[3].start_us) & (ev["t"] < windows[3].end_us))
    for p in clf.push(ev):
        assert p.probs.shape == (11,) and math.isclose(p.probs.sum(), 1.0, rel_tol=1e-6)
        assert p.top_class == int(p.probs.argmax()) and p.class_name == GESTURE_CLASSES[p.top_class]
        assert p.confidence == p.probs.max() and p.samples == 3
        assert math.isclose(p.entropy, float(-(p.probs * np.log(p.probs)).sum()), rel_tol=1e-9)
        assert p.n_events == np.count_nonzero((ev["t"] >= p.start_us) & (ev["t"] < p.end_us))
        assert p.latency_ms >= p.compute_ms > 0
        json.dumps(p.to_dict())


def test_adaptive_sampling_and_evidence_accumulation_with_decay(short):
    ev, sensor = short
    net = tiny_net()
    mc = STREAM_MC.overridden(adaptive=True, threshold=0.9, min_samples=2, max_samples=6)  # two rounds: 2, then 4
    clf = StreamingClassifier(net, SPEC, sensor, mc=mc, decay=0.8)
    preds = clf.push(ev)
    assert all(2 <= p.samples <= 6 for p in preds)
    total, weight = np.zeros(11), 0.0
    for p in preds[:10]:
        total, weight = total * 0.8 + p.probs, weight * 0.8 + 1.0
        assert np.allclose(p.accumulated_probs, total / weight, rtol=0, atol=1e-12)
        assert p.accumulated_class == int((total / weight).argmax())
        assert math.isclose(p.accumulated_windows, weight)
    clf.reset_evidence()
    (first, *_) = clf.push(ev[:0], now_us=preds[-1].end_us + 48_000)
    assert np.array_equal(first.accumulated_probs, first.probs) and first.accumulated_windows == 1.0


def test_empty_windows_are_predicted_and_carry_no_evidence():
    ev = random_events(600, 300_000, seed=4, t0=0)
    late = random_events(600, 300_000, seed=5, t0=1_000_000)
    stream = np.concatenate([ev, late])  # 0.7 s without events
    clf = StreamingClassifier(tiny_net(), SPEC, (128, 128), mc=K2)
    preds = clf.push(stream) + clf.flush()
    empty = [p for p in preds if p.empty]
    assert len(empty) >= 10 and all(p.n_events == 0 for p in empty)
    assert all(p.probs.shape == (11,) and p.samples == 2 for p in empty)
    for before, p in zip(preds, preds[1:]):
        if p.empty:
            assert np.array_equal(p.accumulated_probs, before.accumulated_probs)
            assert p.accumulated_windows == before.accumulated_windows


def rising(t, start):
    """The first index i >= start with t[i] < t[i + 1] (swapping i and i + 1 then puts time out of order)."""
    return start + int(np.flatnonzero(np.diff(t[start:]) > 0)[0])


def test_out_of_order_timestamps_error_or_sort_within_chunks(short):
    ev, sensor = short
    net = tiny_net()
    chunks = np.array_split(ev, 10)
    bad = chunks[4].copy()
    i = rising(bad["t"], 100)
    bad[[i, i + 1]] = bad[[i + 1, i]]
    clf = StreamingClassifier(net, SPEC, sensor, mc=K2, source="rec.aedat")
    good = [p for c in chunks[:4] for p in clf.push(c)]
    with pytest.raises(EventFormatError, match=r"rec\.aedat.*t=\d+ µs after \d+ µs"):
        clf.push(bad)
    rest = [p for c in [chunks[4]] + chunks[5:] for p in clf.push(c)] + clf.flush()  # state was unchanged
    reference = [result(p) for p in predict_recording(net, ev, SPEC, sensor, mc=K2)]
    assert [result(p) for p in good + rest] == reference

    sorting = StreamingClassifier(net, SPEC, sensor, mc=K2, sort_chunks=True)
    shuffled = [c[np.random.default_rng(i).permutation(len(c))] for i, c in enumerate(chunks)]
    assert [result(p) for c in shuffled for p in sorting.push(c)] + [result(p) for p in sorting.flush()] == reference

    sorting.push(chunks[0])
    with pytest.raises(EventFormatError, match="after the windows up to \\d+ µs were fixed"):
        sorting.push(chunks[0][:5])  # older than windows already predicted: sorting cannot help

    strict = StreamingClassifier(net, SPEC, sensor, mc=K2)
    strict.push(chunks[1])
    with pytest.raises(EventFormatError, match="go back in time"):
        strict.push(chunks[0])  # across chunks


def test_larger_sensor_is_centre_cropped_and_downsampled(real_data):
    rec = events.read(real_data / "davis346_sample.aedat4")
    ev = rec.events[rec.events["t"] < rec.events["t"][0] + 250_000]
    assert tuple(rec.sensor_size[:2]) == (320, 240)
    spec = events.FrameSpec(time_window_us=8_000, polarity="both", downsample=4, frames_per_clip=3)
    net = tiny_net(input_size=(32, 32), in_channels=6)
    clf = StreamingClassifier(net, spec, rec.sensor_size, mc=K2)
    assert clf.frame_spec.crop == (128, 128)
    # the same events cut out by hand: columns 96..223, rows 56..183, on a 128x128 sensor
    keep = (ev["x"] >= 96) & (ev["x"] < 224) & (ev["y"] >= 56) & (ev["y"] < 184)
    cut = ev[keep].copy()
    cut["x"] -= 96
    cut["y"] -= 56
    on_crop = StreamingClassifier(net, spec, (128, 128), mc=K2, origin_us=int(ev["t"][0]))
    a = clf.push(ev) + clf.flush()
    b = on_crop.push(cut) + on_crop.flush(end_us=int(ev["t"][-1]) + 1)
    assert len(a) == len(b) > 5
    for p, q in zip(a, b):
        assert np.array_equal(p.probs, q.probs) and (p.start_us, p.end_us) == (q.start_us, q.end_us)
    with pytest.raises(ValueError, match="cannot fill"):
        StreamingClassifier(tiny_net(input_size=(64, 64)), spec, rec.sensor_size, mc=K2)


def test_the_stream_samples_as_stream_mc_says_by_default(checkpoint, short):
    """K = 8 passes a window, or adaptive between 4 and 16 in at most two rounds: 4, then the other 12."""
    ev, sensor = short
    assert (STREAM_MC.samples, STREAM_MC.adaptive, STREAM_MC.min_samples, STREAM_MC.max_samples) == (8, False, 4, 16)
    clf = StreamingClassifier.from_checkpoint(checkpoint, sensor_size=sensor)
    assert clf.mc == STREAM_MC  # at the checkpoint's temperature: 1, none fitted
    assert {p.samples for p in clf.push(ev)} == {8}
    adaptive = STREAM_MC.overridden(adaptive=True, threshold=0.15)
    used = {p.samples for p in StreamingClassifier(tiny_net(), SPEC, sensor, mc=adaptive).push(ev)}
    assert used == {4, 16}  # stopped after the first round, or went on to the maximum


def test_from_checkpoint_uses_its_spec_and_classes_with_overrides(checkpoint, short):
    ev, sensor = short
    clf = StreamingClassifier.from_checkpoint(checkpoint, sensor_size=sensor, mc=K2, window_us=60_000, hop_us=20_000)
    assert (clf.window_us, clf.hop_us, clf.n_frames) == (60_000, 20_000, 6)
    assert clf.classes == list(GESTURE_CLASSES) and clf.frame_spec.downsample == 8
    preds = clf.push(ev)
    assert [p.end_us - p.start_us for p in preds[:3]] == [60_000] * 3
    assert preds[1].start_us - preds[0].start_us == 20_000
    with pytest.raises(ValueError, match="splits into 6 frames"):
        StreamingClassifier.from_checkpoint(checkpoint, sensor_size=sensor, window_us=100_001)


def test_label_scorer_counts_gestures_and_windows():
    scorer = LabelScorer([(1, 0, 300), (2, 250, 600), (3, 1000, 1100)], num_classes=3)

    def pred(start, end, probs):
        probs = np.asarray(probs, dtype=float)
        return argparse.Namespace(start_us=start, end_us=end, probs=probs, top_class=int(probs.argmax()))

    scorer.add(pred(0, 100, [0.6, 0.3, 0.1]))  # gesture 1, correct
    scorer.add(pred(100, 200, [0.1, 0.5, 0.4]))  # gesture 1, wrong
    scorer.add(pred(200, 300, [0.1, 0.5, 0.4]))  # gesture 1 only (ends at 300 <= 300), wrong
    scorer.add(pred(260, 290, [0.2, 0.7, 0.1]))  # inside 1 and 2: ambiguous for windows, counts for both
    scorer.add(pred(300, 400, [0.1, 0.8, 0.1]))  # gesture 2, correct
    scorer.add(pred(650, 750, [1.0, 0.0, 0.0]))  # outside every gesture
    r = scorer.result()
    assert r["gestures"] == 3 and r["gestures_scored"] == 2  # gesture 3 has no window inside
    assert r["gestures_correct"] == 1  # gesture 1's mean favours index 1 (wrong), gesture 2's index 1 (right)
    assert (r["windows_scored"], r["windows_correct"], r["windows_ambiguous"]) == (4, 2, 1)
    assert r["window_accuracy"] == 0.5 and r["gesture_accuracy"] == 0.5
    # calibration of the 4 scored windows, at temperature 1: by hand
    nll = -np.log([0.6, 0.1, 0.1, 0.8]).mean()
    assert r["temperature"] == 1.0 and r["window_nll"] == pytest.approx(nll) == r["window_nll_at_t1"]


def test_label_scorer_reports_window_calibration_at_the_stream_temperature_and_at_1():
    """Windows predicted at T = 0.5 (probabilities p^2 renormalized): the scorer's T-1 figures are those of p."""
    raw = [np.array([0.6, 0.3, 0.1]), np.array([0.2, 0.5, 0.3]), np.array([0.7, 0.2, 0.1])]
    truth = [0, 2, 0]
    tempered = [p**2 / (p**2).sum() for p in raw]
    scorer = LabelScorer([(c + 1, 100 * i, 100 * i + 100) for i, c in enumerate(truth)], 3, temperature=0.5)
    for i, p in enumerate(tempered):
        scorer.add(argparse.Namespace(start_us=100 * i, end_us=100 * i + 100, probs=p, top_class=int(p.argmax())))
    r = scorer.result()
    correct = np.array([True, False, True])
    assert r["window_nll"] == pytest.approx(-np.mean([np.log(p[c]) for p, c in zip(tempered, truth)]))
    assert r["window_nll_at_t1"] == pytest.approx(-np.mean([np.log(p[c]) for p, c in zip(raw, truth)]))
    assert r["window_ece"] == pytest.approx(expected_calibration_error(np.array([p.max() for p in tempered]), correct))
    assert r["window_ece_at_t1"] == pytest.approx(expected_calibration_error(np.array([p.max() for p in raw]), correct))


# ------------------------------------------------------------------------------------------------
# nsm stream
# ------------------------------------------------------------------------------------------------


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--checkpoint",
        "--events",
        "--labels",
        "--window-ms",
        "--hop-ms",
        "--samples",
        "--adaptive",
        "--threshold",
        "--decay",
        "--out",
        "--timeline",
        "--sort-chunks",
        "--chunk-events",
        "--seed",
    ):
        assert option in text
    parser = argparse.ArgumentParser(prog="nsm")
    add_parser(parser.add_subparsers(dest="command"))  # as pipelines.cli registers it
    with pytest.raises(SystemExit):
        parser.parse_args(["stream", "--help"])
    assert "--checkpoint" in capsys.readouterr().out


def test_cli_end_to_end_with_labels_summary_and_timeline(gestures, checkpoint, tmp_path, capsys):
    aedat, labels_csv, rec = gestures
    out, timeline = tmp_path / "preds.jsonl", tmp_path / "timeline.png"
    assert (
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--events",
                str(aedat),
                "--labels",
                str(labels_csv),
                "--samples",
                "2",
                "--seed",
                "3",
                "--chunk-events",
                "5000",
                "--out",
                str(out),
                "--timeline",
                str(timeline),
                "--quiet",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    expected = predict_recording(tiny_net(), rec.events, SPEC, rec.sensor_size, mc=K2, seed=3, classes=GESTURE_CLASSES)
    assert [json_result(line) for line in lines] == [json_result(p.to_dict()) for p in expected]
    assert timeline.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left behind
    scorer = LabelScorer(parse_labels(labels_csv), 11)
    for p in expected:
        scorer.add(p)
    r = scorer.result()
    labels = parse_labels(labels_csv)
    inside = sum(end <= rec.events["t"][-1] for _, _, end in labels)
    assert r["gestures"] == 11 and r["gestures_scored"] == inside >= 3 and r["windows_scored"] > 20
    text = capsys.readouterr().out
    assert (
        f"gesture accuracy: {r['gesture_accuracy']:.3f} ({r['gestures_correct']}/{r['gestures_scored']} "
        "gestures with a window inside; 11 labelled)"
    ) in text
    assert f"window accuracy: {r['window_accuracy']:.3f} ({r['windows_correct']}/{r['windows_scored']} " in text
    assert f"windows: {len(expected)} ({sum(p.empty for p in expected)} empty)" in text


def test_cli_truncated_file_keeps_every_earlier_prediction(short, checkpoint, tmp_path):
    ev, sensor = short
    path = tmp_path / "cut.aedat"
    write_aedat3(path, ev, sensor, packet_events=1000)
    data_offset = Aedat3Reader(path).data_offset
    packet = 28 + 1000 * 8
    n_good_packets = len(ev) // 1000 // 2
    size = data_offset + n_good_packets * packet + 28 + 300 * 8  # the next packet cut short
    path.write_bytes(path.read_bytes()[:size])
    out = tmp_path / "preds.jsonl"
    with pytest.raises(EventFormatError, match="truncated packet") as exc:
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--events",
                str(path),
                "--samples",
                "2",
                "--out",
                str(out),
                "--chunk-events",
                "700",
                "--quiet",
            ]
        )
    assert str(path) in str(exc.value)
    last_good_t = int(ev["t"][n_good_packets * 1000 - 1])
    expected = [
        p
        for p in predict_recording(tiny_net(), ev, SPEC, sensor, mc=K2, classes=GESTURE_CLASSES)
        if p.end_us <= last_good_t
    ]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(expected) > 10
    assert [json_result(line) for line in lines] == [json_result(p.to_dict()) for p in expected]


def test_cli_out_of_order_file_writes_predictions_before_the_disorder(short, checkpoint, tmp_path):
    ev, sensor = short
    bad = ev.copy()
    k = rising(ev["t"], len(ev) // 2)
    bad[[k, k + 1]] = bad[[k + 1, k]]
    path = tmp_path / "disorder.aedat"
    write_aedat3(path, bad, sensor)
    out = tmp_path / "preds.jsonl"
    args = [
        "--checkpoint",
        str(checkpoint),
        "--events",
        str(path),
        "--samples",
        "2",
        "--out",
        str(out),
        "--quiet",
        "--chunk-events",
        str(len(ev)),
    ]  # one chunk: its good part is still predicted
    with pytest.raises(EventFormatError, match=rf"{path.name}.*t={int(bad['t'][k + 1])} µs after"):
        main(args)
    # the good part bad[:k + 1] is in order; its windows that end by its last event are out
    expected = predict_recording(
        tiny_net(), bad[: k + 1], SPEC, sensor, mc=K2, classes=GESTURE_CLASSES, end_us=int(bad["t"][k])
    )
    assert len(expected) > 10
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [json_result(line) for line in lines] == [json_result(p.to_dict()) for p in expected]
    assert main(args + ["--sort-chunks"]) == 0
    assert len(out.read_text().splitlines()) == len(predict_recording(tiny_net(), ev, SPEC, sensor, mc=K2))


def test_cli_bad_sensor_fit_is_a_clear_error(real_data, checkpoint, tmp_path):
    # the checkpoint's 16x16 input at downsample 8 needs 128x128: the 320x240 sensor is cropped, fine;
    # at downsample 16 it would need 256x256, more than the sensor's 240 rows
    with pytest.raises(ValueError, match="cannot fill the model's input height"):
        main(
            [
                "--checkpoint",
                str(checkpoint),
                "--events",
                str(real_data / "davis346_sample.aedat4"),
                "--downsample",
                "16",
                "--quiet",
            ]
        )


def test_bench_streams_a_checkpoint_with_adaptive_sampling(checkpoint):
    """``nsm bench --checkpoint``: rows for the checkpoint at torch's thread count (and one thread), over 3 s
    of the simulated recording with adaptive 4-16 sampling."""
    from pipelines import bench

    rows = bench.stream_checkpoint(checkpoint, quick=True)
    assert len(rows) == len({torch.get_num_threads(), 1})
    for row in rows:
        assert row.name.startswith("stream tiny.pt (allconvnet18), adaptive 4-16, ")
        assert row.goal == ">= 1x real time" and row.ratio > 0
        windows, span = re.match(r"(\d+) windows of ([\d.]+) s", row.detail).groups()
        assert int(windows) >= 55 and 2.9 <= float(span) <= 3.1
        assert 4 <= float(re.search(r"mean ([\d.]+) samples", row.detail)[1]) <= 16
