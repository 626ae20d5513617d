"""``FrameSpec``: how a recording is sliced and binned into frames (docs/design.md section 5)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from events.errors import InputError
from events.types import is_int

_POLARITY_MODES = ("both", "on", "off", "merge")
_SPANS = ("events", "sample")
_SPEC_VERSION = 1
_MAX_SIDE = 32767  # EVENT_DTYPE coordinates are int16


def _is_number(v) -> bool:
    return (is_int(v) or isinstance(v, (float, np.floating))) and not isinstance(v, (bool, np.bool_))


def sensor_wh(sensor_size) -> tuple[int, int]:
    try:
        w, h = int(sensor_size[0]), int(sensor_size[1])
    except (TypeError, IndexError, ValueError):
        raise InputError(f"sensor_size must be (width, height[, polarities]), got {sensor_size!r}") from None
    if not (0 < w <= _MAX_SIDE and 0 < h <= _MAX_SIDE):
        raise InputError(f"sensor width and height must be in 1..{_MAX_SIDE} (int16 coordinates), got {sensor_size!r}")
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
            raise InputError(
                "set exactly one of n_time_bins, time_window_us and event_count "
                f"(got {', '.join(chosen) if chosen else 'none'})"
            )
        mode = chosen[0]
        value = modes[mode]
        if not is_int(value) or value <= 0:
            raise InputError(f"{mode} must be a positive integer, got {value!r}")
        object.__setattr__(self, mode, int(value))
        if self.polarity not in _POLARITY_MODES:
            raise InputError(f"polarity must be one of {_POLARITY_MODES}, got {self.polarity!r}")
        if not is_int(self.downsample) or self.downsample < 1:
            raise InputError(f"downsample must be an integer >= 1, got {self.downsample!r}")
        object.__setattr__(self, "downsample", int(self.downsample))
        if self.crop is not None:
            crop = tuple(self.crop) if isinstance(self.crop, (tuple, list)) else None
            if crop is None or len(crop) != 2 or not all(is_int(c) and c > 0 for c in crop):
                raise InputError(f"crop must be None or (width, height) of positive integers, got {self.crop!r}")
            object.__setattr__(self, "crop", (int(crop[0]), int(crop[1])))
        if not isinstance(self.binary, (bool, np.bool_)):
            raise InputError(f"binary must be True or False, got {self.binary!r}")
        object.__setattr__(self, "binary", bool(self.binary))
        if self.frames_per_clip is not None:
            if not is_int(self.frames_per_clip) or self.frames_per_clip < 1:
                raise InputError(f"frames_per_clip must be None or an integer >= 1, got {self.frames_per_clip!r}")
            object.__setattr__(self, "frames_per_clip", int(self.frames_per_clip))
        if not isinstance(self.include_incomplete, (bool, np.bool_)):
            raise InputError(f"include_incomplete must be True or False, got {self.include_incomplete!r}")
        object.__setattr__(self, "include_incomplete", bool(self.include_incomplete))
        ov = self.overlap
        if mode == "n_time_bins":
            if not _is_number(ov) or not 0 <= ov < 1:
                raise InputError(f"overlap for n_time_bins is a fraction of a bin, 0 <= overlap < 1; got {ov!r}")
            if self.include_incomplete:
                raise InputError("include_incomplete applies to time_window_us and event_count, not n_time_bins")
            object.__setattr__(self, "overlap", int(ov) if is_int(ov) else float(ov))
        else:
            if not is_int(ov) or not 0 <= ov < value:
                unit = "µs" if mode == "time_window_us" else "events"
                raise InputError(
                    f"overlap for {mode} is an integer number of {unit}, 0 <= overlap < {mode}={value}; got {ov!r}"
                )
            object.__setattr__(self, "overlap", int(ov))
        if self.span not in _SPANS:
            raise InputError(f"span must be one of {_SPANS}, got {self.span!r}")
        if self.span == "sample" and mode != "time_window_us":
            raise InputError("span='sample' needs time_window_us (fixed windows over the sample's interval)")
        if self.max_frames is not None:
            if not is_int(self.max_frames) or self.max_frames < 1:
                raise InputError(f"max_frames must be None or an integer >= 1, got {self.max_frames!r}")
            object.__setattr__(self, "max_frames", int(self.max_frames))
            if self.frames_per_clip is not None and self.max_frames < self.frames_per_clip:
                raise InputError(
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
        return capped(self, self.n_time_bins)

    @property
    def channels(self) -> int:
        """``P``: 2 for ``polarity="both"``, else 1."""
        return 2 if self.polarity == "both" else 1

    def output_shape(self, sensor_size) -> tuple[int, int, int]:
        """``(P, H, W)`` of one frame for a sensor ``(width, height[, polarities])``."""
        w, h = sensor_wh(sensor_size)
        if self.crop is not None:
            cw, ch = self.crop
            if cw > w or ch > h:
                raise InputError(f"crop {cw}x{ch} is larger than the {w}x{h} sensor")
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
            raise InputError(f"a frame spec must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown frame spec key(s) {unknown}; known keys are {sorted(known)}")
        kw = dict(d)
        if "crop" in kw and isinstance(kw["crop"], list):
            kw["crop"] = tuple(kw["crop"])
        return cls(**kw)

    def key(self) -> str:
        """Stable 16-hex-digit hash of every field (and the spec format version)."""
        blob = json.dumps({"version": _SPEC_VERSION, **self.to_dict()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def capped(spec: FrameSpec, count: int) -> int:
    """``count`` slices limited to ``spec.max_frames``."""
    return count if spec.max_frames is None else min(count, spec.max_frames)
