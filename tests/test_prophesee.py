"""Prophesee RAW (EVT 2.0, 2.1, 3.0) and DAT read as the format pages say (byte sequences built in
``prophesee_pages.py``, not by the library under test): EVT 2.1's ``endianness=legacy`` layout, time-counter wraps
and steps back, vectors, headers without ``% end``; the header's sensor size, versions and ``% t0``; damaged
files. Files this project writes: ``test_prophesee_write.py``."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from prophesee_pages import (
    SENSOR,
    TH2,
    TH3,
    damaged,
    dat_bytes,
    evt2_bytes,
    evt2_words,
    evt3_bytes,
    evt3_words,
    evt21_body,
    evt21_bytes,
    evt21_words,
    good_before,
    low_bits_never_fall,
    raw_header,
    read_chunked,
    simulated,
)

import events
from events.formats import prophesee
from events.formats.prophesee import PropheseeReader, PropheseeWriter, read_header, write_prophesee
from events.formats.prophesee.reader import WORD_BYTES
from events.types import SensorSize, make_events

# --- EVT 2.1, both layouts ----------------------------------------------------------------------------------------


def test_evt21_legacy_layout_of_today_cameras_is_decoded(tmp_path):
    """IMX636 / IMX646 / Gen4.1 write ``% format EVT21;...;endianness=legacy``: three events become three events."""
    ev = make_events([5, 40, 41], [7, 9, 9], [1000, 1070, 1070], [1, 0, 0])
    legacy = tmp_path / "imx636.raw"
    legacy.write_bytes(evt21_bytes(ev, legacy=True))
    assert b"endianness=legacy" in legacy.read_bytes()
    assert events.detect_format(legacy) == "evt21" and read_header(legacy).legacy
    assert np.array_equal(events.read(legacy).events, ev)
    plain = tmp_path / "genx320.raw"
    plain.write_bytes(evt21_bytes(ev))
    assert np.array_equal(events.read(plain).events, ev)
    assert evt21_body([0x0102030405060708], legacy=True) == bytes.fromhex("0403020108070605")  # the page's example
    err = damaged(tmp_path / "big.raw", raw_header("2.1", extra=";endianness=big") + evt21_body(evt21_words(ev)))
    assert "endianness=big" in str(err)


@pytest.mark.parametrize("legacy", [False, True])
def test_evt21_is_read_exactly_including_vectors_and_time_high_wraps(tmp_path, legacy):
    ev = simulated(n=4000, seed=2, start=2**34 - 50_000, max_gap=40)  # crosses EVT 2.1's 2^34 µs period
    runs = make_events([96, 101, 105, 127], [7] * 4, [2**34 + 10**6] * 4, [1] * 4)  # one vector word
    ev = np.concatenate([ev, runs])
    path = tmp_path / "rec.raw"
    path.write_bytes(evt21_bytes(ev, legacy=legacy))
    assert events.detect_format(path) == "evt21"
    assert np.array_equal(events.read(path).events, ev)
    assert np.array_equal(read_chunked(path, 100), ev)


def test_evt21_errors_give_the_word_offset(tmp_path):
    ev = simulated(n=50)
    data = evt21_bytes(ev)
    err = damaged(tmp_path / "cut.raw", data[:-3])
    assert "truncated" in str(err) and err.offset == len(data) - 8
    data = evt21_bytes(make_events([1], [1], [5], [0]))
    word = (1 << 60) | (5 << 54) | (620 << 43) | (5 << 32) | (1 << 3) | (1 << 25)  # x = 623 fine, 645 off the sensor
    path = tmp_path / "off.raw"
    path.write_bytes(data + evt21_body([word]))
    good, err = good_before(path)
    assert "outside the 640x480 sensor" in str(err) and err.offset == len(data)
    assert good["x"].tolist() == [1, 623]


# --- time bases: wraps are counted, other steps back refused --------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, body, times",
    [
        # EVT 3.0: TIME_HIGH 4095 -> 0 is a wrap (the page: "after 16777215 µs the Time High value wraps")
        ("evt3", [TH3 | 4095, 0x6000 | 4000, 7, 0x2003, TH3 | 0, 0x6000 | 10, 0x2004], [2**24 - 96, 2**24 + 10]),
        # ... and so is a sparse file's step back of half the period or more (a gap across the wrap)
        ("evt3", [TH3 | 4090, 7, 0x2003, TH3 | 2042, 0x2004], [4090 << 12, 2**24 + (2042 << 12)]),
        # EVT 2.0 / 2.1: TIME_HIGH 2^28 - 1 -> 5 is a wrap of the 34-bit time
        (
            "evt2",
            [TH2 | 0x0FFFFFFF, (1 << 28) | (3 << 22) | (1 << 11) | 2, TH2 | 5, 9 << 22],
            [2**34 - 61, 2**34 + 329],
        ),
        ("evt2", [TH2 | 2**27 + 9, 1 << 11, TH2 | 9, 2 << 11], [(2**27 + 9) << 6, 2**34 + (9 << 6)]),
    ],
)
def test_counter_wraps_add_one_period(tmp_path, fmt, body, times):
    path = tmp_path / "wrap.raw"
    path.write_bytes(raw_header(fmt[-1] + ".0") + np.array(body, "<u4" if fmt == "evt2" else "<u2").tobytes())
    assert events.read(path).events["t"].tolist() == times


def test_evt3_long_sparse_recording_crosses_the_wrap_many_times(tmp_path):
    """An encoder that writes TIME_HIGH only at events (faery's, expelliarmus's) leaves gaps at the 24-bit wrap:
    every step back of half a period or more is a wrap, for ten periods and more."""
    rng = np.random.default_rng(7)
    n = 600
    t = 5 + np.cumsum(rng.integers(2**21, 2**23 - 4096, n))  # 2-8 s apart: TIME_HIGH skips the 4095 -> 0 step
    ev = make_events(rng.integers(0, 640, n), rng.integers(0, 480, n), t, rng.integers(0, 2, n))
    assert t[-1] >> 24 > 100
    path = tmp_path / "sparse.raw"
    path.write_bytes(evt3_bytes(ev))
    words = np.frombuffer(evt3_bytes(ev)[len(raw_header("3.0")) :], "<u2")
    highs = words[words >> 12 == 0b1000] & 0xFFF
    assert not ((highs[:-1] == 4095) & (highs[1:] == 0)).any()  # no wrap is the strict 4095 -> 0 step
    assert np.array_equal(events.read(path).events, ev) and np.array_equal(read_chunked(path, 37), ev)


@pytest.mark.parametrize(
    "fmt, body, back",
    [
        ("evt3", [TH3 | 100, 0x6000 | 5, 3, 0x2007, TH3 | 99, 0x2008], 4),  # by 4096 µs, not a wrap
        ("evt3", [TH3 | 3000, 3, 0x2007, TH3 | 953, 0x2008], 3),  # 2047 ticks: just under half the period
        ("evt2", [TH2 | 1000, 7 << 11, TH2 | 999, 8 << 11], 2),
        ("evt2", [TH2 | 2**27 + 9, 7 << 11, TH2 | 10, 8 << 11], 2),  # 2^27 - 1: just under half
    ],
)
def test_time_high_steps_back_are_refused_at_their_offset(tmp_path, fmt, body, back):
    word = 4 if fmt == "evt2" else 2
    head = raw_header(fmt[-1] + ".0")
    path = tmp_path / "back.raw"
    path.write_bytes(head + np.array(body, "<u4" if fmt == "evt2" else "<u2").tobytes())
    good, err = good_before(path)
    assert "steps back" in str(err) and err.offset == len(head) + word * back
    assert len(good) == 1  # the event before it is handed over first


@pytest.mark.parametrize("legacy", [False, True])
def test_evt21_time_high_step_back_is_refused(tmp_path, legacy):
    words = [(8 << 60) | (1000 << 32), (1 << 60) | (3 << 32) | 1, (8 << 60) | (999 << 32), (1 << 60) | (3 << 32) | 2]
    head = raw_header("2.1", extra=";endianness=legacy" if legacy else "")
    path = tmp_path / "back.raw"
    path.write_bytes(head + evt21_body(words, legacy))
    good, err = good_before(path)
    assert "steps back" in str(err) and err.offset == len(head) + 16 and len(good) == 1


def test_dat_time_wraps_and_steps_back(tmp_path):
    t = [2**32 - 10, 2**32 + 5, 2**32 + 2**31 + 7, 2**33 + 1]  # a wrap, ahead by 2^31 + 2, a wrap
    wrap = make_events([1, 2, 3, 4], [1, 1, 1, 1], t, [0, 1, 0, 1])
    path = tmp_path / "wrap.dat"
    path.write_bytes(dat_bytes(wrap))
    assert np.array_equal(events.read(path).events, wrap)
    back = make_events([1, 2, 3], [1, 1, 1], [5000, 4000, 6000], [0, 1, 0])
    data = dat_bytes(back)
    path.write_bytes(data)
    good, err = good_before(path)
    assert "steps back" in str(err) and err.offset == len(data) - 16 and good["t"].tolist() == [5000]


def test_words_before_the_first_time_high_are_skipped_as_the_pages_say(tmp_path):
    """Words before the first TIME_HIGH: "decoding of the event stream should start after receiving the first event
    of type EVT_TIME_HIGH" (the EVT 2.0 / 2.1 pages; OpenEB's EVT 3.0 decoder does the same)."""
    path = tmp_path / "late_start.raw"
    path.write_bytes(raw_header("2.0") + np.array([(1 << 11) | 1, TH2 | 3, (2 << 11) | 1], "<u4").tobytes())
    assert events.read(path).events[["x", "t"]].tolist() == [(2, 192)]
    path.write_bytes(raw_header("3.0") + np.array([5, 0x2001, TH3 | 1, 0x6002, 0x2009], "<u2").tobytes())
    assert events.read(path).events[["x", "y", "t"]].tolist() == [(9, 5, 4098)]


