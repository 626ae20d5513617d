"""Streaming inference: a decision with a calibrated confidence as the events arrive (``nsm stream``).

:class:`StreamingClassifier` takes event chunks of any size, in time order, and returns one
:class:`Prediction` for each hop as soon as its window is complete. Windows follow
:mod:`events.stream`: window ``k`` covers ``[origin + k*hop, origin + k*hop + window)``, the origin being
the first event's time, and is complete once an event at or after its end has been seen (or
``flush`` ends the stream). Defaults: the window is the frame spec's clip, ``frames_per_clip`` frames of
``time_window_us`` (96 ms for six 16 ms frames), the hop half a window.

Model input of a window: its events binned into ``T = frames_per_clip`` frames of ``window / T`` µs
each, relative to the window's start (:func:`events.stream.window_frames`), polarity, crop and
downsampling from the frame spec, as a float32 tensor ``(1, T, P, H, W)`` of counts (the networks
binarize themselves). A sensor larger than the model's input is centre-cropped to ``input_size x
downsample`` first (:func:`events.stream.fit_frame_spec`); one that cannot fill it is an error.

Prediction: Monte Carlo over the network's noise, ``samples=K`` passes or adaptive sampling (stop
once the running mean's top probability reaches ``threshold``, between ``min_samples`` and
``max_samples`` passes, drawn in at most two rounds: the minimum, then the rest). Each window draws its noise from its own ``torch.Generator`` seeded from
``(seed, window index)``, so a window's result depends only on its events, the model and the seed:
pushing a recording at once, in chunks of any size, or windowing it offline with
:func:`predict_recording` gives identical predictions.

Evidence accumulation: next to each window's own output, a running mean of the probabilities of all
non-empty windows since the last :meth:`StreamingClassifier.reset_evidence` (or the start), each
earlier window's weight multiplied by ``decay`` per window (``decay=1``: plain mean; ``decay<1``
forgets, so a new gesture takes over). A window without events carries no evidence: its own
prediction is still made (``empty=True``) and the accumulated fields are carried over unchanged.

Memory: the classifier holds the events of the windows not yet predicted (about one window plus the
chunk being pushed), never the recording. ``nsm stream`` additionally keeps a few numbers a window
for its summary (latency, and the probabilities when a timeline is drawn) and one running sum per
labelled gesture.
"""
from __future__ import annotations

import argparse
import array
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

import events
import nsm
from events.stream import SlidingWindows, Window, first_disorder, fit_frame_spec, iter_windows, window_frames
from events.types import check_in_bounds

from .checkpoint import load_checkpoint
from .figures import plot_timeline
from .files import write_text_atomic

DEFAULT_SAMPLES = 8          # fixed K when neither samples nor adaptive is given
DEFAULT_MIN_SAMPLES = 4      # adaptive sampling: at least this many passes ...
DEFAULT_MAX_SAMPLES = 16     # ... and at most this many, which bounds a window's latency
DEFAULT_CHUNK_EVENTS = 8_192     # events read per chunk by nsm stream (about 0.4 s of a DVS Gesture recording)
TIMING_FIELDS = ("latency_ms", "compute_ms")  # the Prediction fields that differ from run to run


def window_seed(seed: int, index: int) -> int:
    """The noise seed of window ``index``: a 63-bit hash of ``(seed, index)`` (``numpy.random.SeedSequence``)."""
    hi, lo = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return ((int(hi) << 32) | int(lo)) & ((1 << 63) - 1)


def _entropy(p: np.ndarray) -> float:
    """Predictive entropy ``-sum p log p`` in nats (0 log 0 = 0)."""
    q = p[p > 0]
    return float(-(q * np.log(q)).sum())


