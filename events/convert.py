"""Converting event files: :func:`convert` reads any readable file chunk by chunk (``events.io.reader``) into the
streaming writer of a writable format (:func:`open_writer`), so memory stays bounded by the chunk.

The writable formats, their writers and the output names that stand for them are those of the registered
formats' records (``events.formats.registry``; the table in docs/design.md, section 5, lists them). Every writer
writes a temporary file renamed over the target when all went well (``events.atomic``), so a failed conversion
leaves the target as it was, and a killed one a temporary file, which the next conversion to that target removes.
Each checks what it is given: events on the sensor, ``t >= 0`` and in time order, and what its format cannot hold
exactly (an error, never a silently different file), so reading the written file back returns exactly the events
read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from events.atomic import check_output, remove_dead_temps
from events.errors import InputError
from events.formats import DEFAULT_CHUNK_EVENTS, check_chunk_size
from events.formats.registry import EVENT_FORMATS, event_format
from events.io import reader
from events.types import SensorSize

WRITABLE = tuple(fmt.name for fmt in EVENT_FORMATS if fmt.writer is not None)
SUFFIXES = {suffix: fmt.name for fmt in EVENT_FORMATS if fmt.writer is not None for suffix in fmt.suffixes}
"""Output name ending -> the writable format it stands for."""


class Converted(NamedTuple):
    """What :func:`convert` did: events written, the formats read and written, the sensor size."""

    n_events: int
    source_format: str
    format: str
    sensor_size: SensorSize


def output_format(path, format: str | None = None) -> str:
    """``format`` when given (one of ``WRITABLE``), else the one ``path``'s suffix stands for (``SUFFIXES``);
    ``ValueError`` listing the choices otherwise."""
    if format is None:
        format = SUFFIXES.get(Path(path).suffix.lower())
        if format is None:
            known = ", ".join(f"{s} ({f})" for s, f in SUFFIXES.items())
            raise InputError(f"{path}: cannot tell the output format from its name (known: {known}); give --format")
    if format not in WRITABLE:
        raise InputError(f"cannot write event format {format!r}; writable: {', '.join(WRITABLE)}")
    return format


def open_writer(path, format: str, sensor_size):
    """A streaming writer of ``format`` (one of ``WRITABLE``) for ``path``: a context manager whose ``write(events)``
    appends events in time order (checked, :class:`~events.formats.CheckedChunks`; ``n`` counts them); the file
    appears at ``path`` when the block ends without error."""
    return event_format(output_format(path, format)).writer(path, sensor_size)


def convert(
    source: str | os.PathLike,
    target: str | os.PathLike,
    format: str | None = None,
    chunk_events: int = DEFAULT_CHUNK_EVENTS,
    progress: Callable[[int], None] | None = None,
) -> Converted:
    """Copy the events of ``source`` (any readable format) to ``target`` as ``format`` (default: from the target's
    name, :func:`output_format`), ``chunk_events`` at a time; ``progress(n)`` is called with each chunk's
    event count. The target is written atomically; reading it back gives exactly the source's events.

    Before anything is read, a target that is the source itself (also through a symbolic or hard link) or that
    exists and is not a regular file (a directory, FIFO, device or socket) is an ``OutputError`` naming it
    (``events.atomic.check_output``), and the target is left as it was. The temporary files that conversions to
    the same target left when they were killed (``.<name>.<pid>.<random>.tmp`` beside it) are removed first, by
    ``events.atomic.remove_dead_temps``'s rule (their process is gone, or they were not modified for a day)."""
    format = output_format(target, format)
    chunk_events = check_chunk_size(chunk_events, name="chunk_events")
    target = check_output(target, {"the input": source})  # before the source is read: the input is never replaced
    remove_dead_temps(target.parent, target.name)  # left by conversions to the same target that were killed
    with reader(source) as src, open_writer(target, format, src.sensor_size) as out:
        for events in src.iter_chunks(chunk_events):
            out.write(events)
            if progress is not None:
                progress(len(events))
        return Converted(out.n, src.format, format, src.sensor_size)
