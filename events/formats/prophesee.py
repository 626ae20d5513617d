"""Prophesee event files: RAW (EVT 2.0, EVT 2.1, EVT 3.0) and DAT, decoded and encoded here, in bounded chunks.

Layout (Prophesee's "RAW File Format", "DAT File Format", "EVT 2.0/2.1/3.0 Format" pages, docs.prophesee.ai):
an ASCII header of lines ``% <keyword> <value>`` ("%", a space, ...; a RAW header may end with the optional
``% end`` line, and "data begins as soon as a line does not start with '% '" -- so a body whose first bytes happen
to be ``%`` followed by anything but a space is data, not header), then a little-endian binary body:

| format    | header names it by                          | body                                                   |
| --------- | ------------------------------------------- | ------------------------------------------------------ |
| ``evt2``  | ``% evt 2.0`` or ``% format EVT2;...``      | 32-bit words: CD_OFF/CD_ON, EVT_TIME_HIGH, ...         |
| ``evt21`` | ``% evt 2.1`` or ``% format EVT21;...``     | 64-bit words, vectors of 32 pixels of one polarity     |
| ``evt3``  | ``% evt 3.0`` or ``% format EVT3;...``      | 16-bit words, state-based (ADDR_Y, ADDR_X, TIME_LOW..) |
| ``dat``   | ``% Version 1|2`` (no ``evt`` line)         | type byte, size byte 8, then 64-bit events             |

Header: every ``% evt`` and ``% format`` line must name the same version (the same one twice is fine). The sensor
size comes from ``% format ...;width=W;height=H``, ``% geometry WxH`` and ``% Width W`` / ``% Height H``; all
that are given must agree, and one is needed. ``% t0 N`` (``% T0`` in DAT; written by the ``faery`` package, which
stores times relative to it) is added to every time: N must be a decimal integer in 0..2^63 - 1, and t0 plus an
event's time must stay within int64 (else an error at that event). ``% format EVT21;...;endianness=legacy`` (what
IMX636 / IMX646 / Gen4.1 cameras write, OpenEB's ``get_supported_formats``) says each 64-bit word was sent as two
little-endian 32-bit halves, the high half first (the EVT 2.1 page: "0x0102030405060708 is transmitted as
0x0403020108070605 on IMX636"), so read as one little-endian word its halves are swapped; without the key (or with
``endianness=little``) the word is little-endian as a whole (GenX320). Any other value is refused; for the 16- and
32-bit words of EVT 3.0 / EVT 2.0 ``legacy`` changes nothing.

Bodies, as the format pages define them:

* EVT 2.0 word: bits 31-28 type; CD_OFF (0) / CD_ON (1): 27-22 the time's bits 5-0, 21-11 x, 10-0 y;
  EVT_TIME_HIGH (8): 27-0 the time's bits 33-6. EXT_TRIGGER, OTHERS, CONTINUED and reserved types are skipped.
* EVT 2.1 word (after the legacy swap): bits 63-60 type; EVT_NEG (0) / EVT_POS (1): 59-54 time bits 5-0, 53-43 x,
  42-32 y, 31-0 valid: bit i an event at x + i; EVT_TIME_HIGH (8): 59-32 the time's bits 33-6. Others skipped.
* EVT 3.0 word: bits 15-12 type, a decoder keeping state: EVT_ADDR_Y (0: y in 10-0; bit 11 master/slave),
  EVT_ADDR_X (2: one event, polarity bit 11, x 10-0), VECT_BASE_X (3: polarity bit 11, base x 10-0), VECT_12
  (4: valid bits 11-0, events at base + i, then base += 12), VECT_8 (5: valid bits 7-0, then base += 8),
  EVT_TIME_LOW (6: the time's bits 11-0), EVT_TIME_HIGH (8: bits 23-12). An event takes the last y, time and
  polarity sent; a TIME_HIGH that changes the value sets the time's low bits to 0 until the next TIME_LOW (as
  OpenEB's decoder does). Type 1 addresses non-CD (exposure) events, whose X words are skipped until the next
  EVT_ADDR_Y (OpenEB). EXT_TRIGGER, OTHERS, CONTINUED and reserved types are skipped.
* DAT: after the header, an event type byte (12 CD, or 0 generic 2D event: the same 8-byte layout) and a size byte
  (8); each event is 64 bits: 31-0 the time in µs, 45-32 x, 59-46 y, 63-60 polarity.

Time base (decided here from the pages, stated as the contract): EVT 2.x times are 34 bits of µs ("a rollout
after 2^34 µs"), EVT 3.0's 24 bits ("after 16777215 µs the Time High value wraps and returns to 0"), DAT's 32 bits.
The EVT 2.0 and 2.1 pages say decoding starts at the first EVT_TIME_HIGH ("decoding of the event stream should
start after receiving the first event of type EVT_TIME_HIGH"), so words before it carry no time and are skipped
(OpenEB's decoders, EVT 3.0's included, do the same); the counter starts there at period 0. TIME_HIGH ("monotonic
irrespective of the event source", EVT 3.0 page) and DAT's time never go back except at a wrap of the counter.
A decrease of at least half the counter's range is read as a wrap (one period added: what OpenEB's EVT 3.0
decoder counts as a loop, and how a sparse file whose encoder writes TIME_HIGH only at events crosses a wrap); a
smaller decrease is corrupt data, refused with an error at the word's byte offset -- the pages do not tell
decoders to tolerate it (OpenEB reports it as a protocol violation, "NonMonotonicTimeHigh"). A forward
step is always read as forward (so a gap of more than one whole period between two TIME_HIGH words is beyond what
a file can say; cameras send TIME_HIGH every 16 µs (EVT 3.0) or 64 µs, and this module's writer sends the words
that keep every wrap visible). Within one TIME_HIGH, EVT 3.0's TIME_LOW may go back (several event sources); only
the events themselves must be in time order.

Reading raises ``EventFormatError`` naming the file (and the byte offset where one applies) for: a header line not
ended within 1 MiB, an unknown, conflicting or missing version, a missing, conflicting or out-of-range sensor size
(11-bit EVT, 14-bit DAT addresses), an unknown endianness, a bad ``% t0``, a DAT event type other than CD / 2D or a
size other than 8; and in the body, at the offending word: a TIME_HIGH (DAT time) step back that is no wrap, an
EVT 3.0 event before any EVT_ADDR_Y or a vector before any VECT_BASE_X, an event off the sensor (an EVT 3.0 or 2.1
vector bit past the sensor's edge included), a DAT polarity over 1, an event earlier than the one before it, a time
beyond int64 with t0 added, and a body that ends inside a word (truncated: the cut word's offset). Every good event
before the damage is yielded first. The body is read ``_CHUNK_WORDS`` words at a time, so memory stays bounded.

Writing (:class:`PropheseeWriter`: ``evt2``, ``evt3``, ``dat``) stores absolute times: a header with the sensor
size (and ``% end`` in RAW), then for EVT a TIME_HIGH 0 word first (OpenEB, with time shifting, subtracts the
first TIME_HIGH), and wherever times cross a wrap of the counter (before the first event too, when it lies past
the first period) the pair TIME_HIGH = max, TIME_HIGH = 0 per wrap, which OpenEB's and faery's decoders count as
one wrap (faery's EVT 3.0 decoder counts nothing else), as does expelliarmus's EVT 3.0 decoder. EVT 3.0 is
written one EVT_ADDR_X per event, TIME_HIGH / TIME_LOW / EVT_ADDR_Y only where they change (TIME_LOW after every
TIME_HIGH). So other decoders see the times this reader returns (tested with expelliarmus and faery; the tests
keep clear of expelliarmus's own limits: no EVT 2.0 wraps, 4096 µs added at every fall of EVT 3.0's TIME_LOW).
Limits, refused with ``ValueError`` naming the file rather than written wrong: EVT events more than
``MAX_WRAPS`` periods apart (2^16 periods: 12.7 days in EVT 3.0); DAT events that cross a 2^32 µs wrap more than
2^31 µs apart (DAT has no TIME_HIGH: a reader could not tell that wrap from a step back). Only when the first
event lies more than ``MAX_WRAPS`` periods in (EVT) or past the first 2^32 µs (DAT) is ``% t0`` written (a whole
number of periods, which other readers then do not add). The file is written to a temporary file renamed over the
target (``events.atomic``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import ExitStack
from typing import NamedTuple

import numpy as np

from events.atomic import atomic_file
from events.formats import CheckedChunks, EventFileReader
from events.types import EVENT_DTYPE, EventFormatError, SensorSize

FORMATS = ("evt2", "evt21", "evt3", "dat")
WRITABLE = ("evt2", "evt3", "dat")
NAMES = {"evt2": "EVT 2.0", "evt21": "EVT 2.1", "evt3": "EVT 3.0", "dat": "DAT"}
MAX_HEADER_BYTES = 1 << 20
INT64_MAX = (1 << 63) - 1
_VERSIONS = {"2.0": "evt2", "2.1": "evt21", "3.0": "evt3", "EVT2": "evt2", "EVT21": "evt21", "EVT3": "evt3"}
WORD_BYTES = {"evt2": 4, "evt21": 8, "evt3": 2, "dat": 8}
MAX_SIDE = {"evt2": 2048, "evt21": 2048, "evt3": 2048, "dat": 16384}
DAT_TYPES = {12: "CD", 0: "2D"}  # DAT event type byte -> kind; both 8 bytes (time 32, x 14, y 14, polarity 4 bits)
DAT_EVENT_BYTES = 8
ENDIANNESS = ("little", "legacy")
MAX_WRAPS = 1 << 16
"""The most wraps of the time counter the writer fills in between two events (two TIME_HIGH words each)."""
_FILL_BUDGET = 1 << 20  # filler words encoded at a time
_CHUNK_WORDS = {"evt2": 1 << 16, "evt21": 1 << 13, "evt3": 1 << 15, "dat": 1 << 16}
"""Words decoded at a time: at most 2^16, 2^18 (32 a vector word), 393 216 (12 a vector word), 2^16 events."""


class _Counter(NamedTuple):
    """A time counter: ``bits`` of raw value, each unit ``2**shift`` µs; it wraps every ``2**(bits + shift)`` µs."""

    bits: int
    shift: int


COUNTERS = {"evt2": _Counter(28, 6), "evt21": _Counter(28, 6), "evt3": _Counter(12, 12), "dat": _Counter(32, 0)}


class Header(NamedTuple):
    """A Prophesee file's header: ``format`` (one of ``FORMATS``), ``sensor_size``, ``body`` (byte offset of the
    first word; for DAT past the type and size bytes), ``t0`` (µs added to every time), ``legacy`` (EVT 2.1 words
    with swapped 32-bit halves)."""

    format: str
    sensor_size: SensorSize
    body: int
    t0: int = 0
    legacy: bool = False


def read_header(path) -> Header:
    """Parse the header of the Prophesee file ``path`` (the module docstring lists the rules);
    ``EventFormatError`` naming the file and the byte offset of the line at fault."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_HEADER_BYTES + 2)
    lines: dict[str, list[tuple[str, int]]] = {}
    pos = 0
    while data.startswith(b"% ", pos):
        end = data.find(b"\n", pos)
        if end < 0:
            raise EventFormatError(f"header line not ended within {MAX_HEADER_BYTES} bytes", path, pos)
        line, at, pos = data[pos + 2 : end].decode("latin-1").strip(), pos, end + 1
        if line == "end":
            break
        key, _, value = line.partition(" ")
        if key:
            lines.setdefault(key.lower(), []).append((value.strip(), at))
    fmt, at = _format(lines, path)
    items = _format_items(lines, path)
    size = _sensor_size(lines, items, fmt, path, at)
    t0 = _t0(lines, path)
    legacy = _endianness(items, fmt, path)
    if fmt != "dat":
        return Header(fmt, size, pos, t0, legacy)
    kind = data[pos : pos + 2]
    if len(kind) == 1:
        raise EventFormatError("the file ends inside the DAT event type and size bytes: truncated", path, pos)
    if len(kind) == 2 and (kind[0] not in DAT_TYPES or kind[1] != DAT_EVENT_BYTES):
        raise EventFormatError(
            f"DAT event type {kind[0]} of {kind[1]} bytes; only CD events (type 12) and generic 2D events (type 0) "
            f"of {DAT_EVENT_BYTES} bytes are read",
            path,
            pos,
        )
    return Header(fmt, size, pos + len(kind), t0, legacy)