@dataclass
class Prediction:
    """The classifier's output for one window.

    ``index``, ``start_us``, ``end_us``: the window ``[start_us, end_us)``; ``n_events`` its events (on the
    sensor, before cropping), ``empty`` when there were none. ``probs`` (classes,) the Monte Carlo mean of
    the softmax; ``top_class``/``class_name`` its argmax, ``confidence`` its max, ``entropy`` its predictive
    entropy (nats), ``samples`` the passes drawn. ``accumulated_*``: the evidence accumulated up to and
    including this window (``None`` before any non-empty window), ``accumulated_windows`` the summed
    (decayed) weight behind it. ``latency_ms``: from the ``push``/``flush`` call that completed the window
    to its prediction; ``compute_ms``: binning and inference of this window alone.
    """

    index: int
    start_us: int
    end_us: int
    n_events: int
    empty: bool
    probs: np.ndarray
    top_class: int
    class_name: str | None
    confidence: float
    entropy: float
    samples: int
    accumulated_probs: np.ndarray | None
    accumulated_class: int | None
    accumulated_class_name: str | None
    accumulated_confidence: float | None
    accumulated_windows: float
    latency_ms: float
    compute_ms: float

    def to_dict(self) -> dict:
        """JSON-ready dict; probabilities rounded to 1e-6, times in µs and ms."""
        def probs(p):
            return None if p is None else [round(float(v), 6) for v in p]

        return {
            "index": self.index, "start_us": self.start_us, "end_us": self.end_us, "n_events": self.n_events,
            "empty": self.empty, "top_class": self.top_class, "class_name": self.class_name,
            "confidence": round(self.confidence, 6), "entropy": round(self.entropy, 6), "samples": self.samples,
            "probs": probs(self.probs), "accumulated_class": self.accumulated_class,
            "accumulated_class_name": self.accumulated_class_name,
            "accumulated_confidence": None if self.accumulated_confidence is None
            else round(self.accumulated_confidence, 6),
            "accumulated_probs": probs(self.accumulated_probs),
            "accumulated_windows": round(self.accumulated_windows, 6),
            "latency_ms": round(self.latency_ms, 3), "compute_ms": round(self.compute_ms, 3),
        }


