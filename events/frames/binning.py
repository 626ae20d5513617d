"""Binning events into frames by a ``FrameSpec``: ``frames_from_spec``, ``to_frames`` and ``split_clips``."""

from __future__ import annotations

import os
import threading

import numpy as np

from events.errors import InputError
from events.types import EVENT_DTYPE, EventFormatError, is_int

from .kernels import EXCLUDED, bin_events, check_range, searchsorted_left
from .spec import FrameSpec, capped, sensor_wh

_PARALLEL_MIN_EVENTS = 500_000  # below this, threads cost more than they save
_MAX_AUTO_THREADS = 4


def _as_event_array(events, width: int, height: int) -> np.ndarray:
    """``events`` as an ``EVENT_DTYPE`` array (itself when it already is one; otherwise an exact copy).

    Other structured dtypes with integer (or bool polarity) fields x, y, t, p are converted once their
    values are known to fit, so that a conversion never wraps a bad coordinate onto the sensor.
    """
    if not isinstance(events, np.ndarray) or events.dtype.names is None:
        raise InputError(f"events must be a NumPy structured array with fields x, y, t, p, got {type(events).__name__}")
    if events.ndim != 1:
        raise InputError(f"events must be a 1-D structured array, got shape {events.shape}")
    if events.dtype == EVENT_DTYPE:
        return events
    missing = [n for n in ("x", "y", "t", "p") if n not in events.dtype.names]
    if missing:
        raise InputError(f"events need fields x, y, t, p; missing {missing} (dtype {events.dtype})")
    for n in ("x", "y", "t", "p"):
        if events.dtype[n].kind not in "iub":
            raise InputError(f"event field {n!r} must be integer, got {events.dtype[n]}")
    x, y, p = (events[n].astype(np.int64) for n in ("x", "y", "p"))
    bad = (x < 0) | (x >= width) | (y < 0) | (y >= height) | (p < 0) | (p > 1)
    if events.dtype["t"].kind == "u":
        bad |= events["t"] > np.iinfo(np.int64).max
    if bad.any():
        _raise_bad_event(events, int(np.flatnonzero(bad)[0]), width, height)
    out = np.empty(len(events), dtype=EVENT_DTYPE)
    out["x"], out["y"], out["p"] = x, y, p
    out["t"] = events["t"]
    return out


def _raise_bad_event(events: np.ndarray, i: int, width: int, height: int):
    e = events[i]
    x, y, p, t = int(e["x"]), int(e["y"]), int(e["p"]), int(e["t"])
    if not (0 <= x < width and 0 <= y < height):
        raise EventFormatError(f"event {i} (x={x}, y={y}) lies outside the {width}x{height} sensor")
    if p not in (0, 1):
        raise EventFormatError(f"event {i} has polarity {p}; polarity must be 0 or 1")
    if t > np.iinfo(np.int64).max:
        raise EventFormatError(f"event {i} has timestamp {t}, beyond int64 microseconds")
    raise EventFormatError(
        f"timestamps decrease at event {i} (t={t} after {int(events[i - 1]['t'])}); events must be sorted by time"
    )


