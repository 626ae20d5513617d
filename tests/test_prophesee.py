"""Prophesee RAW (EVT 2.0, 2.1, 3.0) and DAT: written by faery (EVT 2.1 built here, faery cannot encode it), read
back exactly, whole and chunked; the header's sensor size; detection by content; damaged files."""

from __future__ import annotations

import numpy as np
import pytest

import events
from events.formats.prophesee import PropheseeReader, PropheseeWriter, read_header, write_prophesee
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, make_events

SENSOR = SensorSize(640, 480, 2)


def simulated(n=3000, seed=0, start=3 * 2**24 + 5, max_gap=2000, sensor=SENSOR):
    """``n`` events in time order on ``sensor``, starting at ``start`` µs (past several EVT 3.0 periods)."""
    rng = np.random.default_rng(seed)
    t = start + np.cumsum(rng.integers(0, max_gap, n))
    return make_events(rng.integers(0, sensor.width, n), rng.integers(0, sensor.height, n), t, rng.integers(0, 2, n))


def evt21_bytes(ev, sensor=SENSOR, header=True) -> bytes:
    """An EVT 2.1 file of ``ev``: a TIME_HIGH word where t >> 6 changes, then per event one vector word (base x,
    one bit), except that runs of events at the same (t, y, p) and x within 32 of the run's first share a word."""
    words = []
    high = None
    i = 0
    while i < len(ev):
        t, y, p, x = (int(ev[f][i]) for f in ("t", "y", "p", "x"))
        if t >> 6 != high:
            high = t >> 6
            words.append((0x8 << 60) | ((high & 0x0FFFFFFF) << 32))
        mask, j = 1, i + 1
        while (
            j < len(ev)
            and (int(ev["t"][j]), int(ev["y"][j]), int(ev["p"][j])) == (t, y, p)
            and 0 < int(ev["x"][j]) - x < 32
            and int(ev["x"][j]) > int(ev["x"][j - 1])
        ):
            mask |= 1 << (int(ev["x"][j]) - x)
            j += 1
        words.append((p << 60) | ((t & 63) << 54) | (x << 43) | (y << 32) | mask)
        i = j
    head = f"% evt 2.1\n% format EVT21;height={sensor[1]};width={sensor[0]}\n% end\n".encode() if header else b""
    return head + np.array(words, dtype="<u8").tobytes()


@pytest.mark.parametrize("fmt", ["evt2", "evt3", "dat"])
def test_written_files_read_back_exactly_whole_and_chunked(tmp_path, fmt):
    ev = simulated()
    path = tmp_path / f"rec.{'dat' if fmt == 'dat' else 'raw'}"
    write_prophesee(path, ev, SENSOR, fmt)
    assert events.detect_format(path) == fmt
    rec = events.read(path)
    assert rec.events.dtype == EVENT_DTYPE and np.array_equal(rec.events, ev)
    assert rec.sensor_size == SENSOR and rec.meta["format"] == fmt
    with events.reader(path) as r:
        chunks = list(r.iter_chunks(333))
    assert max(len(c) for c in chunks) <= 333 and np.array_equal(np.concatenate(chunks), ev)


@pytest.mark.parametrize("fmt", ["evt2", "evt3", "dat"])
def test_writer_takes_chunks_and_empty_recordings(tmp_path, fmt):
    ev = simulated(seed=1)
    path = tmp_path / "chunked.bin"  # content, not the name, tells the format
    with PropheseeWriter(path, fmt, SENSOR) as w:
        for part in np.array_split(ev, 7):
            w.write(part)
    assert np.array_equal(events.read(path).events, ev)
    write_prophesee(tmp_path / "empty", ev[:0], (32, 24), fmt)
    rec = events.read(tmp_path / "empty")
    assert len(rec) == 0 and rec.sensor_size == SensorSize(32, 24, 2)


def test_evt21_is_read_exactly_including_vectors_and_time_high_loops(tmp_path):
    rng = np.random.default_rng(2)
    ev = simulated(n=4000, seed=2, start=2**34 - 50_000, max_gap=40)  # crosses EVT 2.1's 2^34 µs period
    runs = make_events([100, 101, 105, 131], [7] * 4, [2**34 + 10**6] * 4, [1] * 4)  # one vector word
    ev = np.concatenate([ev, runs])
    ev["p"][:100] = rng.integers(0, 2, 100)
    path = tmp_path / "rec.raw"
    path.write_bytes(evt21_bytes(ev))
    assert events.detect_format(path) == "evt21"
    assert np.array_equal(events.read(path).events, ev)
    with events.reader(path) as r:
        assert np.array_equal(np.concatenate(list(r.iter_chunks(100))), ev)


@pytest.mark.parametrize(
    "header, size",
    [
        (b"% evt 3.0\n% format EVT3;height=720;width=1280\n% end\n", (1280, 720)),
        (b"% date 2024-01-01\n% evt 2.0\n% geometry 346x260\n% end\n", (346, 260)),
        (b"% Date 2024\n% Version 2\n% Width 304\n% Height 240\n\x0c\x08", (304, 240)),
    ],
)
def test_sensor_size_comes_from_the_header(tmp_path, header, size):
    path = tmp_path / "h.bin"
    path.write_bytes(header)
    assert read_header(path).sensor_size == SensorSize(*size, 2)
    assert events.read(path).sensor_size == SensorSize(*size, 2)


