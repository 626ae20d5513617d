"""Byte sequences built from Prophesee's format pages (docs.prophesee.ai "EVT 2.0 / 2.1 / 3.0 Format", "RAW / DAT
File Format"), independent of ``events.formats.prophesee``, the library under test; and what the Prophesee tests
share (simulated recordings, chunked and damaged reads)."""

from __future__ import annotations

import numpy as np
import pytest

import events
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, make_events

SENSOR = SensorSize(640, 480, 2)
TH2, TH3 = 0b1000 << 28, 0b1000 << 12  # EVT 2.0 / EVT 3.0 EVT_TIME_HIGH words of value 0


def simulated(n=3000, seed=0, start=3 * 2**24 + 5, max_gap=2000, sensor=SENSOR):
    """``n`` events in time order on ``sensor``, starting at ``start`` µs (past several EVT 3.0 periods)."""
    rng = np.random.default_rng(seed)
    t = start + np.cumsum(rng.integers(0, max_gap, n))
    return make_events(rng.integers(0, sensor.width, n), rng.integers(0, sensor.height, n), t, rng.integers(0, 2, n))


# --- encoders written from the format pages (independent of events.formats.prophesee) -----------------------------


def raw_header(version: str, sensor=SENSOR, extra: str = "", end=True) -> bytes:
    """A RAW header: '% evt', '% format EVTx;width;height', optional extra lines, '% end' (optional per the page)."""
    name = {"2.0": "EVT2", "2.1": "EVT21", "3.0": "EVT3"}[version]
    text = f"% evt {version}\n% format {name};height={sensor[1]};width={sensor[0]}{extra}\n"
    return (text + ("% end\n" if end else "")).encode()


def evt2_words(ev, camera=False) -> list[int]:
    """EVT 2.0: EVT_TIME_HIGH (type 1000, bits 27-0 = time bits 33-6) where the time's bits 33-6 change (with
    ``camera``, also one for every 64 µs in between, as a sensor sends them), then CD_OFF / CD_ON (type 0000 /
    0001, bits 27-22 time bits 5-0, 21-11 x, 10-0 y)."""
    words, high = [], None
    for x, y, t, p in zip(*(ev[f].tolist() for f in ("x", "y", "t", "p"))):
        if t >> 6 != high:
            first = t >> 6 if (high is None or not camera) else high + 1
            for h in range(first, (t >> 6) + 1):
                words.append((0b1000 << 28) | (h & 0x0FFFFFFF))
            high = t >> 6
        words.append((p << 28) | ((t & 63) << 22) | (x << 11) | y)
    return words


def evt2_bytes(ev, sensor=SENSOR, camera=False) -> bytes:
    return raw_header("2.0", sensor) + np.array(evt2_words(ev, camera), "<u4").tobytes()


def evt21_words(ev) -> list[int]:
    """EVT 2.1 64-bit words: EVT_TIME_HIGH (type 1000 in bits 63-60, bits 59-32 = time bits 33-6) where those bits
    change, then EVT_NEG / EVT_POS (type 0000 / 0001; 59-54 time bits 5-0, 53-43 x aligned on 32, 42-32 y, 31-0
    valid: bit i an event at x + i), one word per run of events at the same (t, y, p) in one 32-pixel block with x
    increasing."""
    words, high, i = [], None, 0
    while i < len(ev):
        x, y, t, p = (int(ev[f][i]) for f in ("x", "y", "t", "p"))
        if t >> 6 != high:
            high = t >> 6
            words.append((0b1000 << 60) | ((high & 0x0FFFFFFF) << 32))
        base, mask, j = x & ~31, 1 << (x & 31), i + 1
        while j < len(ev):
            xj = int(ev["x"][j])
            if (int(ev["t"][j]), int(ev["y"][j]), int(ev["p"][j])) != (t, y, p) or xj & ~31 != base:
                break
            if xj <= int(ev["x"][j - 1]):
                break
            mask |= 1 << (xj & 31)
            j += 1
        words.append((p << 60) | ((t & 63) << 54) | (base << 43) | (y << 32) | mask)
        i = j
    return words


def evt21_body(words, legacy=False) -> bytes:
    """64-bit words as a GenX320 writes them (little-endian as a whole) or, ``legacy``, as an IMX636 does: the high
    32-bit half first, each half little-endian ("0x0102030405060708 is transmitted as 0x0403020108070605")."""
    if not legacy:
        return np.array(words, "<u8").tobytes()
    return b"".join(
        ((w >> 32) & 0xFFFFFFFF).to_bytes(4, "little") + (w & 0xFFFFFFFF).to_bytes(4, "little") for w in words
    )