def _format(lines: dict, path) -> tuple[str, int]:
    """(format, byte offset of the line that names it) from every ``% evt`` and ``% format`` line, else DAT from a
    ``% Version`` line or the file name."""
    named = [("evt", value, at) for value, at in lines.get("evt", [])]
    named += [("format", value.split(";")[0].strip(), at) for value, at in lines.get("format", [])]
    versions: dict[str, int] = {}
    for key, value, at in named:
        version = _VERSIONS.get(value.upper() if key == "format" else value)
        if version is None:
            raise EventFormatError(f"'% {key} {value}': not an EVT version this reader knows (2.0, 2.1, 3.0)", path, at)
        versions.setdefault(version, at)
    if len(versions) > 1:
        names = " and ".join(NAMES[v] for v in versions)
        raise EventFormatError(f"header names two EVT versions: {names}", path, max(versions.values()))
    if versions:
        return next(iter(versions.items()))
    if "version" in lines or str(path).lower().endswith(".dat"):
        return "dat", lines.get("version", [("", 0)])[0][1]
    raise EventFormatError("Prophesee header names no format ('% evt', '% format' or DAT '% Version' line)", path, 0)


def _format_items(lines: dict, path) -> dict[str, list[tuple[str, int]]]:
    """The ``key=value`` items of every ``% format`` line after its first (the version), by lower-case key."""
    items: dict[str, list[tuple[str, int]]] = {}
    for value, at in lines.get("format", []):
        for item in value.split(";")[1:]:
            key, _, v = item.partition("=")
            if key.strip():
                items.setdefault(key.strip().lower(), []).append((v.strip(), at))
    return items


