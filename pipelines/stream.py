"""Streaming inference: a decision with a calibrated confidence as the events arrive.

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

Prediction: Monte Carlo over the network's noise as an ``nsm.MCSettings`` says, by default :data:`STREAM_MC`
(K = 8 passes, or adaptive between 4 and 16 passes in at most two rounds: the minimum, then the rest), the mean's
probabilities at its ``temperature`` (a checkpoint's fitted one with :meth:`StreamingClassifier.from_checkpoint`,
``pipelines.temperature``). Each window draws its noise from its own ``torch.Generator`` seeded from ``(seed,
window index)``, so a window's result depends only on its events, the model and the seed: pushing a recording at
once, in chunks of any size, or windowing it offline with :func:`predict_recording` gives identical predictions.

Evidence accumulation: next to each window's own output, a running mean of the probabilities of all
non-empty windows since the last :meth:`StreamingClassifier.reset_evidence` (or the start), each
earlier window's weight multiplied by ``decay`` per window (``decay=1``: plain mean; ``decay<1``
forgets, so a new gesture takes over). A window without events carries no evidence: its own
prediction is still made (``empty=True``) and the accumulated fields are carried over unchanged.

Memory: the classifier holds the events of the windows not yet predicted (about one window plus the
chunk being pushed), never the recording. Replaying a file (``pipelines.replay``, ``nsm stream``) additionally
keeps a few numbers a window for its summary and one running sum per labelled gesture.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import events
import nsm
from events.errors import InputError
from events.stream import SlidingWindows, Window, fit_frame_spec, iter_windows, window_frames
from events.types import check_in_bounds, check_int
from nsm.sampling import MAX_SAMPLES

from .checkpoint import load_checkpoint
from .temperature import checkpoint_temperature

STREAM_MC = nsm.MCSettings(samples=8, min_samples=4, max_samples=16, step=MAX_SAMPLES)
"""The stream's Monte Carlo settings: fewer passes than ``nsm.MCSettings``' defaults, for they bound a window's
latency. K = 8 passes; adaptive (``STREAM_MC.overridden(adaptive=True)``): between 4 and 16 passes in at most two
rounds, the minimum, then whatever remains (``step``, whatever the bounds), so that a window costs at most two
forward passes (with a small, overhead-bound network also the fastest)."""
DEFAULT_CHUNK_EVENTS = 8_192  # events read per chunk by nsm stream (about 0.4 s of a DVS Gesture recording)
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
            "index": self.index,
            "start_us": self.start_us,
            "end_us": self.end_us,
            "n_events": self.n_events,
            "empty": self.empty,
            "top_class": self.top_class,
            "class_name": self.class_name,
            "confidence": round(self.confidence, 6),
            "entropy": round(self.entropy, 6),
            "samples": self.samples,
            "probs": probs(self.probs),
            "accumulated_class": self.accumulated_class,
            "accumulated_class_name": self.accumulated_class_name,
            "accumulated_confidence": None
            if self.accumulated_confidence is None
            else round(self.accumulated_confidence, 6),
            "accumulated_probs": probs(self.accumulated_probs),
            "accumulated_windows": round(self.accumulated_windows, 6),
            "latency_ms": round(self.latency_ms, 3),
            "compute_ms": round(self.compute_ms, 3),
        }


class StreamingClassifier:
    """Classify an event stream window by window (see the module docstring).

    ``model``: a network from ``models.create_model`` (its ``spec`` gives ``in_channels`` and ``input_size``).
    ``frame_spec``: the :class:`events.FrameSpec` (or its dict) the model was trained with: polarity,
    downsampling, crop, ``time_window_us`` and ``frames_per_clip``. ``sensor_size``: ``(width, height[, p])``
    of the incoming events; default the sensor the spec implies (its crop, else input size x downsample).
    ``window_us``/``hop_us``: default ``frames_per_clip * time_window_us`` and half of it; the window must
    split into ``frames_per_clip`` frames of whole µs. ``mc``: how a window is predicted (``nsm.MCSettings``;
    default :data:`STREAM_MC`).
    ``decay``: evidence weight kept per window, in (0, 1]. ``seed``: noise seed (>= 0). ``classes``: names.
    ``downsample``/``crop``: override the spec's (crop as ``(width, height)``). ``origin_us``: start of
    window 0 (default: first event). ``sort_chunks``: sort chunks by time instead of rejecting disorder.
    ``source``: the file name errors report.

    The NSM layers' effective weights are computed once per stream (an ``nsm.WeightCache``): in-place updates
    of the parameters are noticed at once, edits through ``.data`` after :meth:`reset` (or :meth:`flush`).
    """

    def __init__(
        self,
        model: nn.Module,
        frame_spec,
        sensor_size=None,
        *,
        window_us: int | None = None,
        hop_us: int | None = None,
        mc: nsm.MCSettings = STREAM_MC,
        decay: float = 1.0,
        seed: int = 0,
        classes=None,
        downsample: int | None = None,
        crop=None,
        origin_us: int | None = None,
        sort_chunks: bool = False,
        source=None,
    ):
        spec_dict = getattr(model, "spec", None)
        if not spec_dict or "in_channels" not in spec_dict or "input_size" not in spec_dict:
            raise InputError("model must be built by models.create_model (its spec gives in_channels and input_size)")
        if frame_spec is None:
            raise InputError("a frame spec is needed (the checkpoint has none: pass frame_spec=...)")
        spec = frame_spec if isinstance(frame_spec, events.FrameSpec) else events.FrameSpec.from_dict(frame_spec)
        if spec.overlap:
            raise InputError(
                f"streaming bins windows into back-to-back frames; the spec's overlap={spec.overlap} is not supported"
            )
        in_channels, input_size = int(spec_dict["in_channels"]), tuple(int(s) for s in spec_dict["input_size"])
        if in_channels % spec.channels:
            raise InputError(
                f"the model's {in_channels} input channels are not a multiple of the spec's "
                f"{spec.channels} polarity channel(s)"
            )
        n_frames = in_channels // spec.channels
        if spec.frames_per_clip is not None and spec.frames_per_clip != n_frames:
            raise InputError(
                f"the spec's frames_per_clip={spec.frames_per_clip} does not match the model's "
                f"{in_channels} input channels / {spec.channels} polarity channel(s) = {n_frames}"
            )
        if sensor_size is None:  # the sensor the spec implies
            f = spec.downsample if downsample is None else downsample
            sensor_size = (
                crop
                if crop is not None
                else spec.crop
                if spec.crop is not None
                else (input_size[1] * f, input_size[0] * f)
            )
        self.sensor_size = events.SensorSize(
            int(sensor_size[0]), int(sensor_size[1]), int(sensor_size[2]) if len(sensor_size) > 2 else 2
        )
        self.frame_spec = fit_frame_spec(
            spec, self.sensor_size, input_size, downsample=downsample, crop=None if crop is None else tuple(crop)
        )
        self.n_frames = n_frames
        if window_us is None:
            if spec.time_window_us is None:
                raise InputError(f"the spec slices by {spec.mode}; give window_us for streaming")
            window_us = n_frames * spec.time_window_us
        if not isinstance(window_us, (int, np.integer)) or window_us < n_frames or window_us % n_frames:
            raise InputError(
                f"window_us={window_us!r} must be a whole number of µs that splits into {n_frames} frames of whole µs"
            )
        hop_us = int(window_us) // 2 if hop_us is None else hop_us
        self.windows = SlidingWindows(
            int(window_us),
            hop_us,
            origin_us=origin_us,
            sensor_size=self.sensor_size,
            sort_chunks=sort_chunks,
            source=source,
        )
        self.mc = mc
        if not 0.0 < decay <= 1.0:
            raise InputError(f"decay must be in (0, 1], got {decay!r}")
        self.decay, self.seed = float(decay), check_int("seed", seed, 0)
        self.model = model
        self._weights = nsm.WeightCache(model)
        self.classes = None if classes is None else [str(c) for c in classes]
        self._generator = torch.Generator()
        self.reset_evidence()

    @classmethod
    def from_checkpoint(
        cls, path, *, mc: nsm.MCSettings = STREAM_MC, temperature: float | None = None, **overrides
    ) -> StreamingClassifier:
        """A classifier for the network of a checkpoint (``pipelines.checkpoint``), with its classes and frame spec,
        predicting as ``mc`` says at the checkpoint's fitted Monte Carlo temperature (``pipelines.temperature``;
        ``mc.temperature`` is replaced) or at ``temperature`` when given; keyword arguments override any other
        constructor argument (``frame_spec`` and ``classes`` too)."""
        ck = load_checkpoint(path)
        overrides.setdefault("frame_spec", ck.frame_spec)
        overrides.setdefault("classes", ck.classes)
        t = checkpoint_temperature(ck.state, path) if temperature is None else temperature
        frame_spec = overrides.pop("frame_spec")
        if frame_spec is None:
            raise InputError(f"{path}: the checkpoint holds no frame spec; pass frame_spec=...")
        return cls(ck.model, frame_spec, mc=dataclasses.replace(mc, temperature=t), **overrides)

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
        frames = window_frames(
            window.events, self.sensor_size, self.frame_spec, window.start_us, window.end_us, self.n_frames
        )
        return torch.from_numpy(frames).unsqueeze(0)

    def predict_window(self, window: Window, called: float | None = None) -> Prediction:
        """Predict one complete window and fold it into the evidence (``called``: ``perf_counter()`` at the
        moment its data was handed over, for ``latency_ms``; default now)."""
        started = time.perf_counter()
        called = started if called is None else called
        x = self.model_input(window)
        self._generator.manual_seed(window_seed(self.seed, window.index))
        with self._weights:
            res = self.mc.predict(self.model, x, generator=self._generator)
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
            index=window.index,
            start_us=window.start_us,
            end_us=window.end_us,
            n_events=len(window.events),
            empty=window.empty,
            probs=probs,
            top_class=top,
            class_name=self._name(top),
            confidence=float(probs[top]),
            entropy=_entropy(probs),
            samples=int(res.samples_used[0]),
            accumulated_probs=acc,
            accumulated_class=acc_top,
            accumulated_class_name=self._name(acc_top),
            accumulated_confidence=None if acc is None else float(acc[acc_top]),
            accumulated_windows=self._acc_weight,
            latency_ms=(done - called) * 1e3,
            compute_ms=(done - started) * 1e3,
        )

    def _name(self, k: int | None) -> str | None:
        if k is None or self.classes is None or k >= len(self.classes):
            return None
        return self.classes[k]


def predict_recording(
    model: nn.Module, events_array: np.ndarray, frame_spec, sensor_size=None, *, end_us: int | None = None, **kw
) -> list[Prediction]:
    """Offline: window a whole time-ordered recording with :func:`events.stream.iter_windows` and predict
    every window as :class:`StreamingClassifier` would (same arguments; ``end_us`` as in ``flush``).

    Holds the whole recording: for tests and small inputs. Equal, window for window (timings aside), to
    pushing the same events through a ``StreamingClassifier`` in chunks of any size and flushing.
    """
    clf = StreamingClassifier(model, frame_spec, sensor_size, **kw)
    check_in_bounds(events_array, clf.sensor_size, kw.get("source"))
    return [
        clf.predict_window(w)
        for w in iter_windows(events_array, clf.window_us, clf.hop_us, origin_us=kw.get("origin_us"), end_us=end_us)
    ]