class StreamingClassifier:
    """Classify an event stream window by window (see the module docstring).

    ``model``: a network from ``models.create_model`` (its ``spec`` gives ``in_channels`` and ``input_size``).
    ``frame_spec``: the :class:`events.FrameSpec` (or its dict) the model was trained with: polarity,
    downsampling, crop, ``time_window_us`` and ``frames_per_clip``. ``sensor_size``: ``(width, height[, p])``
    of the incoming events; default the sensor the spec implies (its crop, else input size x downsample).
    ``window_us``/``hop_us``: default ``frames_per_clip * time_window_us`` and half of it; the window must
    split into ``frames_per_clip`` frames of whole µs. ``samples`` or ``adaptive`` (with ``threshold``,
    ``min_samples``, ``max_samples``): Monte Carlo as ``nsm.mc_predict``; neither gives ``samples=8``.
    ``decay``: evidence weight kept per window, in (0, 1]. ``seed``: noise seed (>= 0). ``classes``: names.
    ``downsample``/``crop``: override the spec's (crop as ``(width, height)``). ``origin_us``: start of
    window 0 (default: first event). ``sort_chunks``: sort chunks by time instead of rejecting disorder.
    ``source``: the file name errors report.

    The NSM layers' effective weights are computed once per stream (an ``nsm.WeightCache``): in-place updates
    of the parameters are noticed at once, edits through ``.data`` after :meth:`reset` (or :meth:`flush`).
    """

    def __init__(self, model: nn.Module, frame_spec, sensor_size=None, *, window_us: int | None = None,
                 hop_us: int | None = None, samples: int | None = None, adaptive: bool = False,
                 threshold: float = 0.9, min_samples: int = DEFAULT_MIN_SAMPLES,
                 max_samples: int = DEFAULT_MAX_SAMPLES, decay: float = 1.0, seed: int = 0,
                 classes=None, downsample: int | None = None, crop=None, origin_us: int | None = None,
                 sort_chunks: bool = False, source=None):
        spec_dict = getattr(model, "spec", None)
        if not spec_dict or "in_channels" not in spec_dict or "input_size" not in spec_dict:
            raise ValueError("model must be built by models.create_model (its spec gives in_channels and input_size)")
        if frame_spec is None:
            raise ValueError("a frame spec is needed (the checkpoint has none: pass frame_spec=...)")
        spec = frame_spec if isinstance(frame_spec, events.FrameSpec) else events.FrameSpec.from_dict(frame_spec)
        if spec.overlap:
            raise ValueError(f"streaming bins windows into back-to-back frames; the spec's overlap={spec.overlap} "
                             "is not supported")
        in_channels, input_size = int(spec_dict["in_channels"]), tuple(int(s) for s in spec_dict["input_size"])
        if in_channels % spec.channels:
            raise ValueError(f"the model's {in_channels} input channels are not a multiple of the spec's "
                             f"{spec.channels} polarity channel(s)")
        n_frames = in_channels // spec.channels
        if spec.frames_per_clip is not None and spec.frames_per_clip != n_frames:
            raise ValueError(f"the spec's frames_per_clip={spec.frames_per_clip} does not match the model's "
                             f"{in_channels} input channels / {spec.channels} polarity channel(s) = {n_frames}")
        if sensor_size is None:  # the sensor the spec implies
            f = spec.downsample if downsample is None else downsample
            sensor_size = crop if crop is not None else spec.crop if spec.crop is not None else \
                (input_size[1] * f, input_size[0] * f)
        self.sensor_size = events.SensorSize(int(sensor_size[0]), int(sensor_size[1]),
                                             int(sensor_size[2]) if len(sensor_size) > 2 else 2)
        self.frame_spec = fit_frame_spec(spec, self.sensor_size, input_size, downsample=downsample,
                                         crop=None if crop is None else tuple(crop))
        self.n_frames = n_frames
        if window_us is None:
            if spec.time_window_us is None:
                raise ValueError(f"the spec slices by {spec.mode}; give window_us for streaming")
            window_us = n_frames * spec.time_window_us
        if not isinstance(window_us, (int, np.integer)) or window_us < n_frames or window_us % n_frames:
            raise ValueError(f"window_us={window_us!r} must be a whole number of µs that splits into "
                             f"{n_frames} frames of whole µs")
        hop_us = int(window_us) // 2 if hop_us is None else hop_us
        self.windows = SlidingWindows(int(window_us), hop_us, origin_us=origin_us, sensor_size=self.sensor_size,
                                      sort_chunks=sort_chunks, source=source)
        if samples is not None and adaptive:
            raise ValueError("give either samples=K or adaptive=True, not both")
        if not adaptive:
            samples = DEFAULT_SAMPLES if samples is None else samples
            if isinstance(samples, bool) or not isinstance(samples, (int, np.integer)) or samples < 1:
                raise ValueError(f"samples must be an integer >= 1, got {samples!r}")
            self.mc = {"samples": int(samples)}
        else:
            if not 0.0 < threshold <= 1.0:
                raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
            if not 1 <= min_samples <= max_samples:
                raise ValueError(f"need 1 <= min_samples <= max_samples, got {min_samples}, {max_samples}")
            # Two rounds at most: the minimum, then the rest for a window still undecided. A window's latency is
            # then at most two forward passes; with a small network (overhead-bound) this is also the fastest.
            self.mc = {"adaptive": True, "threshold": float(threshold), "min_samples": int(min_samples),
                       "max_samples": int(max_samples), "step": max(1, int(max_samples) - int(min_samples))}
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"decay must be in (0, 1], got {decay!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.decay, self.seed = float(decay), int(seed)
        self.model = model
        self._weights = nsm.WeightCache(model)
        self.classes = None if classes is None else [str(c) for c in classes]
        self._generator = torch.Generator()
        self.reset_evidence()

    @classmethod
    def from_checkpoint(cls, path, **overrides) -> "StreamingClassifier":
        """A classifier for the network of a checkpoint (``pipelines.checkpoint``), with its classes and
        frame spec; keyword arguments override any constructor argument (``frame_spec`` and ``classes`` too)."""
        ck = load_checkpoint(path)
        overrides.setdefault("frame_spec", ck.frame_spec)
        overrides.setdefault("classes", ck.classes)
        frame_spec = overrides.pop("frame_spec")
        if frame_spec is None:
            raise ValueError(f"{path}: the checkpoint holds no frame spec; pass frame_spec=...")
        return cls(ck.model, frame_spec, **overrides)

    @property
    def window_us(self) -> int:
        return self.windows.window_us

    @property
    def hop_us(self) -> int:
        return self.windows.hop_us

    def reset_evidence(self) -> None:
        """Forget the accumulated evidence (e.g. when a new gesture starts); windows go on as before."""
        self._acc_sum: np.ndarray | None = None
        self._acc_weight = 0.0

    def reset(self) -> None:
        """Start a new stream: forget buffered events, window numbering and evidence; re-read the parameters."""
        self.windows.reset()
        self.reset_evidence()
        self._weights = nsm.WeightCache(self.model)

    def push(self, chunk: np.ndarray, now_us: int | None = None) -> list[Prediction]:
        """Add events (``EVENT_DTYPE``, time order); return the predictions of the windows they complete.

        ``now_us``: the stream is known complete before this time even without events (a quiet camera).
        Disorder raises ``EventFormatError`` (unless ``sort_chunks``) and leaves the state unchanged.
        """
        called = time.perf_counter()
        return [self.predict_window(w, called) for w in self.windows.push(chunk, now_us)]

    def flush(self, end_us: int | None = None) -> list[Prediction]:
        """End the stream at ``end_us`` (default one µs past the last event) and predict the windows that
        end by then; windows reaching past it are dropped. Then :meth:`reset` for a new stream."""
        called = time.perf_counter()
        out = [self.predict_window(w, called) for w in self.windows.flush(end_us)]
        self.reset()
        return out

    def model_input(self, window: Window) -> torch.Tensor:
        """The float32 tensor ``(1, T, P, H, W)`` of event counts the network sees for ``window``."""
        frames = window_frames(window.events, self.sensor_size, self.frame_spec, window.start_us, window.end_us,
                               self.n_frames)
        return torch.from_numpy(frames).unsqueeze(0)

    def predict_window(self, window: Window, called: float | None = None) -> Prediction:
        """Predict one complete window and fold it into the evidence (``called``: ``perf_counter()`` at the
        moment its data was handed over, for ``latency_ms``; default now)."""
        started = time.perf_counter()
        called = started if called is None else called
        x = self.model_input(window)
        self._generator.manual_seed(window_seed(self.seed, window.index))
        with self._weights:
            res = nsm.mc_predict(self.model, x, generator=self._generator, **self.mc)
        probs = res.probs[0].double().numpy()
        if not window.empty:
            base = np.zeros_like(probs) if self._acc_sum is None else self._acc_sum * self.decay
            self._acc_sum = base + probs
            self._acc_weight = self._acc_weight * self.decay + 1.0
        acc = None if self._acc_sum is None else self._acc_sum / self._acc_weight
        top = int(probs.argmax())
        acc_top = None if acc is None else int(acc.argmax())
        done = time.perf_counter()
        return Prediction(
            index=window.index, start_us=window.start_us, end_us=window.end_us, n_events=len(window.events),
            empty=window.empty, probs=probs, top_class=top, class_name=self._name(top),
            confidence=float(probs[top]), entropy=_entropy(probs), samples=int(res.samples_used[0]),
            accumulated_probs=acc, accumulated_class=acc_top, accumulated_class_name=self._name(acc_top),
            accumulated_confidence=None if acc is None else float(acc[acc_top]),
            accumulated_windows=self._acc_weight, latency_ms=(done - called) * 1e3,
            compute_ms=(done - started) * 1e3)

    def _name(self, k: int | None) -> str | None:
        if k is None or self.classes is None or k >= len(self.classes):
            return None
        return self.classes[k]