def _sensor_size(lines: dict, items: dict, fmt: str, path, at: int) -> SensorSize:
    """The one sensor size that every source in the header gives (``EventFormatError`` if they disagree)."""
    given = {"width": list(items.get("width", [])), "height": list(items.get("height", []))}
    for value, line_at in lines.get("geometry", []):
        m = re.fullmatch(r"(\d+)\s*x\s*(\d+)", value)
        if not m:
            raise EventFormatError(f"'% geometry {value}': not a sensor size WxH", path, line_at)
        given["width"].append((m.group(1), line_at))
        given["height"].append((m.group(2), line_at))
    for key in ("width", "height"):
        given[key] += lines.get(key, [])
    top, sides = MAX_SIDE[fmt], {}
    for key, values in given.items():
        found = {}
        for value, line_at in values:
            if not (value.isascii() and value.isdigit() and 0 < int(value) <= top):
                raise EventFormatError(f"header gives no sensor size in 1..{top}: {key}={value!r}", path, line_at)
            found.setdefault(int(value), line_at)
        if len(found) > 1:
            raise EventFormatError(
                f"header gives two sensor {key}s: {' and '.join(map(str, found))}", path, max(found.values())
            )
        sides[key] = next(iter(found), None)
    if sides["width"] is None or sides["height"] is None:
        raise EventFormatError(
            f"header gives no sensor size in 1..{top} ('% geometry WxH', '% format ...;width=W;height=H' or "
            f"'% Width'/'% Height'): width={sides['width']}, height={sides['height']}",
            path,
            at,
        )
    return SensorSize(sides["width"], sides["height"], 2)


