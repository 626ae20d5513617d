"""AEDAT 3.1 files (cAER / jAER; the format of the original IBM DVS Gesture release).

Byte layout:

* Header: ASCII lines, each starting with ``#`` and ending with ``\\r\\n``. The first is
  ``#!AER-DAT3.<minor>``, the last ``#!END-HEADER``. The sensor size is taken from the header
  when a line names it: ``#Sensor-Size: <W>x<H>`` (written by :func:`write_aedat3`) or a known
  camera name (``DVS128`` 128x128, ``DAVIS240`` 240x180, ``DAVIS346`` 346x260); otherwise
  128 x 128 (DVS128, the IBM DVS Gesture camera).
* Packets until the end of the file, each a 28-byte little-endian header

      int16 eventType, int16 eventSource, int32 eventSize, int32 eventTSOffset,
      int32 eventTSOverflow, int32 eventCapacity, int32 eventNumber, int32 eventValid

  followed by ``eventNumber * eventSize`` bytes of events (``eventCapacity >= eventNumber`` is
  the size of the packet in the recording program's memory and takes no room in the file).
* Polarity events (eventType 1, eventSize 8, eventTSOffset 4): ``uint32 data`` (bit 0 valid,
  bit 1 polarity, bits 2-16 y, bits 17-31 x) then ``int32 timestamp`` (µs, >= 0). The full time
  is ``(eventTSOverflow << 31) | timestamp``. Events whose valid bit is 0 are dropped; packets of
  other types are skipped unread.

``EventFormatError`` (with the byte offset of the packet or event) for: a malformed header, a
packet header with a negative or inconsistent field (eventSize/eventTSOffset not matching the
type, eventNumber > eventCapacity, eventValid outside 0..eventNumber), a packet running past the
end of the file, a negative timestamp, or an event outside the sensor.

:class:`Aedat3Reader` streams the whole file; :meth:`Aedat3Reader.packet_index` scans it once
(bounded memory) into a :class:`PacketIndex` of the polarity packets, after which
:func:`read_time_range` reads one interval ``[start, end)`` by decoding only the packets whose
time span meets it (DVS Gesture reads one labelled gesture this way).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from events.atomic import atomic_write
from events.errors import InputError
from events.formats import EventFileReader, as_event_array
from events.formats.aedat_magic import SIGNATURE
from events.formats.record import EventFormat
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, check_in_bounds, empty_events

DEFAULT_SENSOR = SensorSize(128, 128, 2)
PACKET_HEADER = np.dtype(
    [
        ("type", "<i2"),
        ("source", "<i2"),
        ("size", "<i4"),
        ("ts_offset", "<i4"),
        ("ts_overflow", "<i4"),
        ("capacity", "<i4"),
        ("number", "<i4"),
        ("valid", "<i4"),
    ]
)
HEADER_BYTES = PACKET_HEADER.itemsize  # 28
POLARITY_TYPE = 1
POLARITY_EVENT = np.dtype([("data", "<u4"), ("ts", "<i4")])
MAX_HEADER_BYTES = 16 << 20
END_HEADER = b"#!END-HEADER"
_KNOWN_CAMERAS = (("DVS128", (128, 128)), ("DAVIS240", (240, 180)), ("DAVIS346", (346, 260)))
_SIZE_LINE = re.compile(rb"^#\s*Sensor-Size:\s*(\d+)\s*x\s*(\d+)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class PacketIndex:
    """The polarity packets of one AEDAT 3.1 file that hold at least one valid event.

    Parallel arrays, one entry a packet in file order: ``offsets`` (byte offset of the event
    data), ``counts`` (eventNumber), ``overflow`` (eventTSOverflow), ``t_min``/``t_max``
    (smallest/largest full timestamp of its valid events, µs) and ``n_valid``. ``file_size``
    and ``mtime_ns`` record the file the index was built from.
    """

    sensor_size: SensorSize
    data_offset: int
    offsets: np.ndarray
    counts: np.ndarray
    overflow: np.ndarray
    t_min: np.ndarray
    t_max: np.ndarray
    n_valid: np.ndarray
    file_size: int
    mtime_ns: int

    @property
    def n_events(self) -> int:
        return int(self.n_valid.sum())


class Aedat3Reader(EventFileReader):
    """Streaming reader of one AEDAT 3.1 file (see the module docstring for the bytes)."""

    format = "aedat3"

    def __init__(self, path):
        super().__init__(path)
        with open(self.path, "rb") as fh:
            self.header_lines, self.data_offset, self.sensor_size = _parse_header(fh, str(self.path))
        self._index: PacketIndex | None = None

    def _chunks(self, max_events: int) -> Iterator[np.ndarray]:
        with open(self.path, "rb") as fh:
            for off, hdr in _iter_packets(fh, self.data_offset, str(self.path)):
                if hdr["type"] != POLARITY_TYPE:
                    continue
                n = int(hdr["number"])
                for first in range(0, n, max_events):
                    m = min(max_events, n - first)
                    ev_off = off + HEADER_BYTES + first * POLARITY_EVENT.itemsize
                    fh.seek(ev_off)
                    buf = fh.read(m * POLARITY_EVENT.itemsize)
                    yield from _decode_polarity(buf, int(hdr["ts_overflow"]), self.sensor_size, str(self.path), ev_off)

    def packet_index(self) -> PacketIndex:
        """Scan the file once (one packet in memory at a time) and index its polarity packets."""
        if self._index is None:
            self._index = _build_index(self.path, self.data_offset, self.sensor_size)
        return self._index

    def read_time_range(self, start_us: int, end_us: int) -> np.ndarray:
        """Events with ``start_us <= t < end_us``, in file order, decoding only packets that meet it."""
        return read_time_range(self.path, start_us, end_us, self.packet_index())


def read_time_range(path, start_us: int, end_us: int, index: PacketIndex) -> np.ndarray:
    """Events of ``path`` with ``start_us <= t < end_us`` (file order), using a prebuilt ``index``.

    Only packets whose ``[t_min, t_max]`` meets the interval are read, so memory and time scale
    with the interval, not the recording. The index must come from this file as it is now.
    """
    st = os.stat(path)
    if st.st_size != index.file_size or st.st_mtime_ns != index.mtime_ns:
        raise InputError(f"{path}: file changed since its packet index was built")
    hit = np.flatnonzero((index.t_max >= start_us) & (index.t_min < end_us))
    parts = []
    with open(path, "rb") as fh:
        for i in hit:
            off, n = int(index.offsets[i]), int(index.counts[i])
            fh.seek(off)
            buf = fh.read(n * POLARITY_EVENT.itemsize)
            for ev in _decode_polarity(buf, int(index.overflow[i]), index.sensor_size, str(path), off):
                sel = (ev["t"] >= start_us) & (ev["t"] < end_us)
                parts.append(ev if sel.all() else ev[sel])
    return np.concatenate(parts) if parts else empty_events()


def _parse_header(fh, path: str):
    """Read the ``#`` header lines; returns (lines without '#' and CRLF, data offset, sensor size)."""
    first = fh.readline(256)
    if not re.match(rb"^#!AER-DAT3\.\d+\r?\n$", first):
        raise EventFormatError(f"not an AEDAT 3.x file: first line is {first[:40]!r}, expected '#!AER-DAT3.1'", path, 0)
    lines = [first]
    pos = len(first)
    while True:
        line = fh.readline(MAX_HEADER_BYTES)
        if not line:
            raise EventFormatError("header has no '#!END-HEADER' line", path, pos)
        if not line.startswith(b"#") or not line.endswith(b"\n"):
            raise EventFormatError(
                f"header line {len(lines) + 1} does not start with '#' and end a line: {line[:40]!r}", path, pos
            )
        lines.append(line)
        pos += len(line)
        if line.rstrip(b"\r\n") == END_HEADER:
            break
        if pos > MAX_HEADER_BYTES:
            raise EventFormatError(f"header longer than {MAX_HEADER_BYTES} bytes without '#!END-HEADER'", path, pos)
    sensor = DEFAULT_SENSOR
    for line in lines:
        m = _SIZE_LINE.match(line.rstrip(b"\r\n"))
        if m:
            w, h = int(m.group(1)), int(m.group(2))
            if not (0 < w <= 1 << 15 and 0 < h <= 1 << 15):
                raise EventFormatError(f"header names an impossible sensor size {w}x{h}", path, 0)
            sensor = SensorSize(w, h, 2)
            break
    else:
        text = b"".join(lines).upper()
        for name, (w, h) in _KNOWN_CAMERAS:
            if name.encode() in text:
                sensor = SensorSize(w, h, 2)
                break
    decoded = [ln.rstrip(b"\r\n").lstrip(b"#").decode("latin-1") for ln in lines]
    return decoded, pos, sensor


