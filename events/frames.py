"""Binning event streams into frames: numba kernels behind :func:`to_frames` and a frozen :class:`FrameSpec`.

A frame stack is a NumPy array of shape ``(T, P, H, W)``: ``T`` time slices, ``P`` polarity channels,
``H`` rows and ``W`` columns; ``frames[i, c, y, x]`` counts the events of slice ``i`` that fell on pixel
``(x, y)`` in channel ``c``.

Slicing follows ``tonic.transforms.ToFrame`` (tonic 1.7) exactly where the parameters overlap, so that a
frame stack made here equals tonic's element by element. The conventions taken over from tonic are:

* Every slice is a half-open interval; events are assigned with a left ``searchsorted`` on ``t``, so an
  event exactly on a slice's end belongs to the next slice, not to this one. Slices may overlap
  (``overlap > 0``); an event then counts in every slice that contains it.
* ``time_window_us=w`` with ``overlap=o`` (µs): the stride is ``s = w - o``; the origin ``t0`` is
  ``start_us`` or the first event's time and the end ``t1`` is ``end_us`` or the last event's time.
  ``T = floor((t1 - t0 - w) / s) + 1`` slices, or ``ceil(...) + 1`` with ``include_incomplete=True``, and at
  least one. Slice ``i`` covers ``[t0 + i*s, t0 + i*s + w)``. Consequently events after the last complete
  window are dropped (also the last event itself when ``t1 - t0`` is a multiple of ``w``), and with
  ``include_incomplete`` the last window keeps its full width and may reach past ``end_us``.
  ``T`` is computed with exact integer arithmetic (tonic uses float64; the two agree for any timestamps
  below 2**53 µs).
* ``event_count=n`` with ``overlap=o`` (events): stride ``s = n - o``; with ``m`` events and
  ``n' = min(n, m)``, ``T = floor((m - n') / s) + 1`` (``ceil`` with ``include_incomplete``); slice ``i`` holds
  events ``[i*s, i*s + n')``. A sample with fewer than ``n`` events gives one slice holding all of them.
* ``n_time_bins=n`` with ``overlap=o`` (a fraction of a bin, ``0 <= o < 1``): the bin width is
  ``w = ((t_last - t_first) // n) * (1 + o)`` (floor division first, as tonic does), the stride
  ``w * (1 - o)``; bin ``i`` covers ``[t_first + i*stride, t_first + i*stride + w)``. Because of the floor
  division the last event (and any event at or after ``t_first + n*w``) falls outside every bin, and a
  sample whose events span less than ``n`` µs gives ``n`` empty frames. ``include_incomplete`` does not
  apply to this mode (tonic ignores it; here it is rejected).

Where this module extends or departs from tonic (tonic has no such parameters, or behaves otherwise):

* Empty input gives zero frames of the right ``(P, H, W)``: ``n_time_bins`` zero frames for
  ``n_time_bins``; for ``time_window_us`` with both ``start_us`` and ``end_us`` given, the window's ``T``
  from the formula above; otherwise ``T = 0``. (tonic returns one float frame with width and height
  swapped.)
* ``polarity``: ``"both"`` gives ``P = 2`` (channel = polarity, OFF then ON), ``"on"`` keeps ON events only
  (``P = 1``), ``"off"`` OFF events only (``P = 1``), ``"merge"`` sums both polarities into one channel
  (``P = 1``). ``P`` depends only on this setting, never on ``sensor_size``'s polarity count; use
  ``"merge"`` for single-polarity sensors.
* ``crop=(cw, ch)``: a centre crop of the sensor, columns ``[(W - cw)//2, (W - cw)//2 + cw)`` and rows
  ``[(H - ch)//2, (H - ch)//2 + ch)``; events outside are dropped. Applied before downsampling.
* ``downsample=f``: event ``(x, y)`` (crop-relative) goes to pixel ``(x // f, y // f)`` (f x f sum pooling
  of events); the frame is ``ceil(ch / f)`` x ``ceil(cw / f)``, so a partial cell at the border is kept.
* Slicing is always decided on the whole stream; the polarity and crop filters apply afterwards to the
  events of each slice. ``T`` and the slice boundaries therefore do not depend on ``polarity``, ``crop`` or
  ``downsample`` (``"merge"`` equals ``"both"`` summed over channels, ``"on"`` equals its channel 1 and
  ``"off"`` its channel 0).
* ``max_frames=N``: only the first ``N`` slices are made, so the result is exactly the first ``N`` frames of
  the uncapped one (all of it when it has fewer); the later slices are never binned.
* Counts saturate at the output dtype's maximum (65535 for the default ``uint16``) instead of wrapping;
  ``binary=True`` writes 1 where the count would be positive.
* Input is checked: coordinates must lie on the sensor, polarities be 0 or 1 and timestamps be
  non-decreasing (the slicing relies on it); otherwise :class:`events.types.EventFormatError` names the
  first offending event.

Fixed-duration clips (the paper's DVS Gesture input is six 16 ms frames of one polarity, 128 -> 64 by
2 x 2 pooling, and the original NSM code kept the first 108 frames of each gesture, 18 clips:
``max_frames=108``): bin a window ``[start_us, end_us)`` with ``time_window_us`` so that quiet periods still
give zero frames. ``T`` is the floor count, complete windows only (``[0, 96 ms)`` in 16 ms windows gives
exactly 6 frames; ``[0, 100 ms)`` also 6, the last 4 ms dropped); ``include_incomplete=True`` takes the
ceiling instead (7 frames, the last one reaching to 112 ms). Then cut the stack into clips with
:func:`split_clips`, e.g. ``to_frames(ev, (128, 128), time_window_us=16_000, start_us=s, end_us=e,
polarity="on", downsample=2)`` followed by ``split_clips(frames, 6)``.

Input: an ``EVENT_DTYPE`` array is binned in place (strided views too); other structured arrays with
integer fields ``x, y, t, p`` are converted once their values are known to fit. Output: ``uint16`` by
default (tonic gives ``int16``; values are equal). The numba kernel reads every event once: it checks
it and, when it falls in a slice, adds it to that slice's frame, which is zeroed just before its events
are added so that it stays in cache meanwhile; the kernels are compiled on first use and cached on disk
(``cache=True``) and release the GIL (``nogil=True``): callers may bin from several threads, and an
input of 500 000 events or more is split by frames over up to four threads of its own (``threads=`` sets
the number; results never depend on it). No OpenMP/TBB pool is used, so binning stays safe in forked DataLoader workers.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from numba import njit

from events.types import EVENT_DTYPE, EventFormatError, SensorSize

__all__ = ["FrameSpec", "to_frames", "frames_from_spec", "split_clips", "bench_binning"]

_POLARITY_MODES = ("both", "on", "off", "merge")
_SPANS = ("events", "sample")
_SPEC_VERSION = 1
_MAX_SIDE = 32767  # EVENT_DTYPE coordinates are int16


# --------------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------------

_CHUNK = 4096  # events decoded per batch before they are scattered (fits in L1 as int64)
_EXCLUDED = -(1 << 40)  # lookup-table entry of a dropped column/row/polarity: any sum with it stays < 0
_PARALLEL_MIN_EVENTS = 500_000  # below this, threads cost more than they save
_MAX_AUTO_THREADS = 4


@njit(cache=True, nogil=True)
def _check_range(ev, j0, j1, width, height):  # pragma: no cover - compiled
    """Index of the first event in ``[j0, j1)`` off the sensor, with polarity not 0/1, or earlier than its
    predecessor; -1 when all are good."""
    for j in range(j0, j1):
        e = ev[j]
        if e.x < 0 or e.x >= width or e.y < 0 or e.y >= height or e.p < 0 or e.p > 1:
            return j
        if j > 0 and e.t < ev[j - 1].t:
            return j
    return -1


@njit(cache=True, nogil=True)
def _searchsorted_left(ev, values, out):  # pragma: no cover - compiled
    """``out[k] = np.searchsorted(ev["t"], values[k], side="left")`` without copying the strided column."""
    n = len(ev)
    for k in range(len(values)):
        v = values[k]
        lo = 0
        hi = n
        while lo < hi:
            mid = (lo + hi) >> 1
            if ev[mid].t < v:
                lo = mid + 1
            else:
                hi = mid
        out[k] = lo


@njit(cache=True, nogil=True)
def _bin_events(
    ev, width, height, starts, ends, xmap, ymap, pmap, out, binary, maxval, check_lo, check_hi
):  # pragma: no cover - compiled
    """Fill ``out[i]`` (``out`` is ``(len(starts), frame_size)``) with events ``[starts[i], ends[i])``.

    Checks as :func:`_check_range` does every event it bins and every other event of
    ``[check_lo, check_hi)``, so that threads given a partition of ``[0, len(ev))`` check every event
    once; returns the index of a bad event it met (-1 when none). Slice events are checked while they
    are binned, so they are read once. ``xmap[x] + ymap[y] + pmap[p]`` is the event's offset within a
    frame, negative when cropped away or of a dropped polarity. Each output frame is zeroed just before
    its events are added, so that it sits in cache while they are; counts saturate at ``maxval``.
    """
    buf = np.empty(_CHUNK, np.int64)
    w = np.uint16(width)
    h = np.uint16(height)
    one = np.uint8(1)
    checked = check_lo  # invariant: events [check_lo, min(checked, check_hi)) are known good
    for i in range(len(starts)):
        j0 = starts[i]
        j1 = ends[i]
        stop = min(j0, check_hi)
        if stop > checked:
            bad = _check_range(ev, checked, stop, width, height)
            if bad >= 0:
                return bad
        frame = out[i]
        frame[:] = 0
        prev = ev[j0 - 1].t if j0 > 0 else ev[0].t
        c0 = j0
        while c0 < j1:
            c1 = min(c0 + _CHUNK, j1)
            m = 0
            for j in range(c0, c1):
                e = ev[j]
                ux = np.uint16(e.x)  # negative coordinates wrap to >= 32768, beyond any sensor
                uy = np.uint16(e.y)
                up = np.uint8(e.p)
                tj = e.t
                if (ux >= w) | (uy >= h) | (up > one) | (tj < prev):
                    return j
                prev = tj
                buf[m] = xmap[ux] + ymap[uy] + pmap[up]
                m += 1
            for q in range(m):
                k = buf[q]
                if k < 0:
                    continue
                if binary:
                    frame[k] = 1
                else:
                    v = frame[k]
                    if v < maxval:
                        frame[k] = v + 1
            c0 = c1
        if j1 > checked:
            checked = j1
    if check_hi > checked:
        return _check_range(ev, checked, check_hi, width, height)
    return -1


# --------------------------------------------------------------------------------------------
# FrameSpec
# --------------------------------------------------------------------------------------------


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, (float, np.floating))) and not isinstance(v, (bool, np.bool_))


def _sensor_wh(sensor_size) -> tuple[int, int]:
    try:
        w, h = int(sensor_size[0]), int(sensor_size[1])
    except (TypeError, IndexError, ValueError):
        raise ValueError(f"sensor_size must be (width, height[, polarities]), got {sensor_size!r}") from None
    if not (0 < w <= _MAX_SIDE and 0 < h <= _MAX_SIDE):
        raise ValueError(f"sensor width and height must be in 1..{_MAX_SIDE} (int16 coordinates), got {sensor_size!r}")
    return w, h


@dataclass(frozen=True)
class FrameSpec:
    """How one sample becomes a frame stack ``(T, P, H, W)``; see the module docstring for the conventions.

    Exactly one of ``n_time_bins``, ``time_window_us`` (µs) and ``event_count`` is set (a positive int).

    * ``overlap``: between consecutive slices, in the unit of the mode: µs for ``time_window_us`` (int,
      ``0 <= overlap < time_window_us``), events for ``event_count`` (int, ``0 <= overlap < event_count``),
      a fraction of a bin for ``n_time_bins`` (``0 <= overlap < 1``).
    * ``include_incomplete``: keep the trailing partial slice (``time_window_us`` and ``event_count`` only).
    * ``polarity``: ``"both"`` (P=2), ``"on"`` (ON events only, P=1), ``"off"`` (OFF events only, P=1) or
      ``"merge"`` (summed, P=1).
    * ``downsample``: integer spatial factor ``f``: pixel ``(x // f, y // f)``, sizes ceil-divided.
    * ``crop``: ``(width, height)`` centre crop applied before downsampling, or ``None``.
    * ``binary``: 1 where an event fell, instead of counts.
    * ``frames_per_clip``: length of the fixed-length clips a consumer cuts (:func:`split_clips`), or ``None``.
    * ``span``: which interval ``time_window_us`` bins: ``"events"`` (first to last event, tonic's default) or
      ``"sample"`` (the sample's own ``[start_us, end_us)``, e.g. a labelled gesture; the frame cache takes
      them from the data set's ``sample_info``), so that quiet periods still give zero frames.
    * ``max_frames``: keep only the first ``max_frames`` frames of each sample (``None``: all), the later
      slices never being binned; with ``frames_per_clip`` a sample then gives at most
      ``max_frames // frames_per_clip`` clips (``max_frames`` must hold one clip at least).

    ``to_dict()`` gives a JSON- and TOML-safe dict (``None`` fields omitted, tuples as lists) and
    ``from_dict(d)`` inverts it exactly. ``key()`` is a stable hash of every field, for cache keys.
    """

    n_time_bins: int | None = None
    time_window_us: int | None = None
    event_count: int | None = None
    polarity: str = "both"
    downsample: int = 1
    crop: tuple[int, int] | None = None
    binary: bool = False
    frames_per_clip: int | None = None
    overlap: int | float = 0
    include_incomplete: bool = False
    span: str = "events"
    max_frames: int | None = None

    def __post_init__(self):
        modes = {
            "n_time_bins": self.n_time_bins,
            "time_window_us": self.time_window_us,
            "event_count": self.event_count,
        }
        chosen = [k for k, v in modes.items() if v is not None]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one of n_time_bins, time_window_us and event_count "
                f"(got {', '.join(chosen) if chosen else 'none'})"
            )
        mode = chosen[0]
        value = modes[mode]
        if not _is_int(value) or value <= 0:
            raise ValueError(f"{mode} must be a positive integer, got {value!r}")
        object.__setattr__(self, mode, int(value))
        if self.polarity not in _POLARITY_MODES:
            raise ValueError(f"polarity must be one of {_POLARITY_MODES}, got {self.polarity!r}")
        if not _is_int(self.downsample) or self.downsample < 1:
            raise ValueError(f"downsample must be an integer >= 1, got {self.downsample!r}")
        object.__setattr__(self, "downsample", int(self.downsample))
        if self.crop is not None:
            crop = tuple(self.crop) if isinstance(self.crop, (tuple, list)) else None
            if crop is None or len(crop) != 2 or not all(_is_int(c) and c > 0 for c in crop):
                raise ValueError(f"crop must be None or (width, height) of positive integers, got {self.crop!r}")
            object.__setattr__(self, "crop", (int(crop[0]), int(crop[1])))
        if not isinstance(self.binary, (bool, np.bool_)):
            raise ValueError(f"binary must be True or False, got {self.binary!r}")
        object.__setattr__(self, "binary", bool(self.binary))
        if self.frames_per_clip is not None:
            if not _is_int(self.frames_per_clip) or self.frames_per_clip < 1:
                raise ValueError(f"frames_per_clip must be None or an integer >= 1, got {self.frames_per_clip!r}")
            object.__setattr__(self, "frames_per_clip", int(self.frames_per_clip))
        if not isinstance(self.include_incomplete, (bool, np.bool_)):
            raise ValueError(f"include_incomplete must be True or False, got {self.include_incomplete!r}")
        object.__setattr__(self, "include_incomplete", bool(self.include_incomplete))
        ov = self.overlap
        if mode == "n_time_bins":
            if not _is_number(ov) or not 0 <= ov < 1:
                raise ValueError(f"overlap for n_time_bins is a fraction of a bin, 0 <= overlap < 1; got {ov!r}")
            if self.include_incomplete:
                raise ValueError("include_incomplete applies to time_window_us and event_count, not n_time_bins")
            object.__setattr__(self, "overlap", int(ov) if _is_int(ov) else float(ov))
        else:
            if not _is_int(ov) or not 0 <= ov < value:
                unit = "µs" if mode == "time_window_us" else "events"
                raise ValueError(
                    f"overlap for {mode} is an integer number of {unit}, 0 <= overlap < {mode}={value}; got {ov!r}"
                )
            object.__setattr__(self, "overlap", int(ov))
        if self.span not in _SPANS:
            raise ValueError(f"span must be one of {_SPANS}, got {self.span!r}")
        if self.span == "sample" and mode != "time_window_us":
            raise ValueError("span='sample' needs time_window_us (fixed windows over the sample's interval)")
        if self.max_frames is not None:
            if not _is_int(self.max_frames) or self.max_frames < 1:
                raise ValueError(f"max_frames must be None or an integer >= 1, got {self.max_frames!r}")
            object.__setattr__(self, "max_frames", int(self.max_frames))
            if self.frames_per_clip is not None and self.max_frames < self.frames_per_clip:
                raise ValueError(
                    f"max_frames={self.max_frames} holds no clip of frames_per_clip={self.frames_per_clip} frames"
                )

    @property
    def mode(self) -> str:
        """The slicing mode: ``"n_time_bins"``, ``"time_window_us"`` or ``"event_count"``."""
        if self.n_time_bins is not None:
            return "n_time_bins"
        return "time_window_us" if self.time_window_us is not None else "event_count"

    @property
    def frames_per_sample(self) -> int | None:
        """``T`` of every sample when the spec alone fixes it (``n_time_bins``, at most ``max_frames``), else
        ``None`` (it depends on the sample's events or interval)."""
        if self.n_time_bins is None:
            return None
        return _capped(self, self.n_time_bins)

    @property
    def channels(self) -> int:
        """``P``: 2 for ``polarity="both"``, else 1."""
        return 2 if self.polarity == "both" else 1

    def output_shape(self, sensor_size) -> tuple[int, int, int]:
        """``(P, H, W)`` of one frame for a sensor ``(width, height[, polarities])``."""
        w, h = _sensor_wh(sensor_size)
        if self.crop is not None:
            cw, ch = self.crop
            if cw > w or ch > h:
                raise ValueError(f"crop {cw}x{ch} is larger than the {w}x{h} sensor")
            w, h = cw, ch
        f = self.downsample
        return self.channels, -(-h // f), -(-w // f)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the fields (``None`` omitted, ``crop`` as a list): JSON- and TOML-safe."""
        out: dict[str, Any] = {}
        for fld in fields(self):
            v = getattr(self, fld.name)
            if v is None:
                continue
            out[fld.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FrameSpec:
        """Inverse of :meth:`to_dict`; unknown keys are a ``ValueError``."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a frame spec must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown frame spec key(s) {unknown}; known keys are {sorted(known)}")
        kw = dict(d)
        if "crop" in kw and isinstance(kw["crop"], list):
            kw["crop"] = tuple(kw["crop"])
        return cls(**kw)

    def key(self) -> str:
        """Stable 16-hex-digit hash of every field (and the spec format version)."""
        blob = json.dumps({"version": _SPEC_VERSION, **self.to_dict()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# binning
# --------------------------------------------------------------------------------------------


def _as_event_array(events, width: int, height: int) -> np.ndarray:
    """``events`` as an ``EVENT_DTYPE`` array (itself when it already is one; otherwise an exact copy).

    Other structured dtypes with integer (or bool polarity) fields x, y, t, p are converted once their
    values are known to fit, so that a conversion never wraps a bad coordinate onto the sensor.
    """
    if not isinstance(events, np.ndarray) or events.dtype.names is None:
        raise ValueError(f"events must be a NumPy structured array with fields x, y, t, p, got {type(events).__name__}")
    if events.ndim != 1:
        raise ValueError(f"events must be a 1-D structured array, got shape {events.shape}")
    if events.dtype == EVENT_DTYPE:
        return events
    missing = [n for n in ("x", "y", "t", "p") if n not in events.dtype.names]
    if missing:
        raise ValueError(f"events need fields x, y, t, p; missing {missing} (dtype {events.dtype})")
    for n in ("x", "y", "t", "p"):
        if events.dtype[n].kind not in "iub":
            raise ValueError(f"event field {n!r} must be integer, got {events.dtype[n]}")
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


def _capped(spec: FrameSpec, count: int) -> int:
    """``count`` slices limited to ``spec.max_frames``."""
    return count if spec.max_frames is None else min(count, spec.max_frames)


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
        n_slices = _capped(spec, _n_slices(n, count, stride, spec.include_incomplete))
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
        count = _capped(spec, max(_n_slices(t1 - t0, w, stride, spec.include_incomplete), 1))
        if n == 0:
            return count
        lo = np.arange(count, dtype=np.int64) * stride + t0
        hi = lo + w
    starts = np.empty(len(lo), dtype=np.int64)
    ends = np.empty(len(hi), dtype=np.int64)
    _searchsorted_left(ev, lo, starts)
    _searchsorted_left(ev, hi, ends)
    return starts, ends


def _lookup_tables(spec: FrameSpec, width: int, height: int, out_shape):
    """Per sensor column, row and polarity: the offset within an output frame, or ``_EXCLUDED``."""
    _, ho, wo = out_shape
    f = spec.downsample
    cw, ch = spec.crop if spec.crop is not None else (width, height)
    x0, y0 = (width - cw) // 2, (height - ch) // 2
    xs = np.arange(width, dtype=np.int64) - x0
    ys = np.arange(height, dtype=np.int64) - y0
    xmap = np.where((xs >= 0) & (xs < cw), xs // f, _EXCLUDED)
    ymap = np.where((ys >= 0) & (ys < ch), (ys // f) * wo, _EXCLUDED)
    plane = ho * wo
    pmap = {"both": [0, plane], "on": [_EXCLUDED, 0], "off": [0, _EXCLUDED], "merge": [0, 0]}[spec.polarity]
    return xmap, ymap, np.array(pmap, dtype=np.int64)


def _out_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind not in "iuf":
        raise ValueError(f"dtype must be an integer or floating type, got {dt}")
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
        raise ValueError("start_us/end_us apply to time_window_us binning only")
    for name, v in (("start_us", start_us), ("end_us", end_us)):
        if v is not None and not _is_int(v):
            raise ValueError(f"{name} must be an integer number of µs, got {v!r}")
    if start_us is not None and end_us is not None and end_us < start_us:
        raise ValueError(f"end_us ({end_us}) is before start_us ({start_us})")
    if threads is not None and (not _is_int(threads) or threads < 1):
        raise ValueError(f"threads must be None or an integer >= 1, got {threads!r}")
    out_dtype = _out_dtype((np.uint8 if spec.binary else np.uint16) if dtype is None else dtype)
    width, height = _sensor_wh(sensor_size)
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
        bad = [_bin_events(ev, width, height, starts, ends, *args, flat, spec.binary, maxval, 0, len(ev))]
    else:
        bad = _bin_threaded(ev, width, height, starts, ends, args, flat, spec.binary, maxval, n_threads)
    if max(bad) >= 0:
        first = _check_range(ev, 0, len(ev), width, height)  # report the first bad event, not any one
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
    """Run :func:`_bin_events` on contiguous groups of frames in ``n_threads`` threads (the kernel
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
        bad[g] = _bin_events(
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
        raise ValueError(f"frames must be (T, P, H, W), got shape {frames.shape}")
    if not _is_int(frames_per_clip) or frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be an integer >= 1, got {frames_per_clip!r}")
    stride = frames_per_clip if stride is None else stride
    if not _is_int(stride) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
    n_frames = frames.shape[0]
    n = (n_frames - frames_per_clip) // stride + 1 if n_frames >= frames_per_clip else 0
    out = np.empty((n, frames_per_clip, *frames.shape[1:]), dtype=frames.dtype)
    for k in range(n):
        out[k] = frames[k * stride : k * stride + frames_per_clip]
    return out


# --------------------------------------------------------------------------------------------
# benchmark
# --------------------------------------------------------------------------------------------


def bench_binning(
    n_events: int = 2_000_000,
    repeats: int = 3,
    *,
    time_window_us: int = 16_000,
    duration_us: int = 2_000_000,
    seed: int = 0,
) -> dict:
    """Time :func:`to_frames` against ``tonic.transforms.ToFrame`` side by side on the same events.

    Random events (fixed ``seed``) on a 128x128 sensor, uniform over ``duration_us``, binned with
    ``time_window_us`` windows, both polarities. Our kernels are compiled and run once before timing;
    each variant reports its best of ``repeats`` runs: ours with the default threads (``threads`` says
    how many that was), ours on one thread, and tonic. Returns a dict with ``n_events``, ``n_frames``,
    ``threads``, ``ours_s``, ``ours_events_per_s``, ``ours_1thread_s``, ``ours_1thread_events_per_s``,
    ``tonic_s``, ``tonic_events_per_s``, ``speedup`` and ``speedup_1thread`` (tonic time / ours) and
    ``identical`` (outputs compared); tonic's entries are ``None`` (with ``tonic_error``) if tonic cannot
    be imported. tonic is imported here only: its package import pulls in torch, which the rest of
    ``events`` never does.
    """
    if not _is_int(n_events) or n_events < 1 or not _is_int(repeats) or repeats < 1:
        raise ValueError("n_events and repeats must be positive integers")
    rng = np.random.default_rng(seed)
    ev = np.empty(n_events, dtype=EVENT_DTYPE)
    ev["t"] = np.sort(rng.integers(0, duration_us, n_events))
    ev["x"] = rng.integers(0, 128, n_events)
    ev["y"] = rng.integers(0, 128, n_events)
    ev["p"] = rng.integers(0, 2, n_events)
    sensor = SensorSize(128, 128, 2)

    def best(fn):
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        return min(times), result

    to_frames(ev, sensor, time_window_us=time_window_us)  # compile and warm up
    ours_s, ours = best(lambda: to_frames(ev, sensor, time_window_us=time_window_us))
    single_s, single = best(lambda: to_frames(ev, sensor, time_window_us=time_window_us, threads=1))
    result = {
        "n_events": n_events,
        "sensor_size": list(sensor),
        "time_window_us": time_window_us,
        "n_frames": int(ours.shape[0]),
        "threads": _thread_count(None, n_events, ours.shape[0]),
        "ours_s": ours_s,
        "ours_events_per_s": n_events / ours_s,
        "ours_1thread_s": single_s,
        "ours_1thread_events_per_s": n_events / single_s,
        "tonic_s": None,
        "tonic_events_per_s": None,
        "speedup": None,
        "speedup_1thread": None,
        "identical": None,
    }
    try:
        from tonic.transforms import ToFrame
    except Exception as err:  # tonic is optional for the benchmark
        result["tonic_error"] = f"{type(err).__name__}: {err}"
        return result
    tonic_frame = ToFrame(sensor_size=tuple(sensor), time_window=time_window_us)
    tonic_s, theirs = best(lambda: tonic_frame(ev))
    result.update(
        tonic_s=tonic_s,
        tonic_events_per_s=n_events / tonic_s,
        speedup=tonic_s / ours_s,
        speedup_1thread=tonic_s / single_s,
        identical=bool(theirs.shape == ours.shape and np.array_equal(theirs, ours) and np.array_equal(single, ours)),
    )
    return result