def test_content_wins_over_a_wrong_extension(tmp_path):
    ev = simulated(n=200)
    write_prophesee(tmp_path / "a.dat", ev, SENSOR, "evt3")  # EVT 3.0 under a DAT name
    write_prophesee(tmp_path / "b.raw", ev, SENSOR, "dat")  # DAT under a RAW name
    assert events.detect_format(tmp_path / "a.dat") == "evt3" and events.detect_format(tmp_path / "b.raw") == "dat"
    assert np.array_equal(events.read(tmp_path / "a.dat").events, ev)
    assert np.array_equal(events.read(tmp_path / "b.raw").events, ev)


def damaged(path, payload: bytes):
    path.write_bytes(payload)
    with pytest.raises(EventFormatError) as err:
        events.read(path)
    assert str(path) in str(err.value)
    return err.value


@pytest.mark.parametrize("fmt, word", [("evt2", 4), ("evt3", 2), ("dat", 8)])
def test_truncated_files_raise_with_the_offset_after_the_good_events(tmp_path, fmt, word):
    ev = simulated(n=500)
    src = tmp_path / "src"
    write_prophesee(src, ev, SENSOR, fmt)
    data = src.read_bytes()
    err = damaged(tmp_path / "cut", data[:-1])
    assert "truncated" in str(err) and err.offset == len(data) - word
    with events.reader(tmp_path / "cut") as r:
        got = []
        with pytest.raises(EventFormatError):
            for chunk in r.iter_chunks(100):
                got.append(chunk)
    good = np.concatenate(got)
    assert len(good) > 400 and np.array_equal(good, ev[: len(good)])


def test_evt21_errors_give_the_word_offset(tmp_path):
    ev = simulated(n=50)
    data = evt21_bytes(ev)
    err = damaged(tmp_path / "cut.raw", data[:-3])
    assert err.offset == len(data) - 8
    off_sensor = make_events([620], [5], [10**6], [1])
    data = evt21_bytes(make_events([1], [1], [5], [0])) + evt21_bytes(off_sensor, header=False)[:-8]
    word = (1 << 60) | (620 << 43) | (5 << 32) | (1 << 25)  # x = 620 + 25, off the 640-wide sensor
    err = damaged(tmp_path / "off.raw", data + np.array([word], "<u8").tobytes())
    assert "outside the 640x480 sensor" in str(err) and err.offset == len(data)


@pytest.mark.parametrize(
    "payload, problem",
    [
        (b"% evt 4.0\n% geometry 64x64\n", "not an EVT version"),
        (b"% evt 3.0\n% format EVT2;width=64;height=64\n", "two EVT versions"),
        (b"% evt 3.0\n% end\n\x00\x00", "no sensor size"),
        (b"% evt 3.0\n% geometry 4096x64\n", "no sensor size in 1..2048"),
        (b"% a line with no end", "not ended"),
        (b"% just a comment\n", "names no format"),
        (b"% Version 2\n% Width 64\n% Height 64\n\x00\x10", "only CD events"),
    ],
)
def test_garbage_headers_raise_format_errors(tmp_path, payload, problem):
    assert problem in str(damaged(tmp_path / "g.raw", payload))


def test_off_sensor_and_out_of_order_events_raise(tmp_path):
    ev = simulated(n=300, sensor=SensorSize(1280, 720))
    path = tmp_path / "big.raw"
    write_prophesee(path, ev, (1280, 720), "evt2")
    data = (
        path.read_bytes().replace(b"width=1280;height=720", b"width=0640;height=480").replace(b"1280x720", b"640x480")
    )
    err = str(damaged(tmp_path / "small.raw", data))
    assert "outside the 640x480 sensor" in err or "must be strictly smaller than" in err  # faery checks too
    for fmt in ("evt2", "evt3", "dat"):
        with pytest.raises(ValueError, match="time order"):
            write_prophesee(tmp_path / "x", make_events([1, 1], [1, 1], [100, 50], [0, 1]), SENSOR, fmt)


def test_writer_refuses_what_faery_cannot_code_exactly_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "keep.raw"
    path.write_bytes(b"old")
    sparse = make_events([1, 2], [1, 1], [10, 10 + 2**24], [0, 1])  # across an EVT 3.0 period, ticks apart
    with pytest.raises(ValueError, match="2\\^24"):
        write_prophesee(path, sparse, SENSOR, "evt3")
    with pytest.raises(ValueError, match="32-bit"):
        write_prophesee(path, make_events([1, 2], [1, 1], [0, 2**32], [0, 1]), SENSOR, "dat")
    with pytest.raises(EventFormatError, match="outside"):
        write_prophesee(path, make_events([700], [1], [0], [0]), SENSOR, "evt2")
    with pytest.raises(ValueError, match="does not fit"):
        PropheseeWriter(path, "evt3", (4096, 64))
    with pytest.raises(ValueError, match="writable"):
        PropheseeWriter(path, "evt21", SENSOR)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]
    write_prophesee(path, sparse, SENSOR, "evt2")  # EVT 2.0 holds it
    assert np.array_equal(events.read(path).events, sparse)


def test_reader_class_reports_its_format(tmp_path):
    path = tmp_path / "r.raw"
    write_prophesee(path, simulated(n=10), SENSOR, "evt3")
    with PropheseeReader(path) as r:
        assert r.format == "evt3" and r.sensor_size == SENSOR
