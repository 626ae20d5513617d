"""Prophesee event files: RAW (EVT 2.0, EVT 2.1, EVT 3.0) and DAT, read and written in bounded chunks.

Both start with an ASCII header of lines beginning with ``%`` (a RAW header may end with ``% end``), then a
little-endian binary body:

| format    | header names it by                          | body                                                   |
| --------- | ------------------------------------------- | ------------------------------------------------------ |
| ``evt2``  | ``% evt 2.0`` or ``% format EVT2;...``      | 32-bit words (CD_OFF/CD_ON, TIME_HIGH, ...)            |
| ``evt21`` | ``% evt 2.1`` or ``% format EVT21;...``     | 64-bit words, vectors of 32 pixels of one polarity     |
| ``evt3``  | ``% evt 3.0`` or ``% format EVT3;...``      | 16-bit words, state-based (ADDR_Y, ADDR_X, TIME_LOW..) |
| ``dat``   | ``% Version 1|2`` (no ``evt`` line)         | type byte 12 (CD), size byte 8, 64-bit events          |

The sensor size comes from the header: ``% format ...;width=W;height=H``, ``% geometry WxH`` or
``% Width W`` / ``% Height H`` lines; a header that gives none is an error. A header that names no version is
told by the file name (``.dat``); the content wins over the name.

EVT 2.0, EVT 3.0 and DAT are decoded and encoded by the ``faery`` package (``faery.extension.evt`` and
``.dat``), which streams: its decoder hands over packets of a few thousand events, so memory stays bounded by
the chunk. faery does not decode EVT 2.1 at all, so EVT 2.1 bodies are decoded here, 32 768 words at a time:
a 64-bit word (little-endian as a whole, the layout of the GenX320 and of ``% format EVT21`` files) whose top 4
bits are its type: 0x0 OFF / 0x1 ON vectors (bits 59-54 the time's low 6 bits, 53-43 x, 42-32 y, 31-0 one bit
per pixel x + i), 0x8 TIME_HIGH (bits 59-32, the time's bits 33-6; a decrease adds 2^34 µs); other types
(triggers, vendor words) are skipped.

Reading rejects, with ``EventFormatError`` naming the file: a header that is not terminated, names an unknown
version, no sensor size or one beyond the format's 11 (EVT) or 14 (DAT) bit addresses; a DAT body of events
other than CD; an event off the sensor, with a DAT polarity other than 0/1, or earlier than the event before it
(the formats are written in time order); a body whose length is not a whole number of words (a truncated file:
the byte offset of the cut word); anything faery's decoder raises or panics on. faery gives no byte offsets, so
its errors and those of its events name the event's index; EVT 2.1 errors give the word's offset. Every good
event before the damage is yielded first.

Writing (:class:`PropheseeWriter`, ``evt2``, ``evt3`` and ``dat``; faery cannot encode EVT 2.1) goes through
faery's encoder into a temporary file renamed over the target (``events.atomic``). The header holds the sensor
size and ``% t0`` (faery writes times relative to the first event and the reader adds it back), so reading the
file back returns exactly the events written. Events must lie on the sensor, have ``t >= 0`` and be in time
order (faery's EVT 2.0 encoder, handed a decreasing time, writes without end). Two limits of the formats as
faery codes them are refused rather than written wrong: in DAT, two successive events more than 2^32 - 1 µs
apart (32-bit times); in EVT 3.0 (24-bit times), two successive events in different 2^24 µs periods unless they
lie in consecutive 4096 µs ticks, since faery's decoder counts a period only when TIME_HIGH steps from 4095 to
0 and its encoder writes TIME_HIGH only at events.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
from faery.extension import dat, evt

from events.formats import EventFileReader
from events.formats.faery_writer import FAERY_EVENTS, FaeryWriter, faery_call
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, first_disorder

FORMATS = ("evt2", "evt21", "evt3", "dat")
WRITABLE = ("evt2", "evt3", "dat")
MAX_HEADER_BYTES = 1 << 20
_VERSIONS = {"2.0": "evt2", "2.1": "evt21", "3.0": "evt3", "EVT2": "evt2", "EVT21": "evt21", "EVT3": "evt3"}
_FAERY_VERSION = {"evt2": "evt2", "evt3": "evt3", "dat": "dat2"}
WORD_BYTES = {"evt2": 4, "evt21": 8, "evt3": 2, "dat": 8}
MAX_SIDE = {"evt2": 2048, "evt21": 2048, "evt3": 2048, "dat": 16384}
DAT_CD_TYPE, DAT_CD_SIZE = 12, 8
DAT_MAX_GAP_US = (1 << 32) - 1
_EVT21_WORDS = 1 << 15  # EVT 2.1 words decoded at a time (at most 32 events each)
_FAERY_DAT = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("payload", "u1")])


class Header(NamedTuple):
    """A Prophesee file's header: ``format`` (one of ``FORMATS``), ``sensor_size``, ``body`` (byte offset of the
    first word; for DAT past the type and size bytes)."""

    format: str
    sensor_size: SensorSize
    body: int


def read_header(path) -> Header:
    """Parse the ``%`` header of the Prophesee file ``path`` (see the module docstring); ``EventFormatError``
    naming the file and the byte offset when it names no known format or no usable sensor size."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_HEADER_BYTES + 2)
    fields, pos = {}, 0
    while data[pos : pos + 1] == b"%":
        end = data.find(b"\n", pos)
        if end < 0:
            raise EventFormatError(f"header line not ended within {MAX_HEADER_BYTES} bytes", path, pos)
        line = data[pos + 1 : end].decode("latin-1").strip()
        pos = end + 1
        if line == "end":
            break
        key, _, value = line.partition(" ")
        fields.setdefault(key.lower(), (value.strip(), pos - len(line) - 2))
    fmt, at = _format(fields, path)
    size = _sensor_size(fields, fmt, path, at)
    if fmt != "dat":
        return Header(fmt, size, pos)
    kind = data[pos : pos + 2]
    if len(kind) == 2 and (kind[0], kind[1]) != (DAT_CD_TYPE, DAT_CD_SIZE):
        raise EventFormatError(
            f"DAT event type {kind[0]} of {kind[1]} bytes; only CD events (type {DAT_CD_TYPE}, {DAT_CD_SIZE} bytes) "
            "are read",
            path,
            pos,
        )
    return Header(fmt, size, pos + len(kind))