def _t0(lines: dict, path) -> int:
    """The ``% t0`` offset (0 without one): a decimal integer in 0..2^63 - 1, the same on every such line."""
    found = {}
    for value, at in lines.get("t0", []):
        if not (value.isascii() and value.isdigit() and int(value) <= INT64_MAX):
            raise EventFormatError(
                f"'% t0 {value}': the time offset must be a whole number of µs in 0..2^63 - 1", path, at
            )
        found.setdefault(int(value), at)
    if len(found) > 1:
        raise EventFormatError(
            f"header gives two time offsets t0: {' and '.join(map(str, found))}", path, max(found.values())
        )
    return next(iter(found), 0)


def _endianness(items: dict, fmt: str, path) -> bool:
    """Whether the body's 64-bit words have their 32-bit halves swapped (EVT 2.1 ``endianness=legacy``)."""
    values = {v.lower(): at for v, at in items.get("endianness", [])}
    for value, at in values.items():
        if value not in ENDIANNESS:
            raise EventFormatError(
                f"'endianness={value}' in '% format': not one this reader knows ({', '.join(ENDIANNESS)})", path, at
            )
    if len(values) > 1:
        raise EventFormatError("'% format' lines give two endiannesses", path, max(values.values()))
    return fmt == "evt21" and "legacy" in values


