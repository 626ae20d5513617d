"""tonic's preprocessed DVS Gesture samples (``ibmGestureTrain/userNN_<lighting>/<class>.npy``): their reader and
the streaming writer ``nsm convert`` uses.

Each file is a NumPy ``.npy`` array (format 1.0/2.0/3.0 header after the ``\\x93NUMPY`` magic)
of shape ``(n, 4)`` with numeric columns ``x, y, p, t``: x, y on the 128 x 128 sensor,
polarity 0/1 and ``t`` in **milliseconds** (tonic multiplies it by 1000 on loading). This
reader converts to ``EVENT_DTYPE`` with ``t`` in µs, rounded to the nearest µs
(``round(t_ms * 1000)``, computed in float64 whatever the float's width, so a float ``1.234`` ms becomes 1234 µs
rather than truncating, and a float16 column cannot overflow).

Rows are read ``max_events`` at a time through a memory map, never the whole array. Rejected
with ``EventFormatError`` (byte offset of the header or of the offending row): a bad magic or
header, a dtype that is not plain integer/float, a shape other than ``(n, 4)``, a file shorter
or longer than its header says, and any row with a non-finite or non-integral x/y/p, x or y off
the sensor, p not 0/1, or t negative, not finite, or later than :func:`events.types.time_limit` (integers: the
int64 µs range; floats: 2^53 µs, beyond which a float64 no longer holds whole µs). Timestamps are not required to
be in order (the format does not promise it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack

import numpy as np

from events.atomic import atomic_file
from events.errors import InputError
from events.formats import CheckedChunks, EventFileReader
from events.formats.record import EventFormat, Signature
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, bad_times, time_limit, times_us

SENSOR_SIZE = SensorSize(128, 128, 2)
MAGIC = b"\x93NUMPY"
US_PER_MS = 1000
NPY_HEADER_BYTES = 128  # room for any row count; the writer rewrites the header with the count at the end
NPY_MAX_T_US = 1 << 50  # t / 1000 in float64 comes back to the same µs below this


class GestureNpyReader(EventFileReader):
    """Streaming reader of one tonic DVS Gesture ``.npy`` sample."""

    format = "gesture_npy"

    def __init__(self, path):
        super().__init__(path)
        self.sensor_size = SENSOR_SIZE
        with open(self.path, "rb") as fh:
            self.shape, self.dtype, self.fortran, self.data_offset = _read_header(fh, str(self.path))
            size = os.fstat(fh.fileno()).st_size
        expect = self.data_offset + self.shape[0] * 4 * self.dtype.itemsize
        if size != expect:
            raise EventFormatError(
                f"file is {size} bytes but its header describes {expect} ({self.shape[0]} rows of 4 {self.dtype})",
                self.path,
                min(size, expect),
            )
        self.n_events = self.shape[0]

    def _chunks(self, max_events: int) -> Iterator[np.ndarray]:
        if self.n_events == 0:
            return
        mm = np.memmap(
            self.path,
            dtype=self.dtype,
            mode="r",
            offset=self.data_offset,
            shape=self.shape,
            order="F" if self.fortran else "C",
        )
        try:
            for start in range(0, self.n_events, max_events):
                block = np.array(mm[start : start + max_events])
                out, bad = _convert(block)
                if len(out):
                    yield out
                if bad is not None:
                    row, col, what = start + bad[0], bad[1], bad[2]
                    raise EventFormatError(f"row {row}: {what}", self.path, self._offset(row, col))
        finally:
            del mm

    def _offset(self, row: int, col: int) -> int:
        item = self.dtype.itemsize
        if self.fortran:
            return self.data_offset + (col * self.n_events + row) * item
        return self.data_offset + (row * 4 + col) * item


def _read_header(fh, path: str):
    """Parse the .npy header; returns (shape, dtype, fortran_order, data offset)."""
    fmt = np.lib.format
    try:
        major, _minor = fmt.read_magic(fh)
        reader = {1: fmt.read_array_header_1_0, 2: fmt.read_array_header_2_0}.get(major)
        if reader is None and major == 3:  # 3.0 differs from 2.0 only in allowing utf-8 names
            reader = fmt.read_array_header_2_0
        if reader is None:
            raise InputError(f"unsupported .npy format version {major}")
        shape, fortran, dtype = reader(fh)
    except EventFormatError:
        raise
    except Exception as err:  # numpy raises ValueError / SyntaxError on a malformed header
        raise EventFormatError(f"bad .npy header: {err}", path, 0) from None
    offset = fh.tell()
    if dtype.kind not in "iuf" or dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise EventFormatError(f".npy dtype {dtype} is not a plain integer or float type", path, 0)
    if len(shape) != 2 or shape[1] != 4:
        raise EventFormatError(f".npy array has shape {shape}; expected (n, 4) columns x, y, p, t", path, 0)
    return shape, dtype, fortran, offset


def _convert(block: np.ndarray):
    """(n, 4) x, y, p, t[ms] -> (EVENT_DTYPE events before the first bad row, (row, col, problem) or None)."""
    x, y, p, t = (block[:, j] for j in range(4))
    floaty = block.dtype.kind == "f"
    checks = []
    for j, (col, top, name) in enumerate(((x, SENSOR_SIZE.width, "x"), (y, SENSOR_SIZE.height, "y"), (p, 2, "p"))):
        bad = (col < 0) | (col >= top)
        if floaty:
            bad |= ~np.isfinite(col) | (np.floor(col) != col)
        checks.append((bad, j, f"{name} is not an integer in 0..{top - 1}"))
    latest = time_limit(t.dtype, US_PER_MS)
    checks.append((bad_times(t, US_PER_MS), 3, f"t is not a time in 0..{latest} ms ({t.dtype} column)"))
    first = None
    for bad, j, what in checks:
        if bad.any():
            i = int(np.argmax(bad))
            if first is None or i < first[0]:
                first = (i, j, what)
    n = len(block) if first is None else first[0]
    out = np.empty(n, dtype=EVENT_DTYPE)
    out["x"], out["y"], out["p"] = x[:n], y[:n], p[:n]
    out["t"] = times_us(t[:n], US_PER_MS)
    return out, first


class GestureNpyWriter(CheckedChunks):
    """Streaming writer of tonic's DVS Gesture ``.npy``: float64 rows x, y, p, t / 1000 (ms; exact back to the µs
    below ``NPY_MAX_T_US``), a context manager whose ``write(events)`` appends rows (checked as
    :class:`~events.formats.CheckedChunks` checks them); the file appears at ``path`` when the block ends without
    error. A sensor larger than 128 x 128 is a ``ValueError`` naming ``path`` when the block is entered, a later
    time one when it is written."""

    def __enter__(self) -> GestureNpyWriter:
        w, h, _ = self.sensor_size
        if w > SENSOR_SIZE.width or h > SENSOR_SIZE.height:
            raise InputError(
                f"{self.path}: tonic's .npy holds {SENSOR_SIZE.width}x{SENSOR_SIZE.height} DVS Gesture events; "
                f"this recording's sensor is {w}x{h}"
            )
        self.sensor_size = SENSOR_SIZE
        with ExitStack() as stack:
            self._fh = stack.enter_context(atomic_file(self.path))
            self._fh.write(_npy_header(0))
            self._stack = stack.pop_all()
        return self

    def write(self, events) -> None:
        """Append ``events`` (fields x, y, t, p; after every event written before)."""
        ev = self.check(events)
        if len(ev) and ev["t"].max() >= NPY_MAX_T_US:
            raise InputError(f"{self.path}: a time of {NPY_MAX_T_US} µs or later does not survive t / 1000 in ms")
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
    return MAGIC + b"\x01\x00" + (NPY_HEADER_BYTES - 10).to_bytes(2, "little") + (text + " " * pad + "\n").encode()


FORMAT = EventFormat(
    name="gesture_npy",
    label="tonic's .npy",
    title="tonic's DVS Gesture .npy (x, y, p, t in ms)",
    reader=GestureNpyReader,
    signature=Signature(MAGIC, ".npy"),
    suffixes=(".npy",),
    sensor=f"{SENSOR_SIZE.width} x {SENSOR_SIZE.height}",
    writer=GestureNpyWriter,
    max_side=SENSOR_SIZE.width,
    writes=f"float64 rows x, y, p, t / 1000, times below 2^{NPY_MAX_T_US.bit_length() - 1} µs",
)
