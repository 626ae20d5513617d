"""Event file formats: writers round-trip, readers match tonic / hand-built bytes, bad input is
reported with the file and byte offset."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

import events
from events.formats.aedat3 import Aedat3Reader, write_aedat3
from events.formats.hdf5 import write_hdf5
from events.formats.nmnist import write_nmnist
from events.io import detect_format, read, reader
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, make_events


def random_events(n, width, height, t_max, seed=0):
    rng = np.random.default_rng(seed)
    return make_events(
        rng.integers(0, width, n), rng.integers(0, height, n), np.sort(rng.integers(0, t_max, n)), rng.integers(0, 2, n)
    )


def tonic_io():
    return pytest.importorskip("tonic.io", reason="tonic not importable: no oracle")


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------- N-MNIST


def test_nmnist_real_sample_matches_tonic(real_data):
    tio = tonic_io()
    path = real_data / "nmnist_sample.bin"
    rec = read(path)
    ref = tio.read_mnist_file(str(path), dtype=tio.events_struct)
    assert rec.sensor_size == SensorSize(34, 34, 2)
    assert len(rec) == len(ref) == 4325
    for f in "xytp":
        np.testing.assert_array_equal(rec.events[f], ref[f].astype(rec.events[f].dtype))
    assert rec.events["t"].min() == 654 and rec.events["t"].max() == 311175
    assert int((rec.events["p"] == 1).sum()) == 2145


def test_nmnist_generated_with_overflow_markers_matches_tonic(tmp_path):
    tio = tonic_io()
    ev = random_events(3000, 34, 34, 12_000_000, seed=1)  # beyond 2**23 us: needs overflow markers
    path = tmp_path / "gen.bin"
    write_nmnist(path, ev)
    n_records = path.stat().st_size // 5
    assert n_records > len(ev)  # markers were written
    ref = tio.read_mnist_file(str(path), dtype=EVENT_DTYPE)
    np.testing.assert_array_equal(read(path).events, ref)


def test_nmnist_round_trip_exact(tmp_path):
    ev = random_events(5000, 34, 34, 40_000_000, seed=2)
    path = tmp_path / "rt.bin"
    write_nmnist(path, ev)
    rec = read(path)
    np.testing.assert_array_equal(rec.events, ev)
    assert rec.events.dtype == EVENT_DTYPE
    with reader(path) as r:
        chunks = list(r.iter_chunks(max_events=777))
    assert max(len(c) for c in chunks) <= 777
    np.testing.assert_array_equal(np.concatenate(chunks), ev)
    assert no_temp_files(tmp_path)


def test_nmnist_partial_record_names_offset(tmp_path):
    ev = random_events(100, 34, 34, 100_000)
    path = tmp_path / "cut.bin"
    write_nmnist(path, ev)
    path.write_bytes(path.read_bytes() + b"\x01\x02")
    with pytest.raises(EventFormatError) as err:
        read(path)
    assert err.value.offset == 500 and err.value.path == str(path)
    assert str(path) in str(err.value) and "at byte 500" in str(err.value)
    # the streaming reader hands over every good event first
    got = []
    with pytest.raises(EventFormatError):
        for chunk in reader(path).iter_chunks(max_events=30):
            got.append(chunk)
    np.testing.assert_array_equal(np.concatenate(got), ev)


def test_nmnist_out_of_sensor_record_names_offset(tmp_path):
    ev = random_events(50, 34, 34, 100_000)
    path = tmp_path / "bad.bin"
    write_nmnist(path, ev)
    raw = bytearray(path.read_bytes())
    raw[20 * 5 + 1] = 34  # y of record 20
    path.write_bytes(bytes(raw))
    got = []
    with pytest.raises(EventFormatError) as err:
        for chunk in reader(path).iter_chunks():
            got.append(chunk)
    assert err.value.offset == 100 and "y=34" in err.value.problem
    np.testing.assert_array_equal(np.concatenate(got), ev[:20])


def test_nmnist_writer_rejects_off_sensor_events_and_keeps_old_file(tmp_path):
    path = tmp_path / "keep.bin"
    good = random_events(10, 34, 34, 1000)
    write_nmnist(path, good)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_nmnist(path, make_events([40], [0], [0], [1]))
    assert path.read_bytes() == before and no_temp_files(tmp_path)


# ---------------------------------------------------------------- AEDAT 3.1

HEADER = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"


def pol(x, y, p, ts, valid=1):
    return struct.pack("<Ii", (x << 17) | (y << 2) | (p << 1) | valid, ts)


def packet(typ, body, number, size=8, overflow=0, capacity=None, valid=None, ts_offset=4):
    capacity = number if capacity is None else capacity
    valid = number if valid is None else valid
    return struct.pack("<hhiiiiii", typ, 1, size, ts_offset, overflow, capacity, number, valid) + body


def test_aedat3_hand_built_packets(tmp_path):
    p1 = packet(1, pol(1, 2, 1, 10) + pol(3, 4, 0, 11, valid=0) + pol(127, 127, 0, 12), 3, capacity=100, valid=2)
    imu = packet(3, b"\xff" * 72, 2, size=36, ts_offset=32)  # IMU6 events: skipped
    special = packet(0, struct.pack("<Ii", 0xFFFFFFFF, 5), 1)  # special event: skipped
    p2 = packet(1, pol(5, 6, 1, 0x7FFFFFF0) + pol(0, 0, 1, 3), 2, overflow=0) + packet(
        1, pol(7, 8, 0, 3), 1, overflow=1
    )  # time wraps: overflow counter goes to 1
    empty = packet(1, b"", 0, capacity=8)
    path = tmp_path / "hand.aedat"
    path.write_bytes(HEADER + p1 + imu + special + empty + p2)
    rec = read(path)
    assert rec.sensor_size == SensorSize(128, 128, 2)
    expect = make_events([1, 127, 5, 0, 7], [2, 127, 6, 0, 8], [10, 12, 0x7FFFFFF0, 3, (1 << 31) | 3], [1, 0, 1, 1, 0])
    np.testing.assert_array_equal(rec.events, expect)


def test_aedat3_round_trip_with_overflow_and_sensor_header(tmp_path):
    ev = random_events(4000, 346, 260, 3 * 2**31, seed=3)
    path = tmp_path / "rt.aedat"
    write_aedat3(path, ev, sensor_size=SensorSize(346, 260, 2), packet_events=300)
    assert detect_format(path) == "aedat3"
    rec = read(path)
    assert rec.sensor_size == SensorSize(346, 260, 2)
    np.testing.assert_array_equal(rec.events, ev)
    chunks = list(reader(path).iter_chunks(max_events=1000))
    assert [len(c) for c in chunks] == [1000] * 4
    assert no_temp_files(tmp_path)


@pytest.mark.parametrize(
    "header, problem",
    [
        (b"#!AER-DAT3.1\r\n#no end\r\n", "END-HEADER"),
        (b"#!AER-DAT3.1\r\nplain text\r\n#!END-HEADER\r\n", "does not start"),
    ],
)
def test_aedat3_bad_header(tmp_path, header, problem):
    path = tmp_path / "h.aedat"
    path.write_bytes(header)
    with pytest.raises(EventFormatError, match=problem) as err:
        read(path)
    assert err.value.path == str(path) and err.value.offset is not None


@pytest.mark.parametrize(
    "pkt, problem",
    [
        (packet(1, pol(1, 1, 1, 1) * 2, 2, size=4), "eventSize 4"),
        (packet(1, pol(1, 1, 1, 1), 1, ts_offset=0), "eventTSOffset 0"),
        (packet(1, pol(1, 1, 1, 1), 2, capacity=2), "truncated packet"),
        (packet(1, pol(1, 1, 1, 1), 1, capacity=0), "eventCapacity"),
        (packet(1, pol(1, 1, 1, 1), 1, valid=2), "eventValid"),
        (packet(1, pol(1, 1, 1, 1), 1, overflow=-1), "eventTSOverflow"),
        (packet(-3, pol(1, 1, 1, 1), 1), "negative eventType"),
        (packet(1, pol(1, 1, 1, 1), 1)[:20], "truncated packet header"),
    ],
)
def test_aedat3_bad_packet_header_names_offset(tmp_path, pkt, problem):
    good = packet(1, pol(9, 9, 1, 5), 1)
    path = tmp_path / "p.aedat"
    path.write_bytes(HEADER + good + pkt)
    got = []
    with pytest.raises(EventFormatError, match=problem) as err:
        for chunk in reader(path).iter_chunks():
            got.append(chunk)
    assert err.value.offset == len(HEADER) + len(good)
    np.testing.assert_array_equal(np.concatenate(got), make_events([9], [9], [5], [1]))


@pytest.mark.parametrize(
    "bad_event, problem",
    [
        (pol(128, 0, 1, 7), "x=128"),
        (pol(0, 200, 1, 7), "y=200"),
        (pol(0, 0, 1, -5), "negative timestamp"),
    ],
)
def test_aedat3_bad_event_names_offset(tmp_path, bad_event, problem):
    body = pol(1, 1, 1, 1) + pol(2, 2, 0, 2) + bad_event
    path = tmp_path / "e.aedat"
    path.write_bytes(HEADER + packet(1, body, 3))
    with pytest.raises(EventFormatError, match=problem) as err:
        read(path)
    assert err.value.offset == len(HEADER) + 28 + 16


def test_aedat3_invalid_off_sensor_event_is_just_skipped(tmp_path):
    path = tmp_path / "i.aedat"
    path.write_bytes(HEADER + packet(1, pol(1, 1, 1, 1) + pol(500, 500, 1, 2, valid=0), 2, valid=1))
    np.testing.assert_array_equal(read(path).events, make_events([1], [1], [1], [1]))


def test_aedat3_corruption_mid_file_yields_good_chunks_first(tmp_path):
    ev = random_events(2000, 128, 128, 10**6, seed=4)
    path = tmp_path / "mid.aedat"
    write_aedat3(path, ev, packet_events=500)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])  # last packet truncated
    got = []
    with pytest.raises(EventFormatError, match="truncated packet") as err:
        for chunk in reader(path).iter_chunks(max_events=200):
            got.append(chunk)
    assert err.value.offset == len(raw) - (28 + 500 * 8)
    np.testing.assert_array_equal(np.concatenate(got), ev[:1500])


def test_aedat3_time_range_read_equals_filtering_full_read(tmp_path):
    ev = random_events(20000, 128, 128, 2**31 + 5_000_000, seed=5)
    ev["t"][10000:] += 2**31 - 4_000_000  # a jump across the overflow boundary
    ev = ev[np.argsort(ev["t"], kind="stable")]
    path = tmp_path / "range.aedat"
    write_aedat3(path, ev, packet_events=256)
    r = Aedat3Reader(path)
    index = r.packet_index()
    assert index.n_events == len(ev) and len(index.offsets) > 70
    rng = np.random.default_rng(6)
    t = ev["t"]
    ranges = [
        (int(t[0]), int(t[-1]) + 1),
        (int(t[500]), int(t[500])),
        (int(t[123]), int(t[9000])),
        (-10, 0),
        (int(t[-1]) + 1, int(t[-1]) + 100),
        (2**31 - 10, 2**31 + 2_000_000),
    ]
    ranges += [tuple(sorted(rng.integers(0, int(t[-1]) + 2, 2).tolist())) for _ in range(10)]
    for a, b in ranges:
        want = ev[(t >= a) & (t < b)]
        np.testing.assert_array_equal(r.read_time_range(a, b), want)


def test_aedat3_time_range_decodes_only_overlapping_packets(tmp_path, monkeypatch):
    import events.formats.aedat3 as a3

    ev = random_events(10000, 128, 128, 10**7, seed=7)
    path = tmp_path / "few.aedat"
    write_aedat3(path, ev, packet_events=100)
    r = Aedat3Reader(path)
    r.packet_index()
    decoded = []
    original = a3._decode_polarity

    def spy(buf, *args):
        decoded.append(len(buf) // 8)
        return original(buf, *args)

    monkeypatch.setattr(a3, "_decode_polarity", spy)
    got = r.read_time_range(int(ev["t"][5000]), int(ev["t"][5300]))
    assert len(got) == 300
    assert sum(decoded) <= 500  # at most the 4-5 packets that meet the interval, of 100 packets


# ---------------------------------------------------------------- AEDAT 4


def test_aedat4_real_sample(real_data):
    path = real_data / "davis346_sample.aedat4"
    assert detect_format(path) == "aedat4"
    rec = read(path)
    assert len(rec) == 111954 and rec.sensor_size == SensorSize(320, 240, 2)
    assert rec.events["x"].max() == 319 and rec.events["y"].max() == 239
    assert 0.58e6 < rec.duration_us < 0.6e6
    with reader(path) as r:
        chunks = list(r.iter_chunks(max_events=10000))
    assert max(len(c) for c in chunks) <= 10000
    np.testing.assert_array_equal(np.concatenate(chunks), rec.events)
    try:
        import tonic.io as tio
    except Exception:  # tonic is only an oracle here
        return
    ref = tio.read_aedat4(str(path))
    for ours, theirs in (("x", "x"), ("y", "y"), ("t", "t"), ("p", "on")):
        np.testing.assert_array_equal(rec.events[ours], ref[theirs].astype(np.int64))


def test_aedat4_truncated_copy_raises_format_error(real_data, tmp_path):
    path = tmp_path / "cut.aedat4"
    path.write_bytes((real_data / "davis346_sample.aedat4").read_bytes()[:300_000])
    with pytest.raises(EventFormatError) as err:
        read(path)
    assert err.value.path == str(path)


# ---------------------------------------------------------------- tonic DVS Gesture .npy


def test_gesture_npy_float_ms_to_us(tmp_path):
    arr = np.array([[1, 2, 0, 0.5], [127, 0, 1, 1.234], [5, 6, 1, 2000.0]], dtype=np.float64)
    path = tmp_path / "0.npy"
    np.save(path, arr)
    assert detect_format(path) == "gesture_npy"
    rec = read(path)
    assert rec.sensor_size == SensorSize(128, 128, 2)
    np.testing.assert_array_equal(rec.events, make_events([1, 127, 5], [2, 0, 6], [500, 1234, 2_000_000], [0, 1, 1]))


def test_gesture_npy_int_chunks_and_fortran_order(tmp_path):
    rng = np.random.default_rng(8)
    n = 1000
    arr = np.stack(
        [rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n), np.sort(rng.integers(0, 6000, n))],
        axis=1,
    ).astype(np.int32)
    expect = make_events(arr[:, 0], arr[:, 1], arr[:, 3].astype(np.int64) * 1000, arr[:, 2])
    for name, a in (("c.npy", arr), ("f.npy", np.asfortranarray(arr))):
        np.save(tmp_path / name, a)
        chunks = list(reader(tmp_path / name).iter_chunks(max_events=300))
        assert [len(c) for c in chunks] == [300, 300, 300, 100]
        np.testing.assert_array_equal(np.concatenate(chunks), expect)


@pytest.mark.parametrize(
    "arr, problem",
    [
        (np.zeros((3, 3)), "shape"),
        (np.array([[1, 1, 2, 5.0]]), "p is not"),
        (np.array([[1, 1, 1, 5.0], [1.5, 1, 1, 6.0]]), "x is not"),
        (np.array([[1, 1, 1, np.nan]]), "t is not"),
        (np.array(["a", "b", "c", "d"]).reshape(1, 4), "dtype"),
    ],
)
def test_gesture_npy_bad_content(tmp_path, arr, problem):
    path = tmp_path / "bad.npy"
    np.save(path, arr)
    with pytest.raises(EventFormatError, match=problem) as err:
        read(path)
    assert err.value.path == str(path) and err.value.offset is not None


def test_gesture_npy_bad_row_offset_and_truncation(tmp_path):
    arr = np.array([[1, 1, 1, 5.0], [1, 1, 1, 6.0], [1, 300, 1, 7.0]])
    path = tmp_path / "row.npy"
    np.save(path, arr)
    data_offset = path.stat().st_size - arr.nbytes
    with pytest.raises(EventFormatError) as err:
        read(path)
    assert err.value.offset == data_offset + (2 * 4 + 1) * 8
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(EventFormatError, match="header describes"):
        read(path)


# ---------------------------------------------------------------- project HDF5


def test_hdf5_round_trip_and_chunks(tmp_path):
    ev = random_events(5000, 200, 100, 10**9, seed=9)
    path = tmp_path / "ev.h5"
    write_hdf5(path, ev, SensorSize(200, 100, 2))
    assert detect_format(path) == "hdf5"
    with reader(path) as r:
        assert r.sensor_size == SensorSize(200, 100, 2) and r.format == "hdf5"
        chunks = list(r.iter_chunks(max_events=2048))
    assert [len(c) for c in chunks] == [2048, 2048, 904]
    np.testing.assert_array_equal(np.concatenate(chunks), ev)
    np.testing.assert_array_equal(read(path).events, ev)
    empty = tmp_path / "empty.h5"
    write_hdf5(empty, ev[:0], (10, 10))
    assert len(read(empty)) == 0 and read(empty).sensor_size == SensorSize(10, 10, 2)


def test_hdf5_without_marker_is_rejected(tmp_path):
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("frames", data=np.zeros(3))
    with pytest.raises(EventFormatError, match="not a project event file"):
        read(path)


def test_hdf5_out_of_range_value_names_offset(tmp_path):
    import h5py

    ev = random_events(100, 64, 64, 10**6)
    path = tmp_path / "bad.h5"
    write_hdf5(path, ev, (64, 64))
    with h5py.File(path, "r+") as f:
        f["events/y"][40] = 64
        offset = f["events/y"].id.get_offset() + 40 * 2
    got = []
    with pytest.raises(EventFormatError, match="y=64") as err:
        for chunk in reader(path).iter_chunks(max_events=30):
            got.append(chunk)
    assert err.value.offset == offset
    np.testing.assert_array_equal(np.concatenate(got), ev[:40])


def test_hdf5_writer_is_atomic_on_failure(tmp_path):
    path = tmp_path / "keep.h5"
    write_hdf5(path, random_events(10, 8, 8, 100), (8, 8))
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_hdf5(path, make_events([8], [0], [0], [0]), (8, 8))
    assert path.read_bytes() == before and no_temp_files(tmp_path)


# ---------------------------------------------------------------- detection and the public entry points


def test_detect_format_and_public_names(tmp_path):
    ev = random_events(20, 34, 34, 1000)
    write_nmnist(tmp_path / "a.bin", ev)
    write_aedat3(tmp_path / "a.aedat", ev)
    write_hdf5(tmp_path / "a.h5", ev, (34, 34))
    np.save(tmp_path / "a.npy", np.zeros((2, 4)))
    expect = {"a.bin": "nmnist", "a.aedat": "aedat3", "a.h5": "hdf5", "a.npy": "gesture_npy"}
    for name, fmt in expect.items():
        assert detect_format(tmp_path / name) == fmt
        with events.reader(tmp_path / name) as r:
            assert r.format == fmt and r.path == tmp_path / name
        rec = events.read(tmp_path / name)
        assert rec.path == str(tmp_path / name) and rec.meta["format"] == fmt
    # content wins over the name
    shutil.copy(tmp_path / "a.h5", tmp_path / "disguised.bin")
    assert detect_format(tmp_path / "disguised.bin") == "hdf5"


def test_unknown_and_unsupported_files(tmp_path):
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(EventFormatError, match="unrecognised") as err:
        read(tmp_path / "x.txt")
    assert err.value.offset == 0 and err.value.path == str(tmp_path / "x.txt")
    (tmp_path / "old.aedat").write_bytes(b"#!AER-DAT2.0\r\n")
    with pytest.raises(EventFormatError, match="2.0"):
        read(tmp_path / "old.aedat")
    with pytest.raises(FileNotFoundError):
        read(tmp_path / "missing.bin")
    with pytest.raises(ValueError):
        list(reader(tmp_path / "old.aedat", format="nmnist").iter_chunks(max_events=0))


def test_writes_leave_usual_permissions(tmp_path):
    path = tmp_path / "perm.aedat"
    write_aedat3(path, random_events(5, 128, 128, 100))
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_empty_recordings_round_trip_but_empty_files_are_errors(tmp_path):
    none = make_events([], [], [], [])
    write_nmnist(tmp_path / "none.bin", none)
    assert (tmp_path / "none.bin").stat().st_size == 5  # one overflow marker, never a 0-byte file
    write_aedat3(tmp_path / "none.aedat", none)
    write_hdf5(tmp_path / "none.h5", none, (34, 34))
    for name in ("none.bin", "none.aedat", "none.h5"):
        rec = read(tmp_path / name)
        assert len(rec) == 0 and rec.events.dtype == EVENT_DTYPE
    for name in ("zero.bin", "zero.aedat"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(EventFormatError, match="empty file") as err:
            read(tmp_path / name)
        assert err.value.offset == 0
    with pytest.raises(EventFormatError, match="no N-MNIST records"):  # format forced: the reader checks too
        read(tmp_path / "zero.bin", format="nmnist")