# --- EVT 3.0 vectors -----------------------------------------------------------------------------------------------


def test_evt3_vectors_up_to_the_sensor_edge_read_once_each(tmp_path):
    sensor = SensorSize(40, 8, 2)
    body = [TH3 | 1, 0x6000 | 5, 3, (0b0011 << 12) | (1 << 11) | 28, (0b0100 << 12) | 0xFFF, (0b0101 << 12) | 0]
    path = tmp_path / "edge.raw"
    path.write_bytes(raw_header("3.0", sensor) + np.array(body, "<u2").tobytes())
    ev = events.read(path).events
    assert ev["x"].tolist() == list(range(28, 40)) and set(ev["p"].tolist()) == {1} and set(ev["y"].tolist()) == {3}


def test_evt3_vector_bits_past_the_sensor_edge_are_refused_at_their_word(tmp_path):
    sensor = SensorSize(40, 8, 2)
    head = raw_header("3.0", sensor)
    start = [TH3 | 1, 0x6000 | 5, 3, (0b0011 << 12) | 32]  # VECT_BASE_X 32 on a 40-pixel-wide sensor
    vect12 = (0b0100 << 12) | 0b10_0000_1001  # bits 0, 3, 9: x = 32, 35, 41
    path = tmp_path / "past.raw"
    path.write_bytes(head + np.array(start + [vect12], "<u2").tobytes())
    good, err = good_before(path)
    assert good["x"].tolist() == [32, 35] and err.offset == len(head) + 2 * 4
    assert "outside the 40x8 sensor" in str(err)
    vect8 = (0b0101 << 12) | 0x81  # bits 0 and 7: x = 32 and 39 (on the sensor), then, the base at 40, 40 and 47
    path.write_bytes(head + np.array(start + [vect8, vect8], "<u2").tobytes())
    good, err = good_before(path)
    assert good["x"].tolist() == [32, 39] and err.offset == len(head) + 2 * 5
    assert "outside the 40x8 sensor" in str(err)