class _TimeBase:
    """One file's time counter (``COUNTERS``) as read so far: the last raw value, the wraps counted."""

    def __init__(self, counter: _Counter):
        self.bits = counter.bits
        self.last: int | None = None
        self.wraps = 0

    @property
    def full(self) -> int:
        """The last value with its wraps (-1 before the first)."""
        return -1 if self.last is None else (self.wraps << self.bits) + self.last

    def advance(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """(values with their wraps, each one's predecessor, index of the first step back that is no wrap or -1)
        for the next raw values (int64); the state advances to the end, or to that step."""
        if not len(raw):
            return raw, raw, -1
        prev = np.empty_like(raw)
        prev[0] = raw[0] if self.last is None else self.last
        prev[1:] = raw[:-1]
        step = raw - prev
        wrap = step <= -(1 << (self.bits - 1))
        bad = np.flatnonzero((step < 0) & ~wrap)
        wraps = self.wraps + np.cumsum(wrap)
        end = int(bad[0]) if len(bad) else len(raw)
        if end:
            self.last, self.wraps = int(raw[end - 1]), int(wraps[end - 1])
        return (wraps << self.bits) + raw, prev, int(bad[0]) if len(bad) else -1


def _carry(mask: np.ndarray, values: np.ndarray, before: int) -> np.ndarray:
    """Per word, ``values[k]`` of the last word at or before it where ``mask`` holds (``k`` counting those words),
    else ``before``."""
    k = np.cumsum(mask) - 1
    out = np.full(len(mask), before, np.int64)
    out[k >= 0] = values[k[k >= 0]]
    return out


def _in_force(k: np.ndarray, values: np.ndarray, before) -> np.ndarray:
    """Per word, ``values[k - 1]`` (``k``: how many of the words that set a state lie before it), else ``before``
    (the state carried from earlier chunks)."""
    return np.concatenate([np.array([before], dtype=values.dtype), values])[k]


_POPCOUNT12 = np.array([bin(i).count("1") for i in range(1 << 12)], np.int64)


Columns = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # x, y, t (without t0), p: int64


class PropheseeReader(EventFileReader):
    """Streaming reader of one Prophesee RAW (EVT 2.0, 2.1, 3.0) or DAT file; ``format`` is the header's."""

    def __init__(self, path):
        super().__init__(path)
        head = read_header(self.path)
        self.format, self.sensor_size, self.body, self.t0, self.legacy = head
        self.size = os.stat(self.path).st_size

    def _chunks(self, max_events: int) -> Iterator[np.ndarray]:
        w, h, _ = self.sensor_size
        n, last_t, latest = 0, None, INT64_MAX - self.t0
        for (x, y, t, p), offsets in getattr(self, "_" + self.format)():
            if not len(t):
                continue
            off = (x >= w) | (y >= h) | (p > 1)
            late = t > latest
            prev = np.empty_like(t)
            prev[0] = t[0] if last_t is None else last_t
            prev[1:] = t[:-1]
            back = t < prev
            bad = np.flatnonzero(off | late | back)
            i = int(bad[0]) if len(bad) else len(t)
            if i:
                out = np.empty(i, dtype=EVENT_DTYPE)
                out["x"], out["y"], out["t"], out["p"] = x[:i], y[:i], t[:i] + self.t0, p[:i]
                yield out
            if i < len(t):
                if off[i]:
                    problem = f"x={x[i]}, y={y[i]}, p={p[i]} lies outside the {w}x{h} sensor, polarities 0/1"
                elif late[i]:
                    problem = f"t={t[i]} µs plus the header's t0={self.t0} µs is beyond int64 µs"
                else:
                    problem = (
                        f"t={t[i] + self.t0} is earlier than the event before it (t={prev[i] + self.t0}); "
                        "not in time order"
                    )
                raise EventFormatError(f"event {n + i}: {problem}", self.path, int(offsets[i]))
            n, last_t = n + len(t), int(t[-1])
        cut = (self.size - self.body) % WORD_BYTES[self.format]
        if cut and self.size > self.body:
            raise EventFormatError(
                f"the file ends inside a {WORD_BYTES[self.format]}-byte word ({cut} bytes of it): truncated",
                self.path,
                self.size - cut,
            )

    def _words(self, dtype: str) -> Iterator[tuple[np.ndarray, int]]:
        """(whole words of the body, byte offset of the first), ``_CHUNK_WORDS`` at a time."""
        size = np.dtype(dtype).itemsize
        with open(self.path, "rb") as fh:
            fh.seek(self.body)
            at = self.body
            while True:
                buf = fh.read(_CHUNK_WORDS[self.format] * size)
                n = len(buf) // size
                if not n:
                    return
                yield np.frombuffer(buf, dtype, n), at
                at += n * size

    def _step_back(self, counter: _Counter, prev: int, raw: int) -> str:
        what = "time" if self.format == "dat" else "EVT_TIME_HIGH"
        period = counter.bits + counter.shift
        return (
            f"{NAMES[self.format]} {what} steps back from {prev} to {raw} ({(prev - raw) << counter.shift} µs), "
            f"less than the half period (2^{period - 1} µs) by which a wrap of its {period}-bit µs time steps back: "
            "the time base goes back (corrupt data)"
        )

    def _evt2(self) -> Iterator[tuple[Columns, np.ndarray]]:
        """EVT 2.0 events (module docstring), per chunk of words."""
        counter = COUNTERS["evt2"]
        clock = _TimeBase(counter)
        for words, at in self._words("<u4"):
            w = words.astype(np.int64)
            kind = w >> 28
            is_th = kind == 8
            th_at = np.flatnonzero(is_th)
            before = clock.full
            full, prev, bad = clock.advance(w[th_at] & 0x0FFFFFFF)
            stop = len(w) if bad < 0 else int(th_at[bad])
            high = _carry(is_th, full, before)
            cd = np.flatnonzero((kind[:stop] <= 1) & (high[:stop] >= 0))
            c = w[cd]
            yield ((c >> 11) & 0x7FF, c & 0x7FF, (high[cd] << 6) | ((c >> 22) & 0x3F), kind[cd]), at + 4 * cd
            if bad >= 0:
                raw = int(w[stop] & 0x0FFFFFFF)
                raise EventFormatError(self._step_back(counter, int(prev[bad]), raw), self.path, at + 4 * stop)

    def _evt21(self) -> Iterator[tuple[Columns, np.ndarray]]:
        """EVT 2.1 events (module docstring), per chunk of words; each vector word gives its events in x order."""
        counter = COUNTERS["evt21"]
        clock = _TimeBase(counter)
        bit = np.arange(32, dtype=np.uint64)
        for words, at in self._words("<u8"):
            if self.legacy:
                words = (words << np.uint64(32)) | (words >> np.uint64(32))
            kind = (words >> np.uint64(60)).astype(np.int64)
            is_th = kind == 8
            th_at = np.flatnonzero(is_th)
            before = clock.full
            full, prev, bad = clock.advance(((words[th_at] >> np.uint64(32)) & np.uint64(0x0FFFFFFF)).astype(np.int64))
            stop = len(words) if bad < 0 else int(th_at[bad])
            high = _carry(is_th, full, before)
            vec = np.flatnonzero((kind[:stop] <= 1) & (high[:stop] >= 0))
            v = words[vec]
            row, k = np.nonzero((v[:, None] >> bit) & np.uint64(1))
            v = v[row]
            x = ((v >> np.uint64(43)) & np.uint64(0x7FF)).astype(np.int64) + k
            y = ((v >> np.uint64(32)) & np.uint64(0x7FF)).astype(np.int64)
            t = (high[vec[row]] << 6) | ((v >> np.uint64(54)) & np.uint64(0x3F)).astype(np.int64)
            yield (x, y, t, kind[vec[row]]), at + 8 * vec[row]
            if bad >= 0:
                raw = int(full[bad] & 0x0FFFFFFF)
                raise EventFormatError(self._step_back(counter, int(prev[bad]), raw), self.path, at + 8 * stop)

    def _evt3(self) -> Iterator[tuple[Columns, np.ndarray]]:
        """EVT 3.0 events (module docstring), per chunk of words, the decoder's state carried between chunks: the
        state words in force at each event word are found by their positions (``_in_force``)."""
        counter = COUNTERS["evt3"]
        clock = _TimeBase(counter)
        low, y, cd, base, base_p = 0, -1, True, -1, 0  # TIME_LOW in force; ADDR_Y (-1 none), CD; vector x, polarity
        span = np.arange(12)
        for words, at in self._words("<u2"):
            n = len(words)
            kind, val = words >> 12, words & 0xFFF
            is_th, is_tl, is_y, is_b = kind == 8, kind == 6, kind <= 1, kind == 3
            th_at = np.flatnonzero(is_th)
            th_val = val[th_at].astype(np.int64)
            before = clock.full
            full, prev, bad = clock.advance(th_val)
            stop = n if bad < 0 else int(th_at[bad])
            is_ch = np.zeros(n, bool)
            is_ch[th_at[th_val != prev]] = True  # TIME_HIGH words that change the value
            ch_at, tl_at, y_at, b_at = (np.flatnonzero(m) for m in (is_ch, is_tl, is_y, is_b))
            ev_at = np.flatnonzero((kind == 2) | (kind == 4) | (kind == 5))
            e_kind, e_val = kind[ev_at], val[ev_at].astype(np.int64)
            # how many words of each state kind lie before each event word
            k_th, k_tl, k_ch, k_y = (np.cumsum(m, dtype=np.int32)[ev_at] for m in (is_th, is_tl, is_ch, is_y))
            high = _in_force(k_th, full, before)
            tl_pos, ch_pos = _in_force(k_tl, tl_at, -1), _in_force(k_ch, ch_at, -1)
            lows = np.where(
                tl_pos > ch_pos, _in_force(k_tl, val[tl_at].astype(np.int64), 0), np.where(ch_pos >= 0, 0, low)
            )
            ys = _in_force(k_y, (val[y_at] & 0x7FF).astype(np.int64), y)
            cds = _in_force(k_y, kind[y_at] == 0, cd)
            is_v = e_kind != 2
            steps = np.where(e_kind == 4, 12, 8)[is_v]
            done = np.cumsum(steps)  # vector increments up to and including each vector word
            vec_at = ev_at[is_v]
            b_done = np.concatenate([[0], done])[np.searchsorted(vec_at, b_at)]  # increments before each base word
            b_x, b_p = (val[b_at] & 0x7FF).astype(np.int64), ((val[b_at] >> 11) & 1).astype(np.int64)
            upto = done - steps
            k_b = np.cumsum(is_b, dtype=np.int32)[vec_at]
            vx = np.where(k_b > 0, _in_force(k_b, b_x - b_done, 0) + upto, np.where(base >= 0, base + upto, -1))
            x0 = e_val & 0x7FF
            x0[is_v] = vx
            p = (e_val >> 11) & 1
            p[is_v] = _in_force(k_b, b_p, base_p)
            live = (high >= 0) & cds
            lost = np.flatnonzero(live & ((ys < 0) | (x0 < 0)))
            if len(lost) and ev_at[lost[0]] < stop:
                stop = int(ev_at[lost[0]])
            live &= ev_at < stop
            mask = np.where(is_v, np.where(e_kind == 4, e_val, e_val & 0xFF), 1) * live
            count = _POPCOUNT12[mask]
            vec = np.flatnonzero(is_v & live)
            if not len(vec) and live.all():  # one event a word
                yield (x0, ys, (high << 12) | lows, p), at + 2 * ev_at
            else:
                first = np.cumsum(count) - count
                src = np.repeat(np.arange(len(ev_at)), count)
                k = np.zeros(len(src), np.int64)
                if len(vec):
                    row, bit = np.nonzero((mask[vec, None] >> span) & 1)
                    rank = np.arange(len(row)) - np.repeat(np.cumsum(count[vec]) - count[vec], count[vec])
                    k[first[vec[row]] + rank] = bit
                yield (x0[src] + k, ys[src], (high[src] << 12) | lows[src], p[src]), at + 2 * ev_at[src]
            if stop < n:
                if bad >= 0 and stop == th_at[bad]:
                    problem = self._step_back(counter, int(prev[bad]), int(val[stop]))
                elif ys[np.searchsorted(ev_at, stop)] < 0:
                    problem = "an EVT 3.0 event word before any EVT_ADDR_Y: its y is unknown"
                else:
                    problem = "an EVT 3.0 VECT_12 / VECT_8 word before any VECT_BASE_X: its x is unknown"
                raise EventFormatError(problem, self.path, at + 2 * stop)
            tl_last, ch_last = (int(a[-1]) if len(a) else -1 for a in (tl_at, ch_at))
            low = int(val[tl_last]) if tl_last > ch_last else 0 if ch_last >= 0 else low
            if len(y_at):
                y, cd = int(val[y_at[-1]] & 0x7FF), bool(kind[y_at[-1]] == 0)
            total = int(done[-1]) if len(done) else 0
            if len(b_at):
                base, base_p = int(b_x[-1] - b_done[-1]) + total, int(b_p[-1])
            elif base >= 0:
                base += total

    def _dat(self) -> Iterator[tuple[Columns, np.ndarray]]:
        """DAT events (module docstring), per chunk."""
        counter = COUNTERS["dat"]
        clock = _TimeBase(counter)
        for words, at in self._words("<u8"):
            raw = (words & np.uint64(0xFFFFFFFF)).astype(np.int64)
            full, prev, bad = clock.advance(raw)
            stop = len(words) if bad < 0 else bad
            d = (words[:stop] >> np.uint64(32)).astype(np.int64)
            yield (d & 0x3FFF, (d >> 14) & 0x3FFF, full[:stop], (d >> 28) & 0xF), at + 8 * np.arange(stop)
            if bad >= 0:
                raise EventFormatError(self._step_back(counter, int(prev[bad]), int(raw[bad])), self.path, at + 8 * bad)


def _interleave(fills: np.ndarray, fill_pair: tuple[int, int], columns, dtype) -> np.ndarray:
    """The words of a run of events: per event ``i``, ``fills[i]`` times the two words ``fill_pair``, then for each
    ``(emit, value)`` of ``columns`` in order, ``value[i]`` where ``emit[i]`` holds."""
    fill = 2 * fills
    counts = fill + sum(emit.astype(np.int64) for emit, _ in columns)
    ends = np.cumsum(counts)
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype)
    starts = ends - counts
    total = int(fill.sum())
    if total:
        owner = np.repeat(np.arange(len(fill)), fill)
        within = np.arange(total) - np.repeat(np.cumsum(fill) - fill, fill)
        out[starts[owner] + within] = np.where(within % 2 == 0, fill_pair[0], fill_pair[1])
    cursor = starts + fill
    for emit, value in columns:
        out[cursor[emit]] = value[emit]
        cursor = cursor + emit
    return out