def _iter_packets(fh, data_offset: int, path: str) -> Iterator[tuple[int, np.void]]:
    """Yield (byte offset, header) of every packet, validating each header against the file size."""
    size = os.fstat(fh.fileno()).st_size
    off = data_offset
    while off < size:
        fh.seek(off)
        raw = fh.read(HEADER_BYTES)
        if len(raw) < HEADER_BYTES:
            raise EventFormatError(f"truncated packet header ({len(raw)} of {HEADER_BYTES} bytes)", path, off)
        hdr = np.frombuffer(raw, dtype=PACKET_HEADER)[0]
        _check_header(hdr, path, off)
        payload = int(hdr["number"]) * int(hdr["size"])
        if off + HEADER_BYTES + payload > size:
            raise EventFormatError(
                f"truncated packet: eventNumber {int(hdr['number'])} x eventSize {int(hdr['size'])} = "
                f"{payload} bytes, only {size - off - HEADER_BYTES} left in the file",
                path,
                off,
            )
        yield off, hdr
        off += HEADER_BYTES + payload


def _check_header(hdr, path: str, off: int) -> None:
    typ, esize, tso = int(hdr["type"]), int(hdr["size"]), int(hdr["ts_offset"])
    number, capacity, valid = int(hdr["number"]), int(hdr["capacity"]), int(hdr["valid"])
    problem = None
    if typ < 0:
        problem = f"negative eventType {typ}"
    elif typ == POLARITY_TYPE and (esize != POLARITY_EVENT.itemsize or tso != 4):
        problem = f"polarity packet with eventSize {esize} and eventTSOffset {tso} (expected 8 and 4)"
    elif esize < 1:
        problem = f"eventSize {esize} must be positive"
    elif not 0 <= tso <= esize - 4:
        problem = f"eventTSOffset {tso} does not fit an event of {esize} bytes"
    elif int(hdr["ts_overflow"]) < 0:
        problem = f"negative eventTSOverflow {int(hdr['ts_overflow'])}"
    elif not 0 <= number <= capacity:
        problem = f"eventNumber {number} outside 0..eventCapacity ({capacity})"
    elif not 0 <= valid <= number:
        problem = f"eventValid {valid} outside 0..eventNumber ({number})"
    if problem:
        raise EventFormatError(f"bad packet header: {problem}", path, off)


