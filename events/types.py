"""Core event types shared by every reader, writer, transform and data set.

An event stream is a NumPy structured array of ``EVENT_DTYPE``:

    x, y : int16   pixel column and row, 0 <= x < width, 0 <= y < height
    t    : int64   timestamp in microseconds, non-decreasing within a recording
    p    : int8    polarity, 0 (OFF, darker) or 1 (ON, brighter)

The field names are the ones ``tonic.transforms`` indexes by, so arrays of this dtype can be
handed to tonic directly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from os import PathLike
from typing import NamedTuple

import numpy as np

from events.errors import InputError

EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.int8)])

SEED_MAX = 2**63 - 1
"""The largest seed: seeds are non-negative int64 values (TOML's integers; what torch's generators accept)."""

T_EXACT_US = 2**53
"""The latest time read from a float: 2^53 µs (285 years), up to which a float64 holds every whole µs."""


class SensorSize(NamedTuple):
    """Sensor geometry in tonic's order: ``(width, height, polarities)``."""

    width: int
    height: int
    polarities: int = 2


class EventFormatError(InputError):
    """Malformed event data: names the file and, where it applies, the byte offset.

    ``str(err)`` reads ``"<path>: at byte <offset>: <problem>"`` (the offset part only when known).
    """

    def __init__(self, problem: str, path: str | PathLike | None = None, offset: int | None = None):
        self.problem = problem
        self.path = None if path is None else str(path)
        self.offset = offset
        where = "" if self.path is None else f"{self.path}: "
        at = "" if offset is None else f"at byte {offset}: "
        super().__init__(f"{where}{at}{problem}")


def is_int(value) -> bool:
    """Whether ``value`` is an integer (Python or NumPy), a bool not counting as one."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int``, or ``ValueError`` naming ``name`` unless it is an integer (``is_int``) within
    ``minimum``..``maximum`` (either bound optional)."""
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            bounds = f" in {minimum}..{maximum}"
        elif minimum is not None:
            bounds = f" >= {minimum}"
        else:
            bounds = "" if maximum is None else f" <= {maximum}"
        raise InputError(f"{name} must be an integer{bounds}, got {value!r}")
    return int(value)


def check_float(
    name: str,
    value,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    open_min: bool = False,
    open_max: bool = False,
) -> float:
    """``value`` as a ``float``, or ``ValueError`` naming ``name`` and the valid range unless it is a finite real
    number (an integer counts, a bool does not) within ``minimum``..``maximum`` (either bound optional;
    ``open_min``/``open_max`` exclude the bound itself). The message writes the range as an interval,
    e.g. ``must be a finite number in (0, 1], got 2.0``."""
    real = is_int(value) or isinstance(value, (float, np.floating))
    if not (
        real
        and -math.inf < value < math.inf
        and (minimum is None or value > minimum or (not open_min and value == minimum))
        and (maximum is None or value < maximum or (not open_max and value == maximum))
    ):
        if minimum is not None and maximum is not None:
            bounds = f" in {'(' if open_min else '['}{minimum:g}, {maximum:g}{')' if open_max else ']'}"
        elif minimum is not None:
            bounds = f" {'>' if open_min else '>='} {minimum:g}"
        else:
            bounds = "" if maximum is None else f" {'<' if open_max else '<='} {maximum:g}"
        raise InputError(f"{name} must be a finite number{bounds}, got {value!r}")
    return float(value)


def time_limit(dtype: np.dtype, scale: int = 1) -> int:
    """The latest value a timestamp column of ``dtype`` may hold when its times are ``value * scale`` µs (what
    :func:`bad_times` accepts): ``2^53 // scale`` for floats, ``(2^63 - 1) // scale`` for integers."""
    return T_EXACT_US // scale if np.dtype(dtype).kind == "f" else (2**63 - 1) // scale


def bad_times(t: np.ndarray, scale: int = 1) -> np.ndarray:
    """Mask of the values of a timestamp column (integer or float; time ``t * scale`` µs) that are no time in
    ``0..time_limit(t.dtype, scale)``: negative, not finite, or so late that the µs would not fit int64 (integers)
    or be held exactly (floats, computed in float64 whatever their width: float16 ``t * 1000`` overflows)."""
    if t.dtype.kind == "f":
        t = t.astype(np.float64)
        return ~(np.isfinite(t) & (t >= 0) & (t <= time_limit(t.dtype, scale)))
    bad = t > time_limit(t.dtype, scale)
    return bad if t.dtype.kind == "u" else bad | (t < 0)


def times_us(t: np.ndarray, scale: int = 1) -> np.ndarray:
    """A timestamp column that :func:`bad_times` accepts, as int64 µs (``t * scale``; floats rounded to the
    nearest µs)."""
    if t.dtype.kind == "f":
        return np.rint(t.astype(np.float64) * scale).astype(np.int64)
    return t.astype(np.int64) * scale


def first_disorder(events: np.ndarray, last_t: int | None = None) -> int:
    """Index of the first event earlier than its predecessor (the first one compared with ``last_t``,
    the time of the event before the chunk); -1 when the chunk is in time order."""
    t = events["t"]
    if len(t) == 0:
        return -1
    if last_t is not None and t[0] < last_t:
        return 0
    bad = np.flatnonzero(t[1:] < t[:-1])
    return int(bad[0]) + 1 if len(bad) else -1


def empty_events(n: int = 0) -> np.ndarray:
    """A zero-filled event array of length ``n``."""
    return np.zeros(n, dtype=EVENT_DTYPE)


def make_events(x, y, t, p) -> np.ndarray:
    """Pack four equal-length columns into an ``EVENT_DTYPE`` array."""
    x, y, t, p = (np.asarray(c) for c in (x, y, t, p))
    if not (len(x) == len(y) == len(t) == len(p)):
        raise InputError(f"columns differ in length: x={len(x)} y={len(y)} t={len(t)} p={len(p)}")
    out = np.empty(len(x), dtype=EVENT_DTYPE)
    out["x"], out["y"], out["t"], out["p"] = x, y, t, p
    return out


def check_in_bounds(events: np.ndarray, sensor_size: SensorSize, path=None) -> None:
    """Raise ``EventFormatError`` if any event lies outside the sensor or has a bad polarity."""
    if len(events) == 0:
        return
    w, h, n_pol = sensor_size
    bad = (events["x"] < 0) | (events["x"] >= w) | (events["y"] < 0) | (events["y"] >= h)
    bad |= (events["p"] < 0) | (events["p"] >= max(n_pol, 2))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        e = events[i]
        raise EventFormatError(
            f"event {i} (x={e['x']}, y={e['y']}, p={e['p']}) lies outside the {w}x{h} sensor with {n_pol} polarities",
            path,
        )


@dataclass(frozen=True)
class Recording:
    """A whole recording: its events and the sensor that produced them."""

    events: np.ndarray
    sensor_size: SensorSize
    path: str | None = None
    meta: dict = field(default_factory=dict, compare=False)

    def __len__(self) -> int:
        return len(self.events)

    @property
    def duration_us(self) -> int:
        """Time from the first to the last event, in microseconds (0 when empty)."""
        return int(self.events["t"][-1] - self.events["t"][0]) if len(self.events) else 0