def _format(fields: dict, path) -> tuple[str, int]:
    """(format, byte offset of the line that names it) from the header's fields, else from the file name."""
    named = []
    if "evt" in fields:
        named.append(("evt", *fields["evt"]))
    if "format" in fields:
        value, at = fields["format"]
        named.append(("format", value.split(";")[0].strip(), at))
    versions = set()
    for key, value, at in named:
        if value not in _VERSIONS:
            raise EventFormatError(f"'% {key} {value}': not an EVT version this reader knows (2.0, 2.1, 3.0)", path, at)
        versions.add(_VERSIONS[value])
    if len(versions) > 1:
        raise EventFormatError(f"header names two EVT versions: {', '.join(sorted(versions))}", path, named[0][2])
    if versions:
        return versions.pop(), named[0][2]
    if "version" in fields or str(path).lower().endswith(".dat"):
        return "dat", fields.get("version", ("", 0))[1]
    raise EventFormatError("Prophesee header names no format ('% evt', '% format' or DAT '% Version' line)", path, 0)


def _sensor_size(fields: dict, fmt: str, path, at: int) -> SensorSize:
    sides = {}
    if "format" in fields:
        for item in fields["format"][0].split(";")[1:]:
            key, _, value = item.partition("=")
            sides[key.strip().lower()] = value.strip()
    if "geometry" in fields:
        m = re.fullmatch(r"(\d+)x(\d+)", fields["geometry"][0])
        if m:
            sides.setdefault("width", m.group(1))
            sides.setdefault("height", m.group(2))
    for key in ("width", "height"):
        if key in fields:
            sides.setdefault(key, fields[key][0])
    w, h = sides.get("width", ""), sides.get("height", "")
    top = MAX_SIDE[fmt]
    if not (w.isdigit() and h.isdigit() and 0 < int(w) <= top and 0 < int(h) <= top):
        raise EventFormatError(
            f"header gives no sensor size in 1..{top} ('% geometry WxH', '% format ...;width=W;height=H' or "
            f"'% Width'/'% Height'): width={w or None}, height={h or None}",
            path,
            at,
        )
    return SensorSize(int(w), int(h), 2)