def _n_slices(span: int, size: int, stride: int, include_incomplete: bool) -> int:
    """tonic's count: ``floor((span - size) / stride) + 1`` (``ceil`` when incomplete slices are kept)."""
    num = span - size
    return (-(-num // stride) if include_incomplete else num // stride) + 1


def _slice_bounds(spec: FrameSpec, ev: np.ndarray, start_us, end_us) -> tuple[np.ndarray, np.ndarray] | int:
    """Start/end event indices of every slice, or the number of (empty) frames when there are no events."""
    n = len(ev)
    mode = spec.mode
    if mode == "event_count":
        if n == 0:
            return 0
        count = min(spec.event_count, n)
        stride = spec.event_count - spec.overlap
        n_slices = capped(spec, _n_slices(n, count, stride, spec.include_incomplete))
        starts = np.arange(n_slices, dtype=np.int64) * stride
        return starts, np.minimum(starts + count, n)
    if mode == "n_time_bins":
        bins = spec.frames_per_sample
        if n == 0:
            return bins
        t0, t1 = int(ev["t"][0]), int(ev["t"][-1])
        if spec.overlap == 0:
            width = (t1 - t0) // spec.n_time_bins
            lo = np.arange(bins, dtype=np.int64) * width + t0
            hi = lo + width
        else:  # tonic's float64 arithmetic, in its order of operations
            width_f = float((t1 - t0) // spec.n_time_bins) * (1 + spec.overlap)
            lo = np.arange(bins) * (width_f * (1 - spec.overlap)) + t0
            hi = lo + width_f
    else:
        if n == 0 and (start_us is None or end_us is None):
            return 0
        w = spec.time_window_us
        stride = w - spec.overlap
        t0 = int(ev["t"][0]) if start_us is None else int(start_us)
        t1 = int(ev["t"][-1]) if end_us is None else int(end_us)
        count = capped(spec, max(_n_slices(t1 - t0, w, stride, spec.include_incomplete), 1))
        if n == 0:
            return count
        lo = np.arange(count, dtype=np.int64) * stride + t0
        hi = lo + w
    starts = np.empty(len(lo), dtype=np.int64)
    ends = np.empty(len(hi), dtype=np.int64)
    searchsorted_left(ev, lo, starts)
    searchsorted_left(ev, hi, ends)
    return starts, ends


def _lookup_tables(spec: FrameSpec, width: int, height: int, out_shape):
    """Per sensor column, row and polarity: the offset within an output frame, or ``EXCLUDED``."""
    _, ho, wo = out_shape
    f = spec.downsample
    cw, ch = spec.crop if spec.crop is not None else (width, height)
    x0, y0 = (width - cw) // 2, (height - ch) // 2
    xs = np.arange(width, dtype=np.int64) - x0
    ys = np.arange(height, dtype=np.int64) - y0
    xmap = np.where((xs >= 0) & (xs < cw), xs // f, EXCLUDED)
    ymap = np.where((ys >= 0) & (ys < ch), (ys // f) * wo, EXCLUDED)
    plane = ho * wo
    pmap = {"both": [0, plane], "on": [EXCLUDED, 0], "off": [0, EXCLUDED], "merge": [0, 0]}[spec.polarity]
    return xmap, ymap, np.array(pmap, dtype=np.int64)


def _out_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind not in "iuf":
        raise InputError(f"dtype must be an integer or floating type, got {dt}")
    return dt


def frames_from_spec(
    events: np.ndarray,
    sensor_size,
    spec: FrameSpec,
    *,
    start_us: int | None = None,
    end_us: int | None = None,
    dtype=None,
    threads: int | None = None,
) -> np.ndarray:
    """Bin ``events`` into ``(T, P, H, W)`` frames as ``spec`` says (see the module docstring).

    ``start_us``/``end_us`` (``time_window_us`` only) fix the binned interval instead of the events' span.
    ``spec.max_frames`` is applied (only the first slices are binned); ``spec.frames_per_clip`` and
    ``spec.span`` are not (see :func:`split_clips` and the frame cache). ``dtype`` defaults to ``uint8``
    when ``spec.binary`` else ``uint16``. ``threads``: how many threads bin (groups of frames each);
    ``None`` uses one below 500 000 events and otherwise up to four (no more than the CPUs this process
    may use). The result does not depend on it.
    """
    if not isinstance(spec, FrameSpec):
        raise TypeError(f"spec must be a FrameSpec, got {type(spec).__name__}")
    if spec.mode != "time_window_us" and (start_us is not None or end_us is not None):
        raise InputError("start_us/end_us apply to time_window_us binning only")
    for name, v in (("start_us", start_us), ("end_us", end_us)):
        if v is not None and not is_int(v):
            raise InputError(f"{name} must be an integer number of µs, got {v!r}")
    if start_us is not None and end_us is not None and end_us < start_us:
        raise InputError(f"end_us ({end_us}) is before start_us ({start_us})")
    if threads is not None and (not is_int(threads) or threads < 1):
        raise InputError(f"threads must be None or an integer >= 1, got {threads!r}")
    out_dtype = _out_dtype((np.uint8 if spec.binary else np.uint16) if dtype is None else dtype)
    width, height = sensor_wh(sensor_size)
    shape = spec.output_shape((width, height))
    ev = _as_event_array(events, width, height)
    bounds = _slice_bounds(spec, ev, start_us, end_us)
    if isinstance(bounds, int):
        return np.zeros((bounds, *shape), dtype=out_dtype)
    starts, ends = bounds
    out = np.empty((len(starts), *shape), dtype=out_dtype)
    xmap, ymap, pmap = _lookup_tables(spec, width, height, shape)
    maxval = out_dtype.type(np.inf) if out_dtype.kind == "f" else out_dtype.type(np.iinfo(out_dtype).max)
    flat = out.reshape(len(starts), -1)
    args = (xmap, ymap, pmap)
    n_threads = _thread_count(threads, len(ev), len(starts))
    if n_threads == 1:
        bad = [bin_events(ev, width, height, starts, ends, *args, flat, spec.binary, maxval, 0, len(ev))]
    else:
        bad = _bin_threaded(ev, width, height, starts, ends, args, flat, spec.binary, maxval, n_threads)
    if max(bad) >= 0:
        first = check_range(ev, 0, len(ev), width, height)  # report the first bad event, not any one
        _raise_bad_event(ev, first if first >= 0 else max(bad), width, height)
    return out


def _thread_count(threads, n_events: int, n_frames: int) -> int:
    if threads is None:
        if n_events < _PARALLEL_MIN_EVENTS:
            return 1
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = min(cpus, _MAX_AUTO_THREADS)
    return max(1, min(int(threads), n_frames))


def _bin_threaded(ev, width, height, starts, ends, tables, flat, binary, maxval, n_threads) -> list[int]:
    """Run :func:`bin_events` on contiguous groups of frames in ``n_threads`` threads (the kernel
    releases the GIL). Groups hold about equal numbers of slice events; the event ranges each thread
    checks partition ``[0, len(ev))``."""
    sizes = np.cumsum(ends - starts)
    cuts = np.searchsorted(sizes, sizes[-1] * np.arange(1, n_threads) / n_threads, side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [len(starts)]]))
    check = np.clip(starts[bounds[1:-1]], 0, len(ev))
    check = np.concatenate([[0], np.maximum.accumulate(check) if len(check) else check, [len(ev)]])
    bad = [-1] * (len(bounds) - 1)

    def work(g: int) -> None:
        a, b = bounds[g], bounds[g + 1]
        bad[g] = bin_events(
            ev,
            width,
            height,
            starts[a:b],
            ends[a:b],
            *tables,
            flat[a:b],
            binary,
            maxval,
            int(check[g]),
            int(check[g + 1]),
        )

    workers = [threading.Thread(target=work, args=(g,), daemon=True) for g in range(1, len(bad))]
    for t in workers:
        t.start()
    try:
        work(0)
    finally:
        for t in workers:
            t.join()
    return bad


def to_frames(
    events: np.ndarray,
    sensor_size,
    *,
    n_time_bins: int | None = None,
    time_window_us: int | None = None,
    event_count: int | None = None,
    polarity: str = "both",
    downsample: int = 1,
    crop: tuple[int, int] | None = None,
    binary: bool = False,
    start_us: int | None = None,
    end_us: int | None = None,
    overlap: int | float = 0,
    include_incomplete: bool = False,
    max_frames: int | None = None,
    dtype=np.uint16,
    threads: int | None = None,
) -> np.ndarray:
    """Bin an ``EVENT_DTYPE`` array into frames ``(T, P, H, W)``.

    Equal to ``tonic.transforms.ToFrame(sensor_size, time_window=..., event_count=..., n_time_bins=...,
    overlap=..., include_incomplete=..., start_time=start_us, end_time=end_us)`` for ``polarity="both"``
    without crop, downsampling or binarisation (on non-empty input); the module docstring lists the
    conventions and the extensions. ``sensor_size`` is ``(width, height[, polarities])``; ``threads`` as in
    :func:`frames_from_spec`.
    Raises ``ValueError`` for bad parameters and ``EventFormatError`` for events off the sensor, a
    polarity other than 0/1, or decreasing timestamps.
    """
    spec = FrameSpec(
        n_time_bins=n_time_bins,
        time_window_us=time_window_us,
        event_count=event_count,
        polarity=polarity,
        downsample=downsample,
        crop=crop,
        binary=binary,
        overlap=overlap,
        include_incomplete=include_incomplete,
        max_frames=max_frames,
    )
    return frames_from_spec(events, sensor_size, spec, start_us=start_us, end_us=end_us, dtype=dtype, threads=threads)


def split_clips(frames: np.ndarray, frames_per_clip: int, stride: int | None = None) -> np.ndarray:
    """Cut a ``(T, P, H, W)`` stack into clips ``(N, frames_per_clip, P, H, W)`` (a new array).

    Clip ``k`` holds frames ``[k*stride, k*stride + frames_per_clip)``; ``stride`` defaults to
    ``frames_per_clip`` (back to back). ``N = (T - frames_per_clip) // stride + 1``, or 0 when
    ``T < frames_per_clip``: trailing frames that do not fill a clip are dropped.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise InputError(f"frames must be (T, P, H, W), got shape {frames.shape}")
    if not is_int(frames_per_clip) or frames_per_clip < 1:
        raise InputError(f"frames_per_clip must be an integer >= 1, got {frames_per_clip!r}")
    stride = frames_per_clip if stride is None else stride
    if not is_int(stride) or stride < 1:
        raise InputError(f"stride must be an integer >= 1, got {stride!r}")
    n_frames = frames.shape[0]
    n = (n_frames - frames_per_clip) // stride + 1 if n_frames >= frames_per_clip else 0
    out = np.empty((n, frames_per_clip, *frames.shape[1:]), dtype=frames.dtype)
    for k in range(n):
        out[k] = frames[k * stride : k * stride + frames_per_clip]
    return out
