"""N-MNIST ``.bin`` files (Orchard et al. 2015; ATIS sensor cropped to 34 x 34).

Byte layout: no header; the file is a run of 5-byte records, one per event:

    byte 0            x (column), 0..33
    byte 1            y (row), 0..33, or 240 for a timestamp-overflow marker
    byte 2, bit 7     polarity (1 = ON)
    byte 2 bits 6..0,
    bytes 3, 4        23-bit timestamp in microseconds, big-endian

A record with ``y == 240`` is a timestamp-overflow marker: 2**13 is added to the timestamps of it
and of every later record, and the marker itself is dropped. This is exactly what
``tonic.io.read_mnist_file`` does, so this reader returns the same events field by field.

Reading rejects (``EventFormatError`` with the byte offset of the record): an empty (0-byte)
file, a file whose length is not a multiple of 5 (offset of the partial record), and a
non-marker record whose x or y lies outside the 34 x 34 sensor. Events come back in file order.
A recording with no events is stored as a single overflow marker (5 bytes), not as an empty
file.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator

import numpy as np

from events.atomic import atomic_write
from events.errors import InputError
from events.formats import EventFileReader, as_event_array
from events.formats.record import EventFormat
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, check_in_bounds, empty_events

SENSOR_SIZE = SensorSize(34, 34, 2)
RECORD_BYTES = 5
OVERFLOW_Y = 240
OVERFLOW_US = 1 << 13
TS_MAX = (1 << 23) - 1


class NMNISTReader(EventFileReader):
    """Streaming reader of one N-MNIST ``.bin`` file (see the module docstring for the bytes)."""

    format = "nmnist"

    def __init__(self, path):
        super().__init__(path)
        self.sensor_size = SENSOR_SIZE

    def _chunks(self, max_events: int) -> Iterator[np.ndarray]:
        with open(self.path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            yield from iter_records(fh.read, size, str(self.path), max_events)


def decode_nmnist_bytes(data: bytes, path: str | None = None) -> np.ndarray:
    """Decode a whole N-MNIST file held in memory (e.g. a zip member); ``path`` names it in errors."""
    parts = list(iter_records(io.BytesIO(data).read, len(data), path, 1 << 20))
    return np.concatenate(parts) if parts else empty_events()


def iter_records(read: Callable[[int], bytes], size: int, path: str | None, max_records: int) -> Iterator[np.ndarray]:
    """Decode ``size`` bytes delivered by ``read(n)`` in slices of at most ``max_records`` records."""
    if size == 0:
        raise EventFormatError("empty file (0 bytes): no N-MNIST records", path, 0)
    n_full = size // RECORD_BYTES
    overflows = 0  # markers seen so far: each adds OVERFLOW_US to every later timestamp
    rec = 0
    while rec < n_full:
        n = min(max_records, n_full - rec)
        buf = read(n * RECORD_BYTES)
        if len(buf) != n * RECORD_BYTES:
            raise EventFormatError(f"file ended early (expected {size} bytes)", path, rec * RECORD_BYTES + len(buf))
        events, overflows, bad = _decode(buf, overflows)
        if len(events):
            yield events
        if bad is not None:
            i, x, y = bad
            raise EventFormatError(
                f"record {rec + i} has x={x}, y={y}: outside the 34x34 sensor and not an "
                f"overflow marker (y={OVERFLOW_Y})",
                path,
                (rec + i) * RECORD_BYTES,
            )
        rec += n
    if size % RECORD_BYTES:
        raise EventFormatError(
            f"truncated record: {size % RECORD_BYTES} trailing bytes of a {RECORD_BYTES}-byte event "
            f"(file length {size} is not a multiple of {RECORD_BYTES})",
            path,
            n_full * RECORD_BYTES,
        )


def _decode(buf: bytes, overflows: int):
    """Decode whole records; returns (events before any bad record, overflow count, bad or None)."""
    raw = np.frombuffer(buf, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    x, y = raw[:, 0], raw[:, 1]
    marker = y == OVERFLOW_Y
    bad = ~marker & ((x >= SENSOR_SIZE.width) | (y >= SENSOR_SIZE.height))
    first_bad = None
    if bad.any():
        i = int(np.argmax(bad))
        first_bad = (i, int(x[i]), int(y[i]))
        raw, marker = raw[:i], marker[:i]
        x, y = raw[:, 0], raw[:, 1]
    b2 = raw[:, 2].astype(np.int64)
    ts = ((b2 & 0x7F) << 16) | (raw[:, 3].astype(np.int64) << 8) | raw[:, 4]
    cum = np.cumsum(marker, dtype=np.int64) + overflows
    keep = ~marker
    out = np.empty(int(keep.sum()), dtype=EVENT_DTYPE)
    out["x"] = x[keep]
    out["y"] = y[keep]
    out["t"] = (ts + cum * OVERFLOW_US)[keep]
    out["p"] = b2[keep] >> 7
    return out, int(cum[-1]) if len(cum) else overflows, first_bad


def write_nmnist(path, events) -> None:
    """Write ``events`` as an N-MNIST ``.bin`` file (atomically: temp file, then rename).

    Events must lie on the 34 x 34 sensor with polarity 0/1 and ``t >= 0``. Timestamps beyond
    the 23-bit range are encoded with the fewest overflow markers (y == 240, x == 0, zero
    timestamp) placed just before the event that needs them; a timestamp that drops more than
    the 23-bit range below an earlier one cannot be encoded and raises ``ValueError``.
    No events are written as one marker record, so the file is never empty (an empty file reads
    as damage). Reading the file back returns exactly ``events`` (as ``EVENT_DTYPE``).
    """
    ev = as_event_array(events)
    check_in_bounds(ev, SENSOR_SIZE, path)
    t = ev["t"]
    if len(t) and t.min() < 0:
        raise InputError("N-MNIST timestamps must be >= 0")
    # k[i]: overflow markers before event i; the fewest with 0 <= t - k * 2**13 <= TS_MAX.
    need = np.maximum(0, -((TS_MAX - t) // OVERFLOW_US))
    k = np.maximum.accumulate(need) if len(t) else need
    stored = t - k * OVERFLOW_US
    if len(t) and stored.min() < 0:
        i = int(np.argmax(stored < 0))
        raise InputError(
            f"event {i}: t={int(t[i])} lies more than 2**23 us before an earlier event; N-MNIST cannot encode it"
        )
    n_markers = int(k[-1]) if len(k) else 1
    rec = np.zeros((len(ev) + n_markers, RECORD_BYTES), dtype=np.uint8)
    rec[:, 1] = OVERFLOW_Y  # every row not overwritten below is a marker
    pos = np.arange(len(ev)) + k
    rec[pos, 0] = ev["x"]
    rec[pos, 1] = ev["y"]
    rec[pos, 2] = (ev["p"].astype(np.uint8) << 7) | ((stored >> 16) & 0x7F).astype(np.uint8)
    rec[pos, 3] = (stored >> 8) & 0xFF
    rec[pos, 4] = stored & 0xFF
    with atomic_write(path) as (fh, _):
        fh.write(rec.tobytes())


FORMAT = EventFormat(
    name="nmnist",
    label="N-MNIST",
    title="N-MNIST .bin (ATIS), 5 bytes an event",
    reader=NMNISTReader,
    suffixes=(".bin",),
    sensor="34 x 34",
)
"""No header to tell it by: a file that no signature matched is N-MNIST when its name ends ``.bin``."""