def predict_recording(model: nn.Module, events_array: np.ndarray, frame_spec, sensor_size=None, *,
                      end_us: int | None = None, **kw) -> list[Prediction]:
    """Offline: window a whole time-ordered recording with :func:`events.stream.iter_windows` and predict
    every window as :class:`StreamingClassifier` would (same arguments; ``end_us`` as in ``flush``).

    Holds the whole recording: for tests and small inputs. Equal, window for window (timings aside), to
    pushing the same events through a ``StreamingClassifier`` in chunks of any size and flushing.
    """
    clf = StreamingClassifier(model, frame_spec, sensor_size, **kw)
    check_in_bounds(events_array, clf.sensor_size, kw.get("source"))
    return [clf.predict_window(w) for w in iter_windows(events_array, clf.window_us, clf.hop_us,
                                                         origin_us=kw.get("origin_us"), end_us=end_us)]


# --------------------------------------------------------------------------------------------
# labels, summary, timeline
# --------------------------------------------------------------------------------------------

class LabelScorer:
    """Accuracy against DVS Gesture labels, accumulated one prediction at a time (memory: one sum per gesture).

    ``labels``: ``(class 1..C, start_us, end_us)`` rows (``events.datasets.parse_labels``); class ``c`` is
    index ``c - 1``. A window counts for a gesture when it lies fully inside ``[start, end)``. A gesture's
    prediction is the argmax of the mean probabilities of its windows (gestures without a window are
    reported as unscored). Per-window accuracy covers windows inside a labelled gesture; a window inside
    overlapping gestures of different classes is ambiguous and left out (counted).
    """

    def __init__(self, labels, num_classes: int):
        rows = np.asarray([(int(c), int(s), int(e)) for c, s, e in labels], dtype=np.int64).reshape(-1, 3)
        bad = (rows[:, 0] < 1) | (rows[:, 0] > num_classes)
        if bad.any():
            raise ValueError(f"label class {int(rows[bad][0, 0])} outside 1..{num_classes} (the model's classes)")
        self.classes, self.starts, self.ends = rows[:, 0] - 1, rows[:, 1], rows[:, 2]
        self.sums = np.zeros((len(rows), num_classes))
        self.counts = np.zeros(len(rows), dtype=np.int64)
        self.windows_correct = self.windows_scored = self.windows_ambiguous = 0

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

    def result(self) -> dict:
        scored = self.counts > 0
        predicted = self.sums[scored].argmax(axis=1) if scored.any() else np.zeros(0, dtype=np.int64)
        correct = int((predicted == self.classes[scored]).sum())
        n = int(scored.sum())
        return {"gestures": len(self.classes), "gestures_scored": n, "gestures_correct": correct,
                "gesture_accuracy": correct / n if n else None,
                "windows_scored": self.windows_scored, "windows_correct": self.windows_correct,
                "window_accuracy": self.windows_correct / self.windows_scored if self.windows_scored else None,
                "windows_ambiguous": self.windows_ambiguous}


