"""Reading Prophesee RAW (EVT 2.0, 2.1, 3.0) and DAT files: :class:`PropheseeReader`, which decodes the bodies
the package docstring (``events.formats.prophesee``) describes.

It raises ``EventFormatError`` naming the file (and the byte offset where one applies) for: a header line not
ended within 1 MiB, an unknown, conflicting or missing version, a missing, conflicting or out-of-range sensor size
(11-bit EVT, 14-bit DAT addresses), an unknown endianness, a bad ``% t0``, a DAT event type other than CD / 2D or a
size other than 8; and in the body, at the offending word: a TIME_HIGH (DAT time) step back that is no wrap, an
EVT 3.0 event before any EVT_ADDR_Y or a vector before any VECT_BASE_X, an event off the sensor (an EVT 3.0 or 2.1
vector bit past the sensor's edge included), a DAT polarity over 1, an event earlier than the one before it, a time
beyond int64 with t0 added, and a body that ends inside a word (truncated: the cut word's offset). Every good event
before the damage is yielded first. The body is read ``_CHUNK_WORDS`` words at a time, so memory stays bounded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np

from events.formats import EventFileReader
from events.formats.prophesee.header import COUNTERS, INT64_MAX, NAMES, Counter, read_header
from events.types import EVENT_DTYPE, EventFormatError

WORD_BYTES = {"evt2": 4, "evt21": 8, "evt3": 2, "dat": 8}
_CHUNK_WORDS = {"evt2": 1 << 16, "evt21": 1 << 13, "evt3": 1 << 15, "dat": 1 << 16}
"""Words decoded at a time: at most 2^16, 2^18 (32 a vector word), 393 216 (12 a vector word), 2^16 events."""


class _TimeBase:
    """One file's time counter (``COUNTERS``) as read so far: the last raw value, the wraps counted."""

    def __init__(self, counter: Counter):
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

    def _step_back(self, counter: Counter, prev: int, raw: int) -> str:
        what = "time" if self.format == "dat" else "EVT_TIME_HIGH"
        period = counter.bits + counter.shift
        return (
            f"{NAMES[self.format]} {what} steps back from {prev} to {raw} ({(prev - raw) << counter.shift} µs), "
            f"less than the half period (2^{period - 1} µs) by which a wrap of its {period}-bit µs time steps back: "
            "the time base goes back (corrupt data)"
        )

    def _evt2(self) -> Iterator[tuple[Columns, np.ndarray]]:
        """EVT 2.0 events (package docstring), per chunk of words."""
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
        """EVT 2.1 events (package docstring), per chunk of words; each vector word gives its events in x order."""
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
        """EVT 3.0 events (package docstring), per chunk of words, the decoder's state carried between chunks: the
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
        """DAT events (package docstring), per chunk."""
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
