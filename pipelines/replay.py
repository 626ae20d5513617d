"""Replay an event file, or a live source (``events.live``), through a trained network as it arrives: the
predictions as JSON lines, a summary (windows, real-time factor, latency, and accuracy against DVS Gesture
labels) and a timeline figure (``nsm stream``; the classifier itself: ``pipelines.stream``)."""

from __future__ import annotations

import array
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import events
from events.atomic import check_output, write_text_atomic
from events.datasets import parse_labels
from events.errors import InputError
from events.formats import check_chunk_size
from events.live import LiveSource, SourceLost
from events.stream import first_disorder
from nsm.sampling import temper

from .calibration import NLL_EPS, expected_calibration_error
from .figures import plot_timeline
from .stream import DEFAULT_CHUNK_EVENTS, STREAM_MC, Prediction, StreamingClassifier


class LabelScorer:
    """Accuracy against DVS Gesture labels, accumulated one prediction at a time (memory: one sum per gesture).

    ``labels``: ``(class 1..C, start_us, end_us)`` rows (``events.datasets.parse_labels``); class ``c`` is
    index ``c - 1``. A window counts for a gesture when it lies fully inside ``[start, end)``. A gesture's
    prediction is the argmax of the mean probabilities of its windows (gestures without a window are
    reported as unscored). Per-window accuracy covers windows inside a labelled gesture; a window inside
    overlapping gestures of different classes is ambiguous and left out (counted).

    Calibration of the scored windows: their NLL and ECE (``pipelines.calibration``) at the stream's Monte Carlo
    ``temperature`` and, from the same samples, at temperature 1 (``nsm.sampling.temper`` inverts it exactly);
    memory: 9 bytes a scored window.
    """

    def __init__(self, labels, num_classes: int, temperature: float = 1.0):
        rows = np.asarray([(int(c), int(s), int(e)) for c, s, e in labels], dtype=np.int64).reshape(-1, 3)
        bad = (rows[:, 0] < 1) | (rows[:, 0] > num_classes)
        if bad.any():
            raise InputError(f"label class {int(rows[bad][0, 0])} outside 1..{num_classes} (the model's classes)")
        self.classes, self.starts, self.ends = rows[:, 0] - 1, rows[:, 1], rows[:, 2]
        self.sums = np.zeros((len(rows), num_classes))
        self.counts = np.zeros(len(rows), dtype=np.int64)
        self.windows_correct = self.windows_scored = self.windows_ambiguous = 0
        self.temperature = float(temperature)
        self.nll = {"tempered": 0.0, "raw": 0.0}
        self.confidence = {"tempered": array.array("f"), "raw": array.array("f")}
        self.correct = array.array("b")

    def add(self, pred: Prediction) -> None:
        inside = np.flatnonzero((self.starts <= pred.start_us) & (pred.end_us <= self.ends))
        if not len(inside):
            return
        self.sums[inside] += pred.probs
        self.counts[inside] += 1
        truth = np.unique(self.classes[inside])
        if len(truth) > 1:
            self.windows_ambiguous += 1
            return
        self.windows_scored += 1
        self.windows_correct += int(pred.top_class == truth[0])
        self.correct.append(int(pred.top_class == truth[0]))
        raw = temper(torch.from_numpy(np.asarray(pred.probs, dtype=np.float64)), 1.0 / self.temperature).numpy()
        for key, probs in (("tempered", pred.probs), ("raw", raw)):
            self.nll[key] -= float(np.log(max(float(probs[truth[0]]), NLL_EPS)))
            self.confidence[key].append(float(np.max(probs)))

    def result(self) -> dict:
        scored = self.counts > 0
        predicted = self.sums[scored].argmax(axis=1) if scored.any() else np.zeros(0, dtype=np.int64)
        correct = int((predicted == self.classes[scored]).sum())
        n = int(scored.sum())
        return {
            "gestures": len(self.classes),
            "gestures_scored": n,
            "gestures_correct": correct,
            "gesture_accuracy": correct / n if n else None,
            "windows_scored": self.windows_scored,
            "windows_correct": self.windows_correct,
            "window_accuracy": self.windows_correct / self.windows_scored if self.windows_scored else None,
            "windows_ambiguous": self.windows_ambiguous,
            "temperature": self.temperature,
            **{
                f"window_{figure}{suffix}": value
                for suffix, key in (("", "tempered"), ("_at_t1", "raw"))
                for figure, value in self._calibration(key).items()
            },
        }

    def _calibration(self, key: str) -> dict:
        if not self.windows_scored:
            return {"nll": None, "ece": None}
        confidence = np.asarray(self.confidence[key], dtype=np.float64)
        correct = np.asarray(self.correct, dtype=bool)
        return {"nll": self.nll[key] / self.windows_scored, "ece": expected_calibration_error(confidence, correct)}


def _pieces(chunk: np.ndarray, clf: StreamingClassifier):
    """The chunk, split before its first out-of-order event (unless sorting), so that the good part is
    predicted before the error is raised on the rest."""
    i = -1 if clf.windows.sort_chunks else first_disorder(chunk, clf.windows.last_t)
    return [chunk] if i <= 0 else [chunk[:i], chunk[i:]]