def _pieces(fills: np.ndarray) -> Iterator[tuple[int, int]]:
    """Index ranges ``[a, b)`` splitting a chunk so that each holds at most ``_FILL_BUDGET`` filler words (or one
    event)."""
    done = np.cumsum(2 * fills)
    a = 0
    while a < len(fills):
        b = max(int(np.searchsorted(done, (done[a - 1] if a else 0) + _FILL_BUDGET, side="right")), a + 1)
        yield a, b
        a = b


class PropheseeWriter(CheckedChunks):
    """Streaming writer of an EVT 2.0, EVT 3.0 or DAT file (``format`` one of ``WRITABLE``), with absolute times.

    A context manager: ``with PropheseeWriter(path, "evt3", (640, 480)) as w: w.write(events)`` (any number of
    calls, in time order); the file appears at ``path`` when the block ends without error, else ``path`` is left
    as it was. ``write`` raises ``ValueError`` naming the file (an ``EventFormatError`` for an event off the
    sensor) for what the format cannot hold exactly (the module docstring lists it). Reading the file back returns
    exactly the events written.
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
        self._stack: ExitStack | None = None
        self._fh = None
        self._t0: int | None = None  # set with the header
        self._high = self._low = self._y = -1  # the TIME_HIGH (with wraps), TIME_LOW, ADDR_Y last written

    def __enter__(self):
        with ExitStack() as stack:
            self._fh = stack.enter_context(atomic_file(self.path, "wb"))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> bool:
        stack, self._stack = self._stack, None
        if stack is None:
            return False
        try:
            if exc[0] is None:
                self._begin(None)  # an empty recording still gets its header
        except BaseException as err:
            self._fh = None
            if not stack.__exit__(type(err), err, err.__traceback__):
                raise
            return False
        self._fh = None
        return bool(stack.__exit__(*exc))

    def write(self, events) -> None:
        """Append ``events`` (fields x, y, t, p; after every event written before)."""
        if self._fh is None:
            raise ValueError(f"{self.path}: writer is not open (use it as a context manager)")
        last_t = self.last_t
        ev = self.check(events)
        if not len(ev):
            return
        self._begin(int(ev["t"][0]))
        self._checked(ev, last_t)
        getattr(self, "_write_" + self.format)(ev)

    def _begin(self, first_t: int | None) -> None:
        """Write the header once, choosing ``t0`` from the first event's time (0 unless the module docstring's
        limits call for one)."""
        if self._t0 is not None:
            return
        w, h, _ = self.sensor_size
        c = COUNTERS[self.format]
        periods = 0 if first_t is None else first_t >> (c.bits + c.shift)
        self._t0 = periods << (c.bits + c.shift) if self.format == "dat" or periods > MAX_WRAPS else 0
        if self.format == "dat":
            lines = ["Data file containing CD events", "Version 2", f"Width {w}", f"Height {h}"]
            lines += [f"T0 {self._t0}"] if self._t0 else []
            tail = bytes([12, DAT_EVENT_BYTES])
        else:
            version = "2.0" if self.format == "evt2" else "3.0"
            lines = [f"evt {version}", f"format {self.format.upper()};width={w};height={h}", f"geometry {w}x{h}"]
            lines += [f"t0 {self._t0}"] if self._t0 else []
            lines.append("end")
            tail = b""
        self._fh.write("".join(f"% {line}\n" for line in lines).encode("ascii") + tail)

    def _checked(self, ev: np.ndarray, last_t: int | None) -> None:
        """Refuse successive events (``last_t``: the time of the event before ``ev``) that this format cannot hold
        exactly (the module docstring's limits)."""
        t = ev["t"].astype(np.int64)
        prev = np.concatenate([[t[0] if last_t is None else last_t], t[:-1]])
        c = COUNTERS[self.format]
        bits = c.bits + c.shift
        crossed = ((t - self._t0) >> bits) - ((prev - self._t0) >> bits)
        if self.format == "dat":
            bad = (crossed > 0) & (t - prev > 1 << 31)
            why = "more than 2^31 µs apart across a wrap of DAT's 32-bit time (not to be told from a step back)"
        else:
            bad = crossed > MAX_WRAPS
            why = f"more than {MAX_WRAPS} periods of {NAMES[self.format]}'s 2^{bits} µs time apart"
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{self.path}: events at t={int(prev[i])} and t={int(t[i])} µs are {why}: write EVT 2.0 or HDF5 instead"
            )

    def _write_evt2(self, ev: np.ndarray) -> None:
        """EVT 2.0: per event the filler pairs of the wraps crossed, TIME_HIGH where it changes, the CD word."""
        c = COUNTERS["evt2"]
        t = ev["t"].astype(np.int64) - self._t0
        high = t >> c.shift
        th_word = (8 << 28) | (high & 0x0FFFFFFF)
        cd_word = (ev["p"].astype(np.int64) << 28) | ((t & 0x3F) << 22) | (ev["x"].astype(np.int64) << 11) | ev["y"]
        self._encode(high, c, "<u4", ((8 << 28) | 0x0FFFFFFF, 8 << 28), [th_word, cd_word])

    def _write_evt3(self, ev: np.ndarray) -> None:
        """EVT 3.0: per event the filler pairs of the wraps crossed, TIME_HIGH, TIME_LOW and EVT_ADDR_Y where they
        change (TIME_LOW after every TIME_HIGH), the EVT_ADDR_X word."""
        c = COUNTERS["evt3"]
        t = ev["t"].astype(np.int64) - self._t0
        high, low, y = t >> c.shift, t & 0xFFF, ev["y"].astype(np.int64)
        words = [0x8000 | (high & 0xFFF), 0x6000 | low, y, 0x2000 | (ev["p"].astype(np.int64) << 11) | ev["x"]]
        self._encode(high, c, "<u2", (0x8FFF, 0x8000), words, low, y)

    def _encode(self, high, c: _Counter, dtype, fill_pair, words, low=None, y=None) -> None:
        """Write EVT words for events whose TIME_HIGH values (with wraps) are ``high``: ``words`` the TIME_HIGH
        word, then (EVT 3.0) the TIME_LOW and EVT_ADDR_Y words, then the event word, of every event."""
        if self._high < 0:  # start the counter at 0; the wraps before the first event are filled in below
            self._fh.write(np.array([fill_pair[1]], dtype).tobytes())
            self._high = 0
        prev_high = np.concatenate([[self._high], high[:-1]])
        fills = (high >> c.bits) - (prev_high >> c.bits)
        emit = [high != prev_high]
        if low is not None:
            prev_low = np.concatenate([[self._low], low[:-1]])
            prev_y = np.concatenate([[self._y], y[:-1]])
            emit += [emit[0] | (low != prev_low), y != prev_y]
            self._low, self._y = int(low[-1]), int(y[-1])
        emit.append(np.ones(len(high), bool))
        for a, b in _pieces(fills):
            cols = [(e[a:b], v[a:b]) for e, v in zip(emit, words)]
            self._fh.write(_interleave(fills[a:b], fill_pair, cols, dtype).tobytes())
        self._high = int(high[-1])

    def _write_dat(self, ev: np.ndarray) -> None:
        """DAT: 64-bit events, the time modulo 2^32 (less t0)."""
        t = (ev["t"].astype(np.int64) - self._t0) & 0xFFFFFFFF
        data = ev["x"].astype(np.int64) | (ev["y"].astype(np.int64) << 14) | (ev["p"].astype(np.int64) << 28)
        self._fh.write((t.astype(np.uint64) | (data.astype(np.uint64) << np.uint64(32))).astype("<u8").tobytes())


def write_prophesee(path, events, sensor_size, format: str = "evt3") -> None:
    """Write ``events`` (in time order) to ``path`` as ``format`` (one of ``WRITABLE``), atomically; reading it
    back returns exactly ``events``."""
    with PropheseeWriter(path, format, sensor_size) as writer:
        writer.write(events)