# --------------------------------------------------------------------------------------------
# nsm stream
# --------------------------------------------------------------------------------------------

def _ms_to_us(value: float | None, name: str) -> int | None:
    if value is None:
        return None
    us = round(value * 1000)
    if us < 1 or abs(us - value * 1000) > 1e-6:
        raise ValueError(f"{name} must be a positive whole number of µs in ms (e.g. 96 or 0.5), got {value}")
    return int(us)


def _crop_arg(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"crop must be WIDTHxHEIGHT, e.g. 256x256 (got {text!r})") from None
    return w, h


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pt) of a trained network")
    p.add_argument("--events", required=True, help="event file: AEDAT 3.1/4, N-MNIST .bin, .npy, HDF5")
    p.add_argument("--labels", help="DVS Gesture labels CSV (class,startTime_usec,endTime_usec) for accuracy")
    p.add_argument("--window-ms", type=float, help="window length in ms (default: frames_per_clip x the frame length)")
    p.add_argument("--hop-ms", type=float, help="hop between window starts in ms (default: half a window)")
    mc = p.add_mutually_exclusive_group()
    mc.add_argument("--samples", type=int, help=f"Monte Carlo passes per window (default {DEFAULT_SAMPLES})")
    mc.add_argument("--adaptive", action="store_true", help="adaptive sampling: stop once confident")
    p.add_argument("--threshold", type=float, default=0.9, help="adaptive: top-probability threshold (0.9)")
    p.add_argument("--min-samples", type=int, default=DEFAULT_MIN_SAMPLES,
                   help=f"adaptive: fewest passes ({DEFAULT_MIN_SAMPLES})")
    p.add_argument("--max-samples", type=int, default=DEFAULT_MAX_SAMPLES,
                   help=f"adaptive: most passes ({DEFAULT_MAX_SAMPLES})")
    p.add_argument("--decay", type=float, default=1.0,
                   help="evidence weight kept per window, in (0, 1] (1: running mean of all windows)")
    p.add_argument("--out", help="write one JSON line per prediction here (flushed line by line)")
    p.add_argument("--timeline", help="write a PNG of class probabilities over time (labels shaded)")
    p.add_argument("--summary", help="write the final summary (windows, accuracy, real-time factor, latency) as JSON")
    p.add_argument("--sort-chunks", action="store_true", help="sort each chunk by time instead of rejecting "
                                                              "out-of-order timestamps")
    p.add_argument("--chunk-events", type=int, default=DEFAULT_CHUNK_EVENTS,
                   help=f"events read per chunk ({DEFAULT_CHUNK_EVENTS})")
    p.add_argument("--seed", type=int, default=0, help="noise seed (0); the same seed gives the same predictions")
    p.add_argument("--downsample", type=int, help="override the checkpoint's downsampling factor")
    p.add_argument("--crop", type=_crop_arg, help="override the centre crop, WIDTHxHEIGHT (before downsampling)")
    p.add_argument("--threads", type=int, help="torch threads for inference (default: torch's own choice; "
                                               "1 is often faster for small networks or on a busy machine)")
    p.add_argument("--quiet", action="store_true", help="no progress line")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "stream", help="classify an event recording window by window with calibrated confidence",
        description="Replay an event file in chunks through a trained network: one prediction per hop once "
                    "its window is complete (per-window and accumulated class probabilities, confidence, "
                    "entropy, samples, latency), a live progress line, JSON lines, a summary (accuracy with "
                    "--labels) and an optional timeline PNG.")
    add_arguments(p)
    p.set_defaults(func=run)