def replay(
    checkpoint,
    recording,
    *,
    labels=None,
    window_us: int | None = None,
    hop_us: int | None = None,
    mc: dict | None = None,
    decay: float = 1.0,
    seed: int = 0,
    downsample: int | None = None,
    crop=None,
    sort_chunks: bool = False,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    predictions=None,
    timeline=None,
    summary_path=None,
    progress: bool = True,
) -> dict:
    """Stream ``recording`` through ``checkpoint``'s network in chunks of at most ``chunk_events`` and return the
    summary (also printed; written as JSON to ``summary_path``).

    ``recording``: an event file, or an open :class:`events.live.LiveSource` (closed here), whose packets are
    predicted as they arrive. A live stream ends as a file does (the remaining windows are flushed, the summary
    and timeline written) when its source ends or is stopped, and also when it is lost
    (:class:`events.live.SourceLost`), which is raised once every output is written. A live stream's summary also
    counts the gaps in its event clock (``events.live.ClockGaps``: data the source may have dropped), with a
    warning line when there is one.

    ``labels``: a DVS Gesture labels CSV to score against; ``mc``: the Monte Carlo settings to change from the
    stream's (``pipelines.stream.STREAM_MC``), by ``nsm.MCSettings`` field (``{"samples": K}``, ``{"adaptive":
    True, "max_samples": ...}``; ``MCSettings.overridden``), at the checkpoint's fitted temperature; the other
    settings as ``StreamingClassifier.from_checkpoint`` takes them.
    ``predictions`` is the user's live output, so it is deliberately not written atomically: it is opened
    (truncated) at the start and each prediction is appended as one JSON line and flushed at once, so that
    ``tail -f`` follows the stream and a damaged or out-of-order input keeps every prediction made before the
    error is raised; it may be a FIFO or a device. The timeline PNG is written atomically at the end.

    Before anything is read or opened, an output that is one of the inputs (the checkpoint, the event file, the
    labels; also through a symbolic or hard link), or a summary or timeline path that exists and is not a regular
    file, is an ``OutputError`` naming it (``events.atomic.check_output``).
    """
    mc = STREAM_MC.overridden(**(mc or {}))
    live = isinstance(recording, LiveSource)
    name = recording.name if live else str(recording)
    chunk_events = check_chunk_size(chunk_events, name, "chunk_events")  # before any output is opened
    inputs = {"--checkpoint": checkpoint, "--events": None if live else recording, "--labels": labels}
    if predictions:
        check_output(predictions, inputs, regular=False)
    for path in (summary_path, timeline):
        if path:
            check_output(path, inputs)
    labels = parse_labels(labels) if labels else None
    with recording if live else events.reader(recording) as reader:
        clf = StreamingClassifier.from_checkpoint(
            checkpoint,
            sensor_size=reader.sensor_size,
            window_us=window_us,
            hop_us=hop_us,
            decay=decay,
            seed=seed,
            downsample=downsample,
            crop=crop,
            sort_chunks=sort_chunks,
            source=name,
            mc=mc,
        )
        n_classes = int(clf.model.spec["num_classes"])
        scorer = LabelScorer(labels, n_classes, clf.mc.temperature) if labels is not None else None
        fs = clf.frame_spec
        print(
            f"streaming {name} ({reader.format}, {reader.sensor_size.width}x{reader.sensor_size.height}) "
            f"through {clf.model.spec['name']}: {clf.window_us / 1e3:g} ms windows every {clf.hop_us / 1e3:g} ms, "
            f"{clf.n_frames} frames, crop {fs.crop or 'none'}, downsample {fs.downsample}, "
            + (
                f"adaptive {clf.mc.min_samples}-{clf.mc.max_samples} samples"
                if clf.mc.adaptive
                else f"{clf.mc.samples} samples"
            )
            + f" at temperature {clf.mc.temperature:.3g}",
            flush=True,
        )
        stats = _Stats(n_classes, keep_probs=bool(timeline))
        if predictions:
            Path(predictions).parent.mkdir(parents=True, exist_ok=True)
        out = open(predictions, "w", encoding="utf-8") if predictions else None
        started = time.perf_counter()
        bar = tqdm(
            desc="stream",
            unit="s rec",
            disable=not progress,
            bar_format=("{desc}: {n:.2f} s of recording [{elapsed}, {rate_fmt}]{postfix}"),
            mininterval=0.5,
        )
        try:

            def emit(preds):
                for pred in preds:
                    stats.add(pred)
                    if scorer is not None:
                        scorer.add(pred)
                    if out is not None:
                        out.write(json.dumps(pred.to_dict()) + "\n")
                        out.flush()
                if preds:
                    last = preds[-1]
                    bar.set_postfix_str(
                        f"{last.class_name or last.top_class} {last.confidence:.2f} | accumulated "
                        f"{last.accumulated_class_name or last.accumulated_class} "
                        f"{last.accumulated_confidence or 0:.2f}",
                        refresh=False,
                    )

            lost = None
            try:
                for chunk in reader.iter_chunks(chunk_events):
                    for piece in _pieces(chunk, clf):
                        emit(clf.push(piece))
                    w = clf.windows
                    if w.last_t is not None and w.origin_us is not None:
                        bar.update((w.last_t - w.origin_us) * 1e-6 - bar.n)
            except SourceLost as err:
                lost = err
            origin = clf.windows.origin_us
            emit(clf.flush())
        finally:
            bar.close()
            if out is not None:
                out.close()
    wall = time.perf_counter() - started
    summary = stats.summary(wall)
    if live:
        summary.update(recording.clock_gaps.summary())
    if scorer is not None:
        summary.update(scorer.result())
    _print_summary(summary)
    summary["source"] = name
    if summary_path:
        write_text_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
        print(f"summary: {summary_path}")
    if timeline:
        ends, probs, acc_conf = stats.timeline()
        plot_timeline(
            timeline,
            ends,
            probs,
            origin_us=origin if origin is not None else 0,
            classes=clf.classes,
            labels=labels,
            accumulated_confidence=acc_conf,
            title=f"{name if live else Path(recording).name}: {clf.model.spec['name']}, "
            f"{clf.window_us / 1e3:g} ms windows, hop {clf.hop_us / 1e3:g} ms",
        )
        print(f"timeline: {timeline}")
    if predictions:
        print(f"predictions: {predictions}")
    if lost is not None:
        raise lost
    return summary