def evt21_bytes(ev, sensor=SENSOR, header=True, legacy=False) -> bytes:
    """An EVT 2.1 file of ``ev`` (``legacy``: IMX636's layout, said so in the header)."""
    head = raw_header("2.1", sensor, ";endianness=legacy" if legacy else "") if header else b""
    return head + evt21_body(evt21_words(ev), legacy)


def evt3_words(ev, vectors=False) -> list[int]:
    """EVT 3.0 16-bit words: EVT_TIME_HIGH (1000, time bits 23-12) where those change, EVT_TIME_LOW (0110, time
    bits 11-0) where those change or after a TIME_HIGH, EVT_ADDR_Y (0000, y) where y changes, then EVT_ADDR_X (0010,
    polarity bit 11, x) per event -- or, with ``vectors``, per run of events at the same (t, y, p) with x increasing
    within 32 of the run's first, VECT_BASE_X (0011, polarity, x) then VECT_12, VECT_12, VECT_8 (0100, 0100, 0101:
    valid bits for x = base + i, the base advancing by 12, 12, 8)."""
    words, high, low, yy, i = [], None, None, None, 0
    while i < len(ev):
        x, y, t, p = (int(ev[f][i]) for f in ("x", "y", "t", "p"))
        if (t >> 12) & 0xFFF != high:
            high = (t >> 12) & 0xFFF
            words.append((0b1000 << 12) | high)
            low = None
        if t & 0xFFF != low:
            low = t & 0xFFF
            words.append((0b0110 << 12) | low)
        if y != yy:
            yy = y
            words.append(y)
        j = i + 1
        if vectors:
            mask = 1
            while j < len(ev) and (int(ev["t"][j]), int(ev["y"][j]), int(ev["p"][j])) == (t, y, p):
                xj = int(ev["x"][j])
                if not (xj > int(ev["x"][j - 1]) and xj - x < 32):
                    break
                mask |= 1 << (xj - x)
                j += 1
            if j > i + 1:
                words += [(0b0011 << 12) | (p << 11) | x, (0b0100 << 12) | (mask & 0xFFF)]
                words += [(0b0100 << 12) | ((mask >> 12) & 0xFFF), (0b0101 << 12) | (mask >> 24)]
                i = j
                continue
        words.append((0b0010 << 12) | (p << 11) | x)
        i = j
    return words


def evt3_bytes(ev, sensor=SENSOR, vectors=False) -> bytes:
    return raw_header("3.0", sensor) + np.array(evt3_words(ev, vectors), "<u2").tobytes()


def dat_bytes(ev, sensor=SENSOR, kind=12) -> bytes:
    """DAT: '% ' header lines, the event type (12 CD, 0 2D) and size (8) bytes, then per event 32 bits of time (its
    low 32 bits), 14 bits x, 14 bits y, 4 bits polarity."""
    head = f"% Data file containing CD events\n% Version 2\n% Width {sensor[0]}\n% Height {sensor[1]}\n".encode()
    t = ev["t"].astype(np.uint64) & np.uint64(0xFFFFFFFF)
    data = (
        ev["x"].astype(np.uint64)
        | ev["y"].astype(np.uint64) << np.uint64(14)
        | ev["p"].astype(np.uint64) << np.uint64(28)
    )
    return head + bytes([kind, 8]) + (t | data << np.uint64(32)).astype("<u8").tobytes()


def read_chunked(path, size=97):
    with events.reader(path) as r:
        parts = list(r.iter_chunks(size))
    return np.concatenate(parts) if parts else np.zeros(0, EVENT_DTYPE)


def damaged(path, payload: bytes):
    path.write_bytes(payload)
    with pytest.raises(EventFormatError) as err:
        events.read(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    return err.value


def good_before(path):
    """The events handed over before the reader's error, and the error."""
    got = []
    with events.reader(path) as r, pytest.raises(EventFormatError) as err:
        for chunk in r.iter_chunks(50):
            got.append(chunk)
    return (np.concatenate(got) if got else np.zeros(0, EVENT_DTYPE)), err.value


def low_bits_never_fall(n, seed, start_tick):
    """Events whose time's 12 low bits never decrease while its bits 12 and up climb (across several 2^24 µs
    wraps): expelliarmus 1.1.12 adds 4096 µs whenever EVT 3.0's TIME_LOW decreases, even right after a TIME_HIGH
    (its issue #19, "Different duration compared to metavision_studio"), so only such times can be compared."""
    rng = np.random.default_rng(seed)
    low = np.sort(rng.integers(0, 4096, n))
    tick = start_tick + np.cumsum(rng.integers(0, 400, n))
    return make_events(rng.integers(0, 640, n), rng.integers(0, 480, n), (tick << 12) + low, rng.integers(0, 2, n))