@pytest.mark.parametrize(
    "body, problem",
    [([TH3 | 1, 0x2005], "before any EVT_ADDR_Y"), ([TH3 | 1, 3, (0b0100 << 12) | 1], "before any VECT_BASE_X")],
)
def test_evt3_events_without_their_state_are_refused(tmp_path, body, problem):
    head = raw_header("3.0")
    err = damaged(tmp_path / "state.raw", head + np.array(body, "<u2").tobytes())
    assert problem in str(err) and err.offset == len(head) + 2 * (len(body) - 1)


# --- headers ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header, size",
    [
        (b"% evt 3.0\n% format EVT3;height=720;width=1280\n% end\n", (1280, 720)),
        (b"% date 2024-01-01\n% evt 2.0\n% geometry 346x260\n% end\n", (346, 260)),
        (b"% Date 2024\n% Version 2\n% Width 304\n% Height 240\n\x0c\x08", (304, 240)),
        (b"% evt 3.0\n% evt 3.0\n% format EVT3;width=64;height=48\n% geometry 64x48\n% end\n", (64, 48)),
    ],
)
def test_sensor_size_comes_from_the_header(tmp_path, header, size):
    path = tmp_path / "h.bin"
    path.write_bytes(header)
    assert read_header(path).sensor_size == SensorSize(*size, 2)
    assert events.read(path).sensor_size == SensorSize(*size, 2)