class _Stats:
    """Running figures of a stream: counts, samples and per-window latencies (4 bytes a window); for the
    timeline also each window's end, probabilities and accumulated confidence (8 + 4 x (classes + 1) bytes)."""

    def __init__(self, num_classes: int, keep_probs: bool):
        self.n = self.empty = 0
        self.samples = 0
        self.first_start = self.last_end = None
        self.latency = array.array("f")
        self.keep_probs = keep_probs
        self.ends = array.array("q")
        self.probs = array.array("f")
        self.acc_conf = array.array("f")
        self.num_classes = num_classes

    def add(self, pred: Prediction) -> None:
        self.n += 1
        self.empty += pred.empty
        self.samples += pred.samples
        self.first_start = pred.start_us if self.first_start is None else self.first_start
        self.last_end = pred.end_us
        self.latency.append(pred.latency_ms)
        if self.keep_probs:
            self.ends.append(pred.end_us)
            self.probs.extend(pred.probs.astype(np.float32))
            self.acc_conf.append(np.nan if pred.accumulated_confidence is None else pred.accumulated_confidence)

    def summary(self, wall_s: float) -> dict:
        lat = np.asarray(self.latency, dtype=np.float64)
        span = 0 if self.n == 0 else (self.last_end - self.first_start) * 1e-6
        return {
            "windows": self.n,
            "empty_windows": self.empty,
            "mean_samples": self.samples / self.n if self.n else None,
            "recording_s": span,
            "wall_s": wall_s,
            "real_time_factor": span / wall_s if wall_s > 0 else None,
            "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
            "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None,
        }

    def timeline(self):
        probs = np.asarray(self.probs, dtype=np.float32).reshape(-1, self.num_classes)
        return np.asarray(self.ends, dtype=np.int64), probs, np.asarray(self.acc_conf, dtype=np.float32)


def _print_summary(s: dict) -> None:
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    print(
        f"windows: {s['windows']} ({s['empty_windows']} empty), mean samples {fmt(s['mean_samples'], '.1f')}, "
        f"{s['recording_s']:.2f} s of recording in {s['wall_s']:.2f} s "
        f"(real-time factor {fmt(s['real_time_factor'], '.2f')}), latency p50 {fmt(s['latency_ms_p50'], '.1f')} ms, "
        f"p99 {fmt(s['latency_ms_p99'], '.1f')} ms"
    )
    if s.get("clock_gaps"):
        gap = s["largest_clock_gap"]
        print(
            f"warning: {s['clock_gaps']} gap{'s' * (s['clock_gaps'] > 1)} in the event clock ({s['clock_gap_s']:.2f} s "
            f"in all; the largest {gap['length_s']:.2f} s at {gap['at_s']:.2f} s, after {gap['events_per_s']:.0f} "
            "events/s): the source may have dropped data, and its windows are empty"
        )
    if "gestures" in s:
        print(
            f"gesture accuracy: {fmt(s['gesture_accuracy'], '.3f')} ({s['gestures_correct']}/{s['gestures_scored']} "
            f"gestures with a window inside; {s['gestures']} labelled)"
        )
        print(
            f"window accuracy: {fmt(s['window_accuracy'], '.3f')} ({s['windows_correct']}/{s['windows_scored']} "
            f"windows inside a gesture; {s['windows_ambiguous']} in overlapping gestures left out)"
        )
        print(
            f"window calibration at temperature {s['temperature']:.3g}: NLL {fmt(s['window_nll'], '.3f')}, ECE "
            f"{fmt(s['window_ece'], '.3f')}; at temperature 1: NLL {fmt(s['window_nll_at_t1'], '.3f')}, ECE "
            f"{fmt(s['window_ece_at_t1'], '.3f')}"
        )
