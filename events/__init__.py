"""Event-camera data: readers and writers of the real file formats, offline data sets,
numba binning into frames, an HDF5 frame cache and an event-camera simulator.

This package never imports torch. Public names are resolved lazily, so that ``import events``
stays cheap (numba kernels compile only when binning is first used).
"""

from __future__ import annotations

import importlib

_PUBLIC = {
    # types
    "EVENT_DTYPE": "events.types",
    "SensorSize": "events.types",
    "Recording": "events.types",
    "EventFormatError": "events.types",
    "make_events": "events.types",
    # the errors a user can mend (what the nsm command prints as one line)
    "UserError": "events.errors",
    "InputError": "events.errors",
    "MissingInputError": "events.errors",
    "ExistingOutputError": "events.errors",
    # file formats
    "read": "events.io",
    "reader": "events.io",
    "detect_format": "events.io",
    # data sets
    "NMNIST": "events.datasets",
    "DVSGesture": "events.datasets",
    "DatasetNotFoundError": "events.datasets",
    # frames and cache
    "FrameSpec": "events.frames",
    "to_frames": "events.frames",
    "frames_from_spec": "events.frames",
    "split_clips": "events.frames",
    "FrameCache": "events.cache",
    "CachedFrames": "events.cache",
    # live sources (the optional extra nsm-events[live])
    "open_source": "events.live",
    "LiveSourceError": "events.live",
    # simulator
    "simulate_digits": "events.simulate",
    "simulate_gestures": "events.simulate",
    "EventCameraModel": "events.simulate",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'events' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
