"""Prophesee RAW (EVT 2.0, 3.0) and DAT files written by this project: read back exactly, whole and chunked, across
counter wraps and long gaps, refused where the format cannot hold the events; and read by an independent decoder
(expelliarmus) with the same absolute times, as are byte sequences built from the format pages."""

from __future__ import annotations

import numpy as np
import pytest
from prophesee_pages import (
    SENSOR,
    TH2,
    TH3,
    dat_bytes,
    evt2_bytes,
    evt3_bytes,
    evt3_words,
    low_bits_never_fall,
    read_chunked,
    simulated,
)

import events
from events.formats.prophesee import PropheseeWriter, read_header, write_prophesee
from events.formats.prophesee.writer import MAX_WRAPS
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, make_events


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
    head = read_header(path)
    assert head.t0 == 0  # absolute times: no offset for other readers to miss
    if fmt != "dat":  # the body starts with TIME_HIGH 0, so decoders that subtract the first TIME_HIGH subtract 0
        first = np.frombuffer(path.read_bytes()[head.body :], "<u4" if fmt == "evt2" else "<u2")[0]
        assert first == (TH2 if fmt == "evt2" else TH3)


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


@pytest.mark.parametrize("fmt, period", [("evt3", 2**24), ("evt2", 2**34), ("dat", 2**32)])
def test_written_files_cross_many_counter_wraps_and_long_gaps(tmp_path, fmt, period):
    rng = np.random.default_rng(3)
    n = 2000
    gaps = np.where(rng.random(n) < 0.02, rng.integers(period // 3, period // 2, n), rng.integers(0, 3000, n))
    ev = make_events(rng.integers(0, 640, n), rng.integers(0, 480, n), 17 + np.cumsum(gaps), rng.integers(0, 2, n))
    assert ev["t"][-1] // period >= 5
    if fmt != "dat":  # EVT fills in the wraps of gaps up to MAX_WRAPS periods long; DAT's times can only go ahead
        ev["t"][n // 2 :] += 7 * period + 123
    path = tmp_path / "wraps.raw"
    write_prophesee(path, ev, SENSOR, fmt)
    assert np.array_equal(events.read(path).events, ev) and np.array_equal(read_chunked(path, 301), ev)


@pytest.mark.parametrize("fmt", ["evt3", "evt2", "dat"])
def test_first_event_far_past_the_counter_range_is_read_back_exactly(tmp_path, fmt):
    ev = make_events([1, 2, 3], [4, 5, 6], [2**60 + 5, 2**60 + 6, 2**60 + 2**20], [0, 1, 1])
    path = tmp_path / "late.raw"
    write_prophesee(path, ev, SENSOR, fmt)
    assert np.array_equal(events.read(path).events, ev)
    assert path.stat().st_size < 4096  # a whole number of periods in % t0, not millions of filler words


def test_writer_refuses_what_the_format_cannot_hold_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "keep.raw"
    path.write_bytes(b"old")
    far = make_events([1, 2], [1, 1], [10, 10 + (MAX_WRAPS + 2) * 2**24], [0, 1])
    with pytest.raises(ValueError, match="2\\^24"):
        write_prophesee(path, far, SENSOR, "evt3")
    with pytest.raises(ValueError, match="2\\^31"):  # across a DAT wrap, too far apart to tell from a step back
        write_prophesee(path, make_events([1, 2], [1, 1], [2**32 - 10, 2**32 + 2**31], [0, 1]), SENSOR, "dat")
    with pytest.raises(EventFormatError, match="outside"):
        write_prophesee(path, make_events([700], [1], [0], [0]), SENSOR, "evt2")
    with pytest.raises(ValueError, match="does not fit"):
        PropheseeWriter(path, "evt3", (4096, 64))
    with pytest.raises(ValueError, match="writable"):
        PropheseeWriter(path, "evt21", SENSOR)
    for fmt in ("evt2", "evt3", "dat"):
        with pytest.raises(ValueError, match="time order"):
            write_prophesee(path, make_events([1, 1], [1, 1], [100, 50], [0, 1]), SENSOR, fmt)
    assert path.read_bytes() == b"old" and list(tmp_path.iterdir()) == [path]
    write_prophesee(path, far, SENSOR, "evt2")  # EVT 2.0 holds it
    assert np.array_equal(events.read(path).events, far)
    sparse = make_events([1, 2, 3], [1, 1, 1], [10, 10 + 2**24, 2**32 - 3], [0, 1, 0])  # ticks and periods apart
    for fmt in ("evt3", "dat"):
        write_prophesee(path, sparse, SENSOR, fmt)
        assert np.array_equal(events.read(path).events, sparse)


# --- an independent decoder: expelliarmus (which tonic installs) ---------------------------------------------------


def expelliarmus_read(path, fmt):
    wizard = pytest.importorskip("expelliarmus").Wizard(encoding=fmt)
    arr = wizard.read(str(path))
    return make_events(arr["x"], arr["y"], arr["t"], arr["p"])


@pytest.mark.parametrize("fmt", ["evt2", "evt3", "dat"])
def test_expelliarmus_reads_written_files_with_the_absolute_times(tmp_path, fmt):
    """What ``nsm convert`` writes, read by another decoder: the same x, y, p and absolute t. EVT 2.0 stays below
    2^34 µs (expelliarmus counts no EVT 2.0 wraps); EVT 3.0 uses times whose low 12 bits never fall (its TIME_LOW
    bug, ``low_bits_never_fall``) but crosses several 24-bit wraps; DAT crosses a 32-bit wrap."""
    if fmt == "evt3":
        ev = low_bits_never_fall(3000, 4, start_tick=3 * 4096 + 7)
        assert ev["t"][-1] >> 24 >= 6
    else:
        start = 2**32 - 3 * 10**6 if fmt == "dat" else 3 * 2**24 + 5
        ev = simulated(start=start, max_gap=3000)
    path = tmp_path / f"w.{'dat' if fmt == 'dat' else 'raw'}"
    write_prophesee(path, ev, SENSOR, fmt)
    assert np.array_equal(expelliarmus_read(path, fmt), ev)


@pytest.mark.parametrize("fmt", ["evt2", "evt3", "dat"])
def test_spec_built_files_read_the_same_here_and_in_expelliarmus(tmp_path, fmt):
    """Files not written by this project (the encoders above, from the format pages): EVT 2.0 as a camera sends it
    (a TIME_HIGH every 64 µs), EVT 3.0 with vectors, DAT of type CD and of type 2D crossing a 32-bit wrap."""
    rng = np.random.default_rng(5)
    if fmt == "evt2":
        ev = simulated(n=1500, start=2**30 + 3, max_gap=200)
        payloads = {"cam.raw": evt2_bytes(ev, camera=True)}
    elif fmt == "evt3":
        rows = []
        for x, y, t, p in low_bits_never_fall(1000, 6, start_tick=3600)[["x", "y", "t", "p"]].tolist():
            rows.append((x, y, t, p))
            if rng.random() < 0.3:  # neighbours on the row at the same time: vector words
                rows += [(nx, y, t, p) for nx in x + np.cumsum(rng.integers(1, 6, 5)) if nx < min(x + 32, 640)]
        ev = make_events(*map(list, zip(*rows)))
        payloads = {"vec.raw": evt3_bytes(ev, vectors=True)}
        assert any(w >> 12 == 0b0100 for w in evt3_words(ev, vectors=True))
    else:
        ev = simulated(n=1500, start=2**32 - 10**6, max_gap=2000)
        payloads = {"cd.dat": dat_bytes(ev), "2d.dat": dat_bytes(ev, kind=0)}
    for name, payload in payloads.items():
        path = tmp_path / name
        path.write_bytes(payload)
        assert np.array_equal(events.read(path).events, ev), name
        assert np.array_equal(read_chunked(path), ev), name
        assert np.array_equal(expelliarmus_read(path, fmt), ev), name
