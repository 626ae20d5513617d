"""Writing Prophesee files: :class:`PropheseeWriter` (``evt2``, ``evt3``, ``dat``; the layouts in the package
docstring, ``events.formats.prophesee``) and :func:`write_prophesee`.

The writer stores absolute times: a header with the sensor
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

from collections.abc import Iterator
from contextlib import ExitStack

import numpy as np

from events.atomic import atomic_file
from events.errors import InputError
from events.formats import CheckedChunks
from events.formats.prophesee.header import COUNTERS, DAT_EVENT_BYTES, MAX_SIDE, NAMES, Counter

WRITABLE = ("evt2", "evt3", "dat")
MAX_WRAPS = 1 << 16
"""The most wraps of the time counter the writer fills in between two events (two TIME_HIGH words each)."""
_FILL_BUDGET = 1 << 20  # filler words encoded at a time


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
            raise InputError(f"cannot write Prophesee format {format!r}; writable: {', '.join(WRITABLE)}")
        w, h, *_ = (int(v) for v in sensor_size)
        top = MAX_SIDE[format]
        if not (0 < w <= top and 0 < h <= top):
            raise InputError(f"{path}: sensor size {w}x{h} does not fit {format} (each side 1..{top})")
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
            raise InputError(f"{self.path}: writer is not open (use it as a context manager)")
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
            raise InputError(
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

    def _encode(self, high, c: Counter, dtype, fill_pair, words, low=None, y=None) -> None:
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