@pytest.mark.parametrize(
    "version, make, unit", [("2.0", evt2_words, 6), ("3.0", evt3_words, 12), ("2.1", evt21_words, 6)]
)
def test_headers_without_end_read_even_when_the_body_starts_with_a_percent_sign(tmp_path, version, make, unit):
    """'% end' is optional: data begins at the first line not starting with '% ' (the RAW File Format page)."""
    start = 0x25 << unit  # the first word, TIME_HIGH 0x25, starts with the byte '%'
    ev = make_events([3, 4], [5, 6], [start, start + 9], [1, 0])
    words = make(ev)
    if version == "2.1":
        body = evt21_body(words, legacy=True)  # legacy: the TIME_HIGH's value bits come first
    else:
        body = np.array(words, "<u4" if version == "2.0" else "<u2").tobytes()
    assert body[:1] == b"%" and body[:2] != b"% "
    path = tmp_path / "no_end.raw"
    path.write_bytes(raw_header(version, extra=";endianness=legacy" if version == "2.1" else "", end=False) + body)
    assert np.array_equal(events.read(path).events, ev)


@pytest.mark.parametrize("version, unit", [("evt2", 6), ("evt3", 12)])
@pytest.mark.parametrize("zero_t0", [False, True])
def test_files_written_by_faery_read_exactly(tmp_path, version, unit, zero_t0):
    """faery writes no '% end'; with absolute times the body's first byte here is '%' (TIME_HIGH 0x25); with
    ``zero_t0`` it writes '% t0' and times relative to it."""
    evt = pytest.importorskip("faery.extension").evt
    start = 0x25 << unit
    ev = make_events([1, 2, 3], [4, 5, 6], [start, start + 7, start + 5000], [1, 0, 1])
    packet = np.zeros(3, [("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")])
    packet["t"], packet["x"], packet["y"], packet["on"] = ev["t"], ev["x"], ev["y"], ev["p"]
    path = tmp_path / "faery.raw"
    with evt.Encoder(str(path), version, zero_t0, (64, 64), True) as encoder:
        encoder.write({"events": packet})
    data = path.read_bytes()
    assert b"% end" not in data and (b"% t0" in data) == zero_t0
    assert zero_t0 or data[read_header(path).body : read_header(path).body + 1] == b"%"
    assert np.array_equal(events.read(path).events, ev)