def _pieces(chunk: np.ndarray, clf: StreamingClassifier):
    """The chunk, split before its first out-of-order event (unless sorting), so that the good part is
    predicted before the error is raised on the rest."""
    i = -1 if clf.windows.sort_chunks else first_disorder(chunk, clf.windows.last_t)
    return [chunk] if i <= 0 else [chunk[:i], chunk[i:]]


def run(args) -> int:
    """``nsm stream``.

    ``--out`` is the user's live output, so it is deliberately not written atomically: it is opened
    (truncated) at the start and each prediction is appended as one JSON line and flushed at once, so
    that ``tail -f`` follows the stream and a damaged or out-of-order input keeps every prediction made
    before the error is raised. The timeline PNG is written atomically at the end.
    """
    from tqdm import tqdm

    from events.datasets import parse_labels

    window_us, hop_us = _ms_to_us(args.window_ms, "--window-ms"), _ms_to_us(args.hop_ms, "--hop-ms")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    labels = parse_labels(args.labels) if args.labels else None
    with events.reader(args.events) as reader:
        mc = {"adaptive": True, "threshold": args.threshold, "min_samples": args.min_samples,
              "max_samples": args.max_samples} if args.adaptive else {"samples": args.samples}
        clf = StreamingClassifier.from_checkpoint(
            args.checkpoint, sensor_size=reader.sensor_size, window_us=window_us, hop_us=hop_us, decay=args.decay,
            seed=args.seed, downsample=args.downsample, crop=args.crop, sort_chunks=args.sort_chunks,
            source=str(args.events), **mc)
        n_classes = int(clf.model.spec["num_classes"])
        scorer = LabelScorer(labels, n_classes) if labels is not None else None
        fs = clf.frame_spec
        print(f"streaming {args.events} ({reader.format}, {reader.sensor_size.width}x{reader.sensor_size.height}) "
              f"through {clf.model.spec['name']}: {clf.window_us / 1e3:g} ms windows every {clf.hop_us / 1e3:g} ms, "
              f"{clf.n_frames} frames, crop {fs.crop or 'none'}, downsample {fs.downsample}, "
              + (f"adaptive {args.min_samples}-{args.max_samples} samples" if args.adaptive
                 else f"{clf.mc['samples']} samples"), flush=True)
        stats = _Stats(n_classes, keep_probs=bool(args.timeline))
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        out = open(args.out, "w", encoding="utf-8") if args.out else None
        started = time.perf_counter()
        bar = tqdm(desc="stream", unit="s rec", disable=args.quiet, bar_format=(
            "{desc}: {n:.2f} s of recording [{elapsed}, {rate_fmt}]{postfix}"), mininterval=0.5)
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
                    bar.set_postfix_str(f"{last.class_name or last.top_class} {last.confidence:.2f} | accumulated "
                                        f"{last.accumulated_class_name or last.accumulated_class} "
                                        f"{last.accumulated_confidence or 0:.2f}", refresh=False)

            for chunk in reader.iter_chunks(args.chunk_events):
                for piece in _pieces(chunk, clf):
                    emit(clf.push(piece))
                w = clf.windows
                if w.last_t is not None and w.origin_us is not None:
                    bar.update((w.last_t - w.origin_us) * 1e-6 - bar.n)
            origin = clf.windows.origin_us
            emit(clf.flush())
        finally:
            bar.close()
            if out is not None:
                out.close()
    wall = time.perf_counter() - started
    summary = stats.summary(wall)
    if scorer is not None:
        summary.update(scorer.result())
    _print_summary(summary)
    if args.summary:
        summary["source"] = str(args.events)
        write_text_atomic(args.summary, json.dumps(summary, indent=2) + "\n")
        print(f"summary: {args.summary}")
    if args.timeline:
        ends, probs, acc_conf = stats.timeline()
        plot_timeline(args.timeline, ends, probs, origin_us=origin if origin is not None else 0,
                      classes=clf.classes, labels=labels, accumulated_confidence=acc_conf,
                      title=f"{Path(args.events).name}: {clf.model.spec['name']}, "
                            f"{clf.window_us / 1e3:g} ms windows, hop {clf.hop_us / 1e3:g} ms")
        print(f"timeline: {args.timeline}")
    if args.out:
        print(f"predictions: {args.out}")
    return 0


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
        return {"windows": self.n, "empty_windows": self.empty,
                "mean_samples": self.samples / self.n if self.n else None,
                "recording_s": span, "wall_s": wall_s, "real_time_factor": span / wall_s if wall_s > 0 else None,
                "latency_ms_p50": float(np.percentile(lat, 50)) if len(lat) else None,
                "latency_ms_p99": float(np.percentile(lat, 99)) if len(lat) else None}

    def timeline(self):
        probs = np.asarray(self.probs, dtype=np.float32).reshape(-1, self.num_classes)
        return np.asarray(self.ends, dtype=np.int64), probs, np.asarray(self.acc_conf, dtype=np.float32)