def _decode_polarity(buf: bytes, overflow: int, sensor: SensorSize, path: str, offset: int) -> Iterator[np.ndarray]:
    """Decode polarity events at byte ``offset``; yields the valid ones before any bad event, then
    raises for the bad one."""
    raw = np.frombuffer(buf, dtype=POLARITY_EVENT)
    data, ts = raw["data"], raw["ts"]
    valid = (data & 1).astype(bool)
    x = (data >> 17) & 0x7FFF
    y = (data >> 2) & 0x7FFF
    bad = valid & ((x >= sensor.width) | (y >= sensor.height) | (ts < 0))
    bad_i = int(np.argmax(bad)) if bad.any() else None
    if bad_i is not None:
        valid[bad_i:] = False
    out = np.empty(int(valid.sum()), dtype=EVENT_DTYPE)
    out["x"] = x[valid]
    out["y"] = y[valid]
    out["t"] = (np.int64(overflow) << 31) | ts[valid].astype(np.int64)
    out["p"] = (data[valid] >> 1) & 1
    if len(out):
        yield out
    if bad_i is not None:
        what = (
            f"negative timestamp {int(ts[bad_i])}"
            if ts[bad_i] < 0
            else f"x={int(x[bad_i])}, y={int(y[bad_i])} outside the {sensor.width}x{sensor.height} sensor"
        )
        raise EventFormatError(f"polarity event: {what}", path, offset + bad_i * POLARITY_EVENT.itemsize)