def test_t0_is_added_to_every_time_and_checked(tmp_path):
    ev = make_events([1, 2], [3, 4], [10, 20], [0, 1])
    path = tmp_path / "t0.raw"
    path.write_bytes(raw_header("2.0", extra="\n% t0 1000") + np.array(evt2_words(ev), "<u4").tobytes())
    assert events.read(path).events["t"].tolist() == [1010, 1020]
    path.write_bytes(raw_header("2.0", extra=f"\n% t0 {2**63 - 15}") + np.array(evt2_words(ev), "<u4").tobytes())
    good, err = good_before(path)
    assert "beyond int64" in str(err) and good["t"].tolist() == [2**63 - 5]


@pytest.mark.parametrize("t0", ["18446744073709551615", str(2**63), "-5", "abc", "1e6", "12 34", ""])
def test_out_of_range_or_garbage_t0_is_refused(tmp_path, t0):
    payload = raw_header("3.0", extra=f"\n% t0 {t0}") + np.array([TH3, 0x6001, 1, 0x2001], "<u2").tobytes()
    assert "t0" in str(damaged(tmp_path / "t0.raw", payload))


@pytest.mark.parametrize(
    "payload, problem",
    [
        (b"% evt 4.0\n% geometry 64x64\n", "not an EVT version"),
        (b"% evt 3.0\n% format EVT2;width=64;height=64\n", "two EVT versions"),
        (b"% evt 3.0\n% evt 2.0\n% geometry 64x64\n% end\n", "two EVT versions"),
        (b"% format EVT3;width=64;height=64\n% format EVT21;width=64;height=64\n", "two EVT versions"),
        (b"% evt 3.0\n% format EVT3;width=64;height=64\n% geometry 32x64\n", "two sensor widths"),
        (b"% evt 3.0\n% t0 5\n% t0 6\n% geometry 64x64\n", "two time offsets"),
        (b"% evt 3.0\n% end\n\x00\x00", "no sensor size"),
        (b"% evt 3.0\n% geometry 4096x64\n", "no sensor size in 1..2048"),
        (b"% a line with no end", "not ended"),
        (b"% just a comment\n", "names no format"),
        (b"% Version 2\n% Width 64\n% Height 64\n\x00\x10", "only CD events"),
        (b"% Version 2\n% Width 64\n% Height 64\n\x0c", "truncated"),
    ],
)
def test_garbage_headers_raise_format_errors(tmp_path, payload, problem):
    assert problem in str(damaged(tmp_path / "g.raw", payload))


def test_content_wins_over_a_wrong_extension(tmp_path):
    ev = simulated(n=200)
    write_prophesee(tmp_path / "a.dat", ev, SENSOR, "evt3")  # EVT 3.0 under a DAT name
    write_prophesee(tmp_path / "b.raw", ev, SENSOR, "dat")  # DAT under a RAW name
    assert events.detect_format(tmp_path / "a.dat") == "evt3" and events.detect_format(tmp_path / "b.raw") == "dat"
    assert np.array_equal(events.read(tmp_path / "a.dat").events, ev)
    assert np.array_equal(events.read(tmp_path / "b.raw").events, ev)


# --- damaged bodies -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, word", [("evt2", 4), ("evt3", 2), ("dat", 8)])
def test_truncated_files_raise_with_the_offset_after_the_good_events(tmp_path, fmt, word):
    ev = simulated(n=500)
    src = tmp_path / "src"
    write_prophesee(src, ev, SENSOR, fmt)
    data = src.read_bytes()
    err = damaged(tmp_path / "cut", data[:-1])
    assert "truncated" in str(err) and err.offset == len(data) - word
    good, _ = good_before(tmp_path / "cut")
    assert len(good) > 400 and np.array_equal(good, ev[: len(good)])


def test_off_sensor_and_out_of_order_events_raise(tmp_path):
    ev = simulated(n=300, sensor=SensorSize(1280, 720))
    path = tmp_path / "big.raw"
    write_prophesee(path, ev, (1280, 720), "evt2")
    data = (
        path.read_bytes().replace(b"width=1280;height=720", b"width=0640;height=480").replace(b"1280x720", b"640x480")
    )
    err = damaged(tmp_path / "small.raw", data)
    assert "outside the 640x480 sensor" in str(err) and err.offset is not None
    order = make_events([1, 2], [1, 1], [50, 40], [0, 1])  # TIME_HIGH equal, low bits going back
    err = damaged(tmp_path / "order.raw", evt2_bytes(order))
    assert "not in time order" in str(err)
    bad_p = dat_bytes(make_events([1, 2], [1, 1], [5, 6], [1, 3]))
    assert "outside" in str(damaged(tmp_path / "p.dat", bad_p))