class PropheseeReader(EventFileReader):
    """Streaming reader of one Prophesee RAW (EVT 2.0, 2.1, 3.0) or DAT file; ``format`` is the header's."""

    def __init__(self, path):
        super().__init__(path)
        self.format, self.sensor_size, self.body = read_header(self.path)
        self.size = os.stat(self.path).st_size

    def _chunks(self, max_events: int) -> Iterator[np.ndarray]:
        w, h, _ = self.sensor_size
        n, last_t = 0, None
        decoded = self._evt21() if self.format == "evt21" else self._faery()
        for events, offsets in decoded:
            if not len(events):
                continue
            bad = (events["x"] >= w) | (events["y"] >= h) | (events["p"] > 1) | (events["t"] < 0)
            late = first_disorder(events, last_t)
            i = min(int(np.argmax(bad)) if bad.any() else len(events), len(events) if late < 0 else late)
            if i:
                yield events[:i]
            if i < len(events):
                e = events[i]
                problem = (
                    f"x={e['x']}, y={e['y']}, p={e['p']}, t={e['t']} lies outside the {w}x{h} sensor, polarities 0/1"
                    if bad[i]
                    else f"t={e['t']} is earlier than the event before it "
                    f"(t={last_t if i == 0 else events['t'][i - 1]}); not in time order"
                )
                offset = None if offsets is None else int(offsets[i])
                raise EventFormatError(f"event {n + i}: {problem}", self.path, offset)
            n, last_t = n + len(events), int(events["t"][-1])
        cut = (self.size - self.body) % WORD_BYTES[self.format]
        if cut and self.size > self.body:
            raise EventFormatError(
                f"the file ends inside a {WORD_BYTES[self.format]}-byte word ({cut} bytes of it): truncated",
                self.path,
                self.size - cut,
            )

    def _faery(self) -> Iterator[tuple[np.ndarray, None]]:
        """(events, None) per packet of faery's decoder."""
        if self.size <= self.body:  # a DAT file of no events holds no type and size bytes
            return
        is_dat = self.format == "dat"
        path = str(self.path)
        version = _FAERY_VERSION[self.format]
        module = dat if is_dat else evt
        size = (self.sensor_size.width, self.sensor_size.height)
        decoder = faery_call(lambda: module.Decoder(path, size, version), self.path, "on the header")
        with decoder:
            packets = iter(decoder)
            n = 0
            while True:
                try:
                    packet = faery_call(lambda: next(packets), self.path, f"after event {n}")
                except StopIteration:
                    return
                raw = packet if is_dat else packet.get("events")
                if raw is None or not len(raw):
                    continue
                out = np.empty(len(raw), dtype=EVENT_DTYPE)
                out["x"], out["y"] = raw["x"], raw["y"]
                out["t"] = raw["t"]  # a time beyond int64 turns negative, reported as off the range
                out["p"] = np.minimum(raw["payload"], 2) if is_dat else raw["on"]
                n += len(out)
                yield out, None

    def _evt21(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(events, byte offset of each event's word) per ``_EVT21_WORDS`` words of an EVT 2.1 body."""
        high, loops, offset = -1, 0, self.body  # the last TIME_HIGH (-1: none yet), its 2^34 µs periods
        with open(self.path, "rb") as fh:
            fh.seek(offset)
            while True:
                buf = fh.read(_EVT21_WORDS * 8)
                words = np.frombuffer(buf[: len(buf) // 8 * 8], "<u8")
                if not len(words):
                    return
                kind = words >> np.uint64(60)
                is_high = kind == 8
                highs = ((words[is_high] >> np.uint64(32)) & np.uint64(0x0FFFFFFF)).astype(np.int64)
                steps = np.diff(np.concatenate([[max(high, 0)], highs])) < 0
                periods = loops + np.cumsum(steps)
                full = np.concatenate([[max(high, 0) + (loops << 28)], highs + (periods << 28)])
                which = np.cumsum(is_high)  # index into full of each word's TIME_HIGH
                if len(highs):
                    high, loops = int(highs[-1]), int(periods[-1])
                vec = np.flatnonzero(kind <= 1)
                bits = ((words[vec, None] >> np.arange(32, dtype=np.uint64)) & np.uint64(1)).astype(bool)
                row, bit = np.nonzero(bits)
                w = words[vec[row]]
                out = np.empty(len(row), dtype=EVENT_DTYPE)
                out["x"] = ((w >> np.uint64(43)) & np.uint64(0x7FF)).astype(np.int64) + bit
                out["y"] = (w >> np.uint64(32)) & np.uint64(0x7FF)
                out["t"] = (full[which[vec[row]]] << 6) | ((w >> np.uint64(54)) & np.uint64(0x3F)).astype(np.int64)
                out["p"] = kind[vec[row]]
                yield out, offset + 8 * vec[row]
                offset += 8 * len(words)


class PropheseeWriter(FaeryWriter):
    """Streaming writer of an EVT 2.0, EVT 3.0 or DAT file (``format`` one of ``WRITABLE``), through faery.

    A context manager: ``with PropheseeWriter(path, "evt3", (640, 480)) as w: w.write(events)`` (any number of
    calls, in time order); the file appears at ``path`` when the block ends without error, else ``path`` is left
    as it was. ``write`` raises ``ValueError`` (an ``EventFormatError`` naming the file for an event off the
    sensor) for what the format cannot hold exactly (the module docstring lists it).
    """

    def __init__(self, path, format: str, sensor_size):
        if format not in WRITABLE:
            raise ValueError(f"cannot write Prophesee format {format!r}; writable: {', '.join(WRITABLE)}")
        w, h, *_ = (int(v) for v in sensor_size)
        top = MAX_SIDE[format]
        if not (0 < w <= top and 0 < h <= top):
            raise ValueError(f"{path}: sensor size {w}x{h} does not fit {format} (each side 1..{top})")
        super().__init__(path, (w, h, 2))
        self.format = format
        self._t0 = 0

    def _encoder_for(self, tmp: str):
        size = (self.sensor_size.width, self.sensor_size.height)
        if self.format == "dat":
            return dat.Encoder(tmp, _FAERY_VERSION["dat"], "cd", True, size)
        return evt.Encoder(tmp, _FAERY_VERSION[self.format], True, size, True)

    def _packet(self, ev: np.ndarray) -> tuple:
        if self.format == "dat":
            out = np.empty(len(ev), dtype=_FAERY_DAT)
            out["payload"] = ev["p"]
        else:
            out = np.empty(len(ev), dtype=FAERY_EVENTS)
            out["on"] = ev["p"]
        out["t"], out["x"], out["y"] = ev["t"], ev["x"], ev["y"]
        return (out,) if self.format == "dat" else ({"events": out},)

    def _checked(self, ev: np.ndarray, last_t: int | None) -> None:
        """Refuse successive events (``last_t``: the time of the event before ``ev``) that this format, as faery
        codes it, cannot hold exactly."""
        t = ev["t"]
        if last_t is None:
            self._t0 = int(t[0])
        prev = np.concatenate([[t[0] if last_t is None else last_t], t[:-1]])
        if self.format == "dat":
            bad = t - prev > DAT_MAX_GAP_US
            why = f"more than {DAT_MAX_GAP_US} µs apart (DAT's 32-bit times)"
        elif self.format == "evt3":
            a, b = prev - self._t0, t - self._t0
            bad = ((a >> 24) != (b >> 24)) & ((b >> 12) - (a >> 12) != 1)
            why = "in different 2^24 µs periods and not in consecutive 4096 µs ticks (EVT 3.0's 24-bit times)"
        else:
            return
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{self.path}: events at t={int(prev[i])} and t={int(t[i])} µs are {why}; faery cannot write them "
                "exactly: write EVT 2.0 or HDF5 instead"
            )


def write_prophesee(path, events, sensor_size, format: str = "evt3") -> None:
    """Write ``events`` (in time order) to ``path`` as ``format`` (one of ``WRITABLE``), atomically; reading it
    back returns exactly ``events``."""
    with PropheseeWriter(path, format, sensor_size) as writer:
        writer.write(events)