def _build_index(path, data_offset: int, sensor: SensorSize) -> PacketIndex:
    rows = []
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        for off, hdr in _iter_packets(fh, data_offset, str(path)):
            if hdr["type"] != POLARITY_TYPE or hdr["number"] == 0:
                continue
            n = int(hdr["number"])
            fh.seek(off + HEADER_BYTES)
            buf = fh.read(n * POLARITY_EVENT.itemsize)
            t = np.concatenate(
                list(_decode_polarity(buf, int(hdr["ts_overflow"]), sensor, str(path), off + HEADER_BYTES))
                or [empty_events()]
            )["t"]
            if len(t):
                rows.append((off + HEADER_BYTES, n, int(hdr["ts_overflow"]), int(t.min()), int(t.max()), len(t)))
    cols = np.array(rows, dtype=np.int64).reshape(-1, 6)
    return PacketIndex(
        sensor, data_offset, *(cols[:, j].copy() for j in range(6)), file_size=st.st_size, mtime_ns=st.st_mtime_ns
    )


def write_aedat3(path, events, sensor_size: SensorSize = DEFAULT_SENSOR, packet_events: int = 4096) -> None:
    """Write ``events`` as an AEDAT 3.1 file of polarity packets (atomically: temp file, rename).

    The header names the sensor (``#Sensor-Size: WxH``, plus ``#Source 1: DVS128`` for
    128 x 128). Events go out in the given order, at most ``packet_events`` a packet; a packet
    also ends where ``t >> 31`` (its eventTSOverflow) changes. Every event is written valid,
    eventCapacity == eventNumber == eventValid, eventSource 1. Events must lie on the sensor
    (x, y < 2**15), with polarity 0/1 and ``0 <= t < 2**62``. Reading back returns ``events``.
    """
    ev = as_event_array(events)
    sensor_size = SensorSize(*sensor_size)
    if not (0 < sensor_size.width <= 1 << 15 and 0 < sensor_size.height <= 1 << 15):
        raise InputError(f"sensor size {tuple(sensor_size)} does not fit AEDAT 3.1's 15-bit x and y")
    if int(packet_events) < 1:
        raise InputError(f"packet_events must be positive, got {packet_events}")
    check_in_bounds(ev, sensor_size, path)
    t = ev["t"]
    if len(t) and (t.min() < 0 or t.max() >= 1 << 62):
        raise InputError("AEDAT 3.1 timestamps must satisfy 0 <= t < 2**62")
    overflow = t >> 31
    data = (
        (ev["x"].astype(np.uint32) << 17)
        | (ev["y"].astype(np.uint32) << 2)
        | (ev["p"].astype(np.uint32) << 1)
        | np.uint32(1)
    )
    body = np.empty(len(ev), dtype=POLARITY_EVENT)
    body["data"] = data
    body["ts"] = (t & 0x7FFFFFFF).astype(np.int32)
    # Packet boundaries: every packet_events events and wherever the overflow counter changes.
    cuts = np.union1d(np.arange(0, len(ev), int(packet_events)), np.flatnonzero(np.diff(overflow)) + 1).astype(np.int64)
    bounds = np.append(cuts, len(ev))
    header = ["#!AER-DAT3.1", "#Format: RAW", f"#Sensor-Size: {sensor_size.width}x{sensor_size.height}"]
    if (sensor_size.width, sensor_size.height) == (128, 128):
        header.append("#Source 1: DVS128")
    header.append("#!END-HEADER")
    with atomic_write(path) as (fh, _):
        fh.write("".join(line + "\r\n" for line in header).encode("ascii"))
        for a, b in zip(bounds[:-1], bounds[1:]):
            n = int(b - a)
            hdr = np.array(
                [(POLARITY_TYPE, 1, POLARITY_EVENT.itemsize, 4, int(overflow[a]), n, n, n)], dtype=PACKET_HEADER
            )
            fh.write(hdr.tobytes())
            fh.write(body[a:b].tobytes())


FORMAT = EventFormat(
    name="aedat3",
    label="AEDAT 3.1",
    title="AEDAT 3.1 (IBM DVS Gesture)",
    reader=Aedat3Reader,
    signature=SIGNATURE,
    header="version 3.x",
    suffixes=(".aedat",),
    sensor="a `#Sensor-Size` line or a camera name in the header, else 128 x 128",
)