def _print_summary(s: dict) -> None:
    def fmt(v, spec):
        return "n/a" if v is None else format(v, spec)

    print(f"windows: {s['windows']} ({s['empty_windows']} empty), mean samples {fmt(s['mean_samples'], '.1f')}, "
          f"{s['recording_s']:.2f} s of recording in {s['wall_s']:.2f} s "
          f"(real-time factor {fmt(s['real_time_factor'], '.2f')}), latency p50 {fmt(s['latency_ms_p50'], '.1f')} ms, "
          f"p99 {fmt(s['latency_ms_p99'], '.1f')} ms")
    if "gestures" in s:
        print(f"gesture accuracy: {fmt(s['gesture_accuracy'], '.3f')} ({s['gestures_correct']}/{s['gestures_scored']} "
              f"gestures with a window inside; {s['gestures']} labelled)")
        print(f"window accuracy: {fmt(s['window_accuracy'], '.3f')} ({s['windows_correct']}/{s['windows_scored']} "
              f"windows inside a gesture; {s['windows_ambiguous']} in overlapping gestures left out)")


def main(argv=None) -> int:
    """``python -m pipelines.stream ...``: the ``nsm stream`` command on its own (as the benchmark runs it)."""
    parser = argparse.ArgumentParser(prog="nsm stream", description="Classify an event recording window by window.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
