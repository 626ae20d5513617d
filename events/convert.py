"""Converting event files: a streaming writer for every writable format, and :func:`convert`, which reads any
readable file chunk by chunk (``events.io.reader``) into one of them, so memory stays bounded by the chunk.

| format          | written as                                                     | default for names  |
| --------------- | -------------------------------------------------------------- | ------------------ |
| ``hdf5``        | the project's HDF5 event file (``formats/hdf5.py``), columns    | ``.h5``, ``.hdf5`` |
|                 | chunked and grown as events arrive                             |                    |
| ``gesture_npy`` | tonic's DVS Gesture ``.npy``: float64 rows x, y, p, t / 1000    | ``.npy``           |
|                 | (ms; exact back to the µs below 2^50 µs), 128 x 128 at most    |                    |
| ``evt3``,       | Prophesee RAW EVT 3.0 / EVT 2.0 and DAT, through faery          | ``.raw`` (EVT 3.0), |
| ``evt2``, ``dat`` | (``formats/prophesee.py``)                                   | ``.dat``           |
| ``aedat4``      | AEDAT 4 (iniVation DV), one LZ4 event stream, through faery     | ``.aedat4``        |
|                 | (``formats/aedat4_writer.py``)                                 |                    |

Every writer writes a temporary file renamed over the target when all went well (``events.atomic``), so a
failed conversion leaves the target as it was, and a killed one a temporary file, which the next conversion to that
target removes. Each checks what it is given: events on the sensor, ``t >= 0``
and in time order, and what its format cannot hold exactly (an error, never a silently different file), so
reading the written file back returns exactly the events read.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import NamedTuple

import numpy as np

from events.atomic import atomic_file, atomic_write, check_output, remove_dead_temps
from events.formats import DEFAULT_CHUNK_EVENTS, CheckedChunks, check_chunk_size
from events.formats.gesture_npy import SENSOR_SIZE as NPY_SENSOR
from events.formats.gesture_npy import US_PER_MS
from events.formats.hdf5 import COLUMNS, FORMAT_MARKER, FORMAT_VERSION, GROUP
from events.io import reader
from events.types import EVENT_DTYPE, SensorSize

WRITABLE = ("hdf5", "gesture_npy", "evt3", "evt2", "dat", "aedat4")
SUFFIXES = {".h5": "hdf5", ".hdf5": "hdf5", ".npy": "gesture_npy", ".raw": "evt3", ".dat": "dat", ".aedat4": "aedat4"}
NPY_HEADER_BYTES = 128  # room for any row count; the header is rewritten with the count at the end
NPY_MAX_T_US = 1 << 50  # t / 1000 in float64 comes back to the same µs below this


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
            raise ValueError(f"{path}: cannot tell the output format from its name (known: {known}); give --format")
    if format not in WRITABLE:
        raise ValueError(f"cannot write event format {format!r}; writable: {', '.join(WRITABLE)}")
    return format


class HDF5Writer(CheckedChunks):
    """Streaming writer of a project HDF5 event file (a context manager; ``write(events)`` appends)."""

    CHUNK = 1 << 16

    def __enter__(self) -> HDF5Writer:
        import h5py

        w, h, n_pol = self.sensor_size
        if not (0 < w <= 1 << 15 and 0 < h <= 1 << 15 and n_pol in (1, 2)):
            raise ValueError(f"{self.path}: bad sensor size {tuple(self.sensor_size)}")
        with ExitStack() as stack:
            self._fh, _ = stack.enter_context(atomic_write(self.path, "r+b"))
            f = stack.enter_context(h5py.File(self._fh, "w"))
            f.attrs["format"], f.attrs["format_version"] = FORMAT_MARKER, FORMAT_VERSION
            f.attrs["width"], f.attrs["height"], f.attrs["polarities"] = w, h, n_pol
            group = f.create_group(GROUP)
            self._columns = [
                group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=EVENT_DTYPE[name], chunks=(self.CHUNK,))
                for name in COLUMNS
            ]
            self._stack = stack.pop_all()
        return self

    def write(self, events) -> None:
        ev = self.check(events)
        for name, ds in zip(COLUMNS, self._columns):
            ds.resize((self.n,))
            ds[self.n - len(ev) :] = ev[name]
        self._fh.check()  # a refused write surfaces now, not after the whole file went to memory

    def __exit__(self, *exc) -> bool:
        return bool(self._stack.__exit__(*exc))


class GestureNpyWriter(CheckedChunks):
    """Streaming writer of tonic's DVS Gesture ``.npy`` (a context manager; ``write(events)`` appends rows)."""

    def __enter__(self) -> GestureNpyWriter:
        w, h, _ = self.sensor_size
        if w > NPY_SENSOR.width or h > NPY_SENSOR.height:
            raise ValueError(
                f"{self.path}: tonic's .npy holds {NPY_SENSOR.width}x{NPY_SENSOR.height} DVS Gesture events; "
                f"this recording's sensor is {w}x{h}"
            )
        self.sensor_size = NPY_SENSOR
        with ExitStack() as stack:
            self._fh = stack.enter_context(atomic_file(self.path))
            self._fh.write(_npy_header(0))
            self._stack = stack.pop_all()
        return self

    def write(self, events) -> None:
        ev = self.check(events)
        if len(ev) and ev["t"].max() >= NPY_MAX_T_US:
            raise ValueError(f"{self.path}: a time of {NPY_MAX_T_US} µs or later does not survive t / 1000 in ms")
        rows = np.empty((len(ev), 4), dtype="<f8")
        rows[:, 0], rows[:, 1], rows[:, 2] = ev["x"], ev["y"], ev["p"]
        rows[:, 3] = ev["t"] / US_PER_MS
        self._fh.write(rows.tobytes())

    def __exit__(self, *exc) -> bool:
        if exc[0] is None:
            self._fh.seek(0)
            self._fh.write(_npy_header(self.n))
        return bool(self._stack.__exit__(*exc))


def _npy_header(rows: int) -> bytes:
    """A ``.npy`` 1.0 header of ``NPY_HEADER_BYTES`` for ``rows`` x 4 little-endian float64, C order."""
    text = f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({rows}, 4), }}"
    pad = NPY_HEADER_BYTES - 10 - len(text) - 1
    return b"\x93NUMPY\x01\x00" + (NPY_HEADER_BYTES - 10).to_bytes(2, "little") + (text + " " * pad + "\n").encode()


def open_writer(path, format: str, sensor_size):
    """A streaming writer of ``format`` (one of ``WRITABLE``) for ``path``: a context manager whose ``write(events)``
    appends events in time order (checked, :class:`~events.formats.CheckedChunks`; ``n`` counts them); the file
    appears at ``path`` when the block ends without error."""
    if format == "hdf5":
        return HDF5Writer(path, sensor_size)
    if format == "gesture_npy":
        return GestureNpyWriter(path, sensor_size)
    if format in ("evt3", "evt2", "dat"):
        from events.formats.prophesee import PropheseeWriter

        return PropheseeWriter(path, format, sensor_size)
    if format == "aedat4":
        from events.formats.aedat4_writer import Aedat4Writer

        return Aedat4Writer(path, sensor_size)
    raise ValueError(f"cannot write event format {format!r}; writable: {', '.join(WRITABLE)}")


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
