"""Chunked reading and sliding time windows over an event stream (NumPy only, no torch).

Windows. Window ``k`` of a stream covers the half-open interval

    [origin + k * hop_us,  origin + k * hop_us + window_us)

where ``origin`` is ``origin_us`` when given, else the time of the stream's first event. An event at
time ``t`` belongs to every window with ``start <= t < end`` (windows overlap when ``hop_us < window_us``
and leave gaps when ``hop_us > window_us``).

Completeness. Events arrive in time order, so once an event at time ``t`` has been seen, no event
earlier than ``t`` is still to come: window ``k`` is complete, and is emitted, as soon as
``end <= t``. ``push(..., now_us=T)`` declares the same of a time ``T`` without an event (a quiet
camera), and ``flush(end_us)`` ends the stream at ``end_us`` (default: one µs past the last event,
so a recording with events in ``[t_first, t_last]`` covers ``[t_first, t_last + 1)``). Windows
reaching past the end never complete and are dropped; windows with no events are emitted like any
other (``Window.events`` is then empty). :func:`iter_windows` windows a whole array offline with
exactly these rules, so ``SlidingWindows`` fed in chunks of any size gives the same windows.

Order. Timestamps must not decrease. A chunk that goes back in time raises
:class:`~events.types.EventFormatError` naming the source and the times, and leaves the state
unchanged (the whole chunk is rejected; :func:`first_disorder` finds the good prefix). With
``sort_chunks=True`` a chunk is sorted by time first and merged with the buffered events; this
repairs disorder within a chunk and across chunks as long as no event is earlier than the end of
the last emitted window (or, before any window was emitted, than the origin taken from the first
event): such an event is still an error, since what it belonged to is already fixed. Events before
an explicit ``origin_us`` belong to no window and are dropped.

Memory. Only the events of windows not yet emitted are kept (those at or after the next window's
start; chunks pushed since the last emitted window are joined to them when the next window
completes): memory is bounded by the window length and the chunk size, never by the length of the
stream. Emitted windows hold views of that buffer.

Frames. :func:`fit_frame_spec` adapts a trained model's :class:`~events.frames.FrameSpec` to a
sensor (centre crop and downsampling so that frames come out at the model's input size) and
:func:`window_frames` bins one window into ``frames_per_clip`` frames of equal length.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from events.errors import InputError
from events.formats import DEFAULT_CHUNK_EVENTS, as_event_array, check_chunk_size
from events.frames import FrameSpec, frames_from_spec
from events.types import (
    EVENT_DTYPE,
    EventFormatError,
    SensorSize,
    check_in_bounds,
    empty_events,
    first_disorder,
    is_int,
)

__all__ = [
    "Window",
    "SlidingWindows",
    "iter_windows",
    "read_windows",
    "first_disorder",
    "count_windows",
    "fit_frame_spec",
    "window_frames",
]


@dataclass(frozen=True, eq=False)
class Window:
    """One complete window: its index ``k``, its interval ``[start_us, end_us)`` and its events."""

    index: int
    start_us: int
    end_us: int
    events: np.ndarray

    @property
    def empty(self) -> bool:
        return len(self.events) == 0


def _positive_int(name: str, value) -> int:
    if not is_int(value) or value < 1:
        raise InputError(f"{name} must be a positive integer number of µs, got {value!r}")
    return int(value)


def _optional_int(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{name} must be an integer number of µs or None, got {value!r}")
    return int(value)


def count_windows(origin_us: int, end_us: int, window_us: int, hop_us: int) -> int:
    """How many windows ``[origin + k*hop, origin + k*hop + window)`` end at or before ``end_us``."""
    span = end_us - origin_us - window_us
    return span // hop_us + 1 if span >= 0 else 0


class SlidingWindows:
    """Incremental sliding windows over a time-ordered event stream (see the module docstring).

    ``window_us``/``hop_us``: window length and stride (µs). ``origin_us``: start of window 0
    (default: the first event's time). ``sensor_size``: when given, every pushed event is checked to
    lie on it. ``sort_chunks``: sort each chunk by time instead of rejecting disorder. ``source``:
    the file (or camera) name that errors report.
    """

    def __init__(
        self,
        window_us: int,
        hop_us: int,
        *,
        origin_us: int | None = None,
        sensor_size=None,
        sort_chunks: bool = False,
        source: str | os.PathLike | None = None,
    ):
        self.window_us = _positive_int("window_us", window_us)
        self.hop_us = _positive_int("hop_us", hop_us)
        self._origin_arg = _optional_int("origin_us", origin_us)
        self.sensor_size = None if sensor_size is None else SensorSize(*sensor_size)
        self.sort_chunks = bool(sort_chunks)
        self.source = None if source is None else str(source)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next push starts a new one (window indices from 0 again)."""
        self.origin_us = self._origin_arg
        self.next_index = 0  # the first window not yet emitted
        self.last_t: int | None = None  # the latest event time seen
        self.now_us: int | None = None  # the stream is known complete before this time
        self.emitted_until: int | None = None  # end of the last emitted window
        self.events_seen = 0
        self._buf = empty_events()  # events from the next window's start on, in time order ...
        self._parts: list[np.ndarray] = []  # ... followed by chunks pushed since (joined on the next emit)
        self._pending = 0

    @property
    def buffered(self) -> int:
        """Events held for windows not yet emitted."""
        return len(self._buf) + self._pending

    def _check(self, events) -> np.ndarray:
        events = events if isinstance(events, np.ndarray) and events.dtype == EVENT_DTYPE else as_event_array(events)
        if events.ndim != 1:
            raise InputError(f"events must be a 1-D EVENT_DTYPE array, got shape {events.shape}")
        if self.sensor_size is not None:
            check_in_bounds(events, self.sensor_size, self.source)
        return events

    def _disorder_error(self, events: np.ndarray, i: int) -> EventFormatError:
        t = int(events["t"][i])
        before = int(events["t"][i - 1]) if i > 0 else self.last_t
        n = self.events_seen + i
        return EventFormatError(
            f"timestamps go back in time at event {n} of the stream: t={t} µs after {before} µs "
            "(sort each chunk with --sort-chunks / sort_chunks=True, if the disorder is local)",
            self.source,
        )

    def push(self, events: np.ndarray, now_us: int | None = None) -> list[Window]:
        """Add a chunk (time-ordered unless ``sort_chunks``); return the windows it completes, in order.

        ``now_us``: the stream is also known to be complete before this time (a camera's clock
        while no events come), so windows ending by then are emitted too. On an error the state is
        unchanged.
        """
        events = self._check(events)
        now_us = _optional_int("now_us", now_us)
        if len(events):
            if self.sort_chunks:
                if first_disorder(events) >= 0:
                    events = events[np.argsort(events["t"], kind="stable")]
                # windows already emitted, and (when it was taken from the first event) the origin, are fixed
                floor = (
                    self.emitted_until
                    if self.emitted_until is not None
                    else self.origin_us
                    if self._origin_arg is None
                    else None
                )
                if floor is not None and events["t"][0] < floor:
                    raise EventFormatError(
                        f"event at t={int(events['t'][0])} µs arrived after the windows up to {floor} µs were "
                        "fixed (emitted, or the origin taken from the first event); sorting within chunks "
                        "cannot repair this",
                        self.source,
                    )
            else:
                i = first_disorder(events, self.last_t)
                if i >= 0:
                    raise self._disorder_error(events, i)
        if len(events):
            if self.origin_us is None:
                self.origin_us = int(events["t"][0])
            self._parts.append(events)
            self._pending += len(events)
            self.events_seen += len(events)
            last = int(events["t"][-1])
            self.last_t = last if self.last_t is None else max(self.last_t, last)
        now = self.last_t if now_us is None else (now_us if self.last_t is None else max(now_us, self.last_t))
        if now is not None:
            self.now_us = now if self.now_us is None else max(self.now_us, now)
        return self._emit(self.now_us)

    def flush(self, end_us: int | None = None) -> list[Window]:
        """End the stream at ``end_us`` (default ``last_t + 1``); return the windows that end by then.

        The instance is reset afterwards, ready for a new stream.
        """
        end_us = _optional_int("end_us", end_us)
        if end_us is None:
            end_us = None if self.last_t is None else self.last_t + 1
        elif self.last_t is not None and end_us <= self.last_t:
            raise InputError(f"end_us={end_us} is not after the last event (t={self.last_t} µs)")
        out = self._emit(end_us) if end_us is not None else []
        self.reset()
        return out

    def _emit(self, now: int | None) -> list[Window]:
        if now is None or self.origin_us is None:
            return []
        stop = count_windows(self.origin_us, now, self.window_us, self.hop_us)
        if stop <= self.next_index:
            return []
        if self._parts:
            buf = (
                np.concatenate([self._buf, *self._parts]) if len(self._buf) or len(self._parts) > 1 else self._parts[0]
            )
            if self.sort_chunks and first_disorder(buf) >= 0:  # chunks sorted one by one may interleave
                buf = buf[np.argsort(buf["t"], kind="stable")]
            self._buf, self._parts, self._pending = buf, [], 0
        t = self._buf["t"]
        ks = np.arange(self.next_index, stop, dtype=np.int64)
        starts = self.origin_us + ks * self.hop_us
        ends = starts + self.window_us
        lo = np.searchsorted(t, starts, side="left")
        hi = np.searchsorted(t, ends, side="left")
        out = [Window(int(k), int(s), int(e), self._buf[a:b]) for k, s, e, a, b in zip(ks, starts, ends, lo, hi)]
        self.next_index = stop
        self.emitted_until = int(ends[-1])
        keep_from = np.searchsorted(t, self.origin_us + stop * self.hop_us, side="left")
        self._buf = self._buf[keep_from:]
        if keep_from and len(self._buf) == 0:
            self._buf = empty_events()
        return out


def iter_windows(
    events: np.ndarray, window_us: int, hop_us: int, *, origin_us: int | None = None, end_us: int | None = None
) -> Iterator[Window]:
    """Offline windowing of a whole time-ordered array with :class:`SlidingWindows`' rules.

    ``origin_us`` defaults to the first event's time, ``end_us`` to one µs past the last event.
    """
    window_us, hop_us = _positive_int("window_us", window_us), _positive_int("hop_us", hop_us)
    if first_disorder(events) >= 0:
        raise EventFormatError(f"timestamps decrease at event {first_disorder(events)}; events must be sorted")
    t = events["t"]
    origin = _optional_int("origin_us", origin_us)
    end = _optional_int("end_us", end_us)
    if origin is None:
        if len(t) == 0:
            return
        origin = int(t[0])
    if end is None:
        if len(t) == 0:
            return
        end = int(t[-1]) + 1
    for k in range(count_windows(origin, end, window_us, hop_us)):
        start = origin + k * hop_us
        a, b = np.searchsorted(t, [start, start + window_us], side="left")
        yield Window(k, start, start + window_us, events[a:b])


def read_windows(
    path: str | os.PathLike,
    window_us: int,
    hop_us: int,
    *,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    sort_chunks: bool = False,
    origin_us: int | None = None,
) -> Iterator[Window]:
    """Stream the windows of an event file (any format ``events.reader`` reads), in bounded memory.

    The file is read ``chunk_events`` events at a time; the stream ends one µs after its last event.
    Damage in the file is raised (``EventFormatError``) after every window completed before it.
    """
    from events.io import reader

    chunk_events = check_chunk_size(chunk_events, path, "chunk_events")
    with reader(path) as r:
        windows = SlidingWindows(
            window_us, hop_us, origin_us=origin_us, sensor_size=r.sensor_size, sort_chunks=sort_chunks, source=path
        )
        for chunk in r.iter_chunks(chunk_events):
            yield from windows.push(chunk)
        yield from windows.flush()


# --------------------------------------------------------------------------------------------
# frames of a window
# --------------------------------------------------------------------------------------------


def _fit_side(name: str, sensor: int, size: int, f: int) -> int | None:
    """Crop length along one side so that ``ceil(crop / f) == size`` (None: the whole side fits)."""
    if -(-sensor // f) == size:
        return None
    if sensor >= size * f:
        return size * f
    raise InputError(
        f"the sensor's {name} of {sensor} px cannot fill the model's input {name} of {size} at "
        f"downsample {f} (needs at least {size * f - f + 1} px); use a smaller downsample"
    )


def fit_frame_spec(
    spec: FrameSpec, sensor_size, input_size, *, downsample: int | None = None, crop: tuple[int, int] | None = None
) -> FrameSpec:
    """``spec`` with the crop and downsampling that map ``sensor_size`` onto ``input_size`` ``(H, W)``.

    ``downsample`` (default ``spec.downsample``) is kept; ``crop`` ``(width, height)`` overrides the
    crop. Otherwise the spec's own crop is kept when it fits this sensor and gives the input size;
    else each side is taken whole when ``ceil(side / f)`` equals the input, and centre-cropped to
    ``input * f`` when the sensor is larger. ``ValueError`` when the sensor is too small, or the
    result does not have the input size.
    """
    w, h = int(sensor_size[0]), int(sensor_size[1])
    in_h, in_w = (int(s) for s in input_size)
    f = spec.downsample if downsample is None else downsample
    kw = spec.to_dict()
    kw["downsample"] = f
    if crop is not None:
        kw["crop"] = tuple(crop)
    else:
        kw.pop("crop", None)
        own = spec.crop
        if own is not None and own[0] <= w and own[1] <= h and (-(-own[1] // f), -(-own[0] // f)) == (in_h, in_w):
            kw["crop"] = own
        else:
            cw, ch = _fit_side("width", w, in_w, f), _fit_side("height", h, in_h, f)
            if cw is not None or ch is not None:
                kw["crop"] = (w if cw is None else cw, h if ch is None else ch)
    fitted = FrameSpec.from_dict(kw)
    shape = fitted.output_shape((w, h))
    if shape[1:] != (in_h, in_w):
        raise InputError(
            f"frames of the {w}x{h} sensor with crop {fitted.crop} and downsample {f} are "
            f"{shape[1]}x{shape[2]} (HxW), but the model takes {in_h}x{in_w}"
        )
    return fitted


def window_frames(
    events: np.ndarray, sensor_size, spec: FrameSpec, start_us: int, end_us: int, n_frames: int, dtype=np.float32
) -> np.ndarray:
    """Bin the events of ``[start_us, end_us)`` into ``n_frames`` frames ``(T, P, H, W)`` of equal length.

    Frame ``i`` covers ``[start + i*L, start + (i+1)*L)`` with ``L = (end - start) / n_frames`` (which must
    be a whole number of µs); polarity, crop, downsampling and binarisation come from ``spec``, its
    slicing mode is replaced by these frames. Counts as ``dtype`` (float32 by default).
    """
    length = end_us - start_us
    if n_frames < 1 or length < n_frames or length % n_frames:
        raise InputError(f"a window of {length} µs does not split into {n_frames} frames of whole µs")
    framing = FrameSpec(
        time_window_us=length // n_frames,
        polarity=spec.polarity,
        downsample=spec.downsample,
        crop=spec.crop,
        binary=spec.binary,
    )
    return frames_from_spec(events, sensor_size, framing, start_us=int(start_us), end_us=int(end_us), dtype=dtype)