@pytest.mark.parametrize("words", [1, 3, 7, 64])
def test_decoding_does_not_depend_on_where_the_chunks_of_words_end(tmp_path, monkeypatch, words):
    """The decoder's state (time base and wraps, EVT 3.0's y, TIME_LOW and vector base) carries across chunks."""
    rng = np.random.default_rng(9)
    ev = low_bits_never_fall(300, 10, start_tick=3000)
    run = make_events([100, 101, 107, 130, 131], [9] * 5, [int(ev["t"][-1]) + 5] * 5, [1] * 5)
    ev = np.concatenate([ev, run])
    sparse = make_events(
        *(rng.integers(0, 400, 200) for _ in range(2)),
        np.cumsum(rng.integers(2**21, 2**23, 200)),
        rng.integers(0, 2, 200),
    )
    wraps = simulated(n=300, start=2**32 - 10**5, max_gap=1000)
    files = {
        "evt3v.raw": (evt3_bytes(ev, vectors=True), ev),
        "evt3s.raw": (evt3_bytes(sparse), sparse),
        "evt2.raw": (evt2_bytes(ev), ev),
        "evt21.raw": (evt21_bytes(ev, legacy=True), ev),
        "wrap.dat": (dat_bytes(wraps), wraps),
    }
    assert sparse["t"][-1] >> 24 > 10
    damaged_body = (
        evt3_bytes(ev, vectors=True)[:-2] + np.array([(0b0011 << 12) | 630, (0b0100 << 12) | 0x401], "<u2").tobytes()
    )
    monkeypatch.setattr(prophesee.reader, "_CHUNK_WORDS", dict.fromkeys(WORD_BYTES, words))
    for name, (payload, want) in files.items():
        path = tmp_path / name
        path.write_bytes(payload)
        assert np.array_equal(read_chunked(path, 61), want), name
    path = tmp_path / "vector_past_edge.raw"  # x = 630 + 10 off the sensor: the same error, the same offset
    path.write_bytes(damaged_body)
    good, err = good_before(path)
    monkeypatch.undo()
    good_whole, err_whole = good_before(path)
    assert np.array_equal(good, good_whole) and err.offset == err_whole.offset and "outside" in str(err)


@pytest.mark.parametrize("fmt", ["evt2", "evt3", "dat"])
def test_long_files_are_read_in_bounded_memory(tmp_path, fmt):
    """1.5 M events (24 MB as events) streamed through the writer and the reader: the reader's peak allocation stays
    far below the file's (numpy's allocations are traced)."""
    rng = np.random.default_rng(8)
    path, t = tmp_path / "long.raw", 0
    with PropheseeWriter(path, fmt, (1280, 720)) as w:
        for _ in range(3):
            times = t + np.cumsum(rng.integers(0, 40, 500_000))
            t = int(times[-1])
            n = len(times)
            w.write(make_events(rng.integers(0, 1280, n), rng.integers(0, 720, n), times, rng.integers(0, 2, n)))
    assert t > 2**24  # EVT 3.0 wraps inside
    tracemalloc.start()
    try:
        count, last = 0, -1
        with events.reader(path) as r:
            for chunk in r.iter_chunks(50_000):
                count, last = count + len(chunk), int(chunk["t"][-1])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 1_500_000 and last == t and peak < 16 * 2**20


def test_reader_class_reports_its_format(tmp_path):
    path = tmp_path / "r.raw"
    write_prophesee(path, simulated(n=10), SENSOR, "evt3")
    with PropheseeReader(path) as r:
        assert r.format == "evt3" and r.sensor_size == SENSOR and r.t0 == 0
