"""Event file formats: writers round-trip, readers match tonic / hand-built bytes, bad input is
reported with the file and byte offset."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import events
from events.formats.aedat3 import Aedat3Reader, write_aedat3
from events.formats.hdf5 import write_hdf5
from events.formats.nmnist import write_nmnist
from events.io import FORMATS, detect_format, read, reader
from events.stream import read_windows
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, make_events

REPO = Path(__file__).resolve().parents[1]


def random_events(n, width, height, t_max, seed=0):
    rng = np.random.default_rng(seed)
    return make_events(
        rng.integers(0, width, n), rng.integers(0, height, n), np.sort(rng.integers(0, t_max, n)), rng.integers(0, 2, n)
    )


def tonic_io():
    return pytest.importorskip("tonic.io", reason="tonic not importable: no oracle")


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def run_isolated(script: str, *args, timeout: float = 120) -> str:
    """Run ``script`` in a fresh Python with ``args``: a hang is killed after ``timeout`` s, a crash is a
    non-zero status; returns its stdout."""
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert out.returncode == 0, f"status {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


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


AEDAT4_XML = (
    '<dv version="2.0"><node name="outInfo" path="/mainloop/Recorder/outInfo/">'
    '<node name="0" path="/mainloop/Recorder/outInfo/0/"><attr key="typeIdentifier" type="string">EVTS</attr>'
    '<node name="info" path="/mainloop/Recorder/outInfo/0/info/"><attr key="sizeX" type="int">32</attr>'
    '<attr key="sizeY" type="int">24</attr></node></node></node></dv>'
)
AEDAT4_PACKETS_AT = 14 + 4 + 44 + len(AEDAT4_XML) + 1  # magic line, IOHeader length, IOHeader


def aedat4_ioheader(compression=0, data_table=-1, description=AEDAT4_XML) -> bytes:
    """An IOHeader FlatBuffer: root offset, 'IOHE', a vtable at 8 (fields at +4, +8, +16), the table at 20,
    the description string at 40."""
    desc = description.encode()
    vtable = struct.pack("<HHHHH", 10, 20, 4, 8, 16) + b"\0\0"
    table = struct.pack("<iiqI", 12, compression, data_table, 4)
    return struct.pack("<I", 20) + b"IOHE" + vtable + table + struct.pack("<I", len(desc)) + desc + b"\0"


def aedat4_events_packet(events) -> bytes:
    """A size-prefixed EventPacket FlatBuffer ('EVTS') of (t, x, y, on) rows: 16-byte structs from byte 32."""
    body = b"EVTS" + struct.pack("<HHHH", 6, 8, 4, 0) + struct.pack("<iI", 8, 4) + struct.pack("<I", len(events))
    body += b"".join(struct.pack("<qhh?xxx", t, x, y, on) for t, x, y, on in events)
    buf = struct.pack("<I", 16) + body
    return struct.pack("<I", len(buf)) + buf


def aedat4_bytes(packets, data_table=None, tail=b"", compression=0) -> bytes:
    """A 32 x 24 AEDAT 4 file of uncompressed packets ``(stream id, payload)`` (a payload may be an int: a bare
    length field and nothing after it); ``data_table=True`` puts the file data table (``tail``) after them."""
    body = b""
    for stream, payload in packets:
        body += (
            struct.pack("<II", stream, payload)
            if isinstance(payload, int)
            else struct.pack("<II", stream, len(payload)) + payload
        )
    table = AEDAT4_PACKETS_AT + len(body) if data_table is True else -1 if data_table is None else data_table
    header = aedat4_ioheader(compression, table)
    assert len(header) + 18 == AEDAT4_PACKETS_AT
    return b"#!AER-DAT4.0\r\n" + struct.pack("<I", len(header)) + header + body + tail


A4_EVENTS = [[(100, 1, 2, True), (150, 31, 23, False)], [(200, 0, 0, True)]]


@pytest.mark.parametrize("data_table", [None, True])
def test_aedat4_hand_built_file_reads_to_its_end_or_data_table(tmp_path, data_table):
    path = tmp_path / "hand.aedat4"
    tail = b"\xff" * 40 if data_table else b""  # the data table is not a packet: never read as one
    path.write_bytes(aedat4_bytes([(0, aedat4_events_packet(e)) for e in A4_EVENTS], data_table, tail))
    rec = read(path)
    assert rec.sensor_size == SensorSize(32, 24, 2)
    np.testing.assert_array_equal(rec.events, make_events([1, 31, 0], [2, 23, 0], [100, 150, 200], [1, 0, 1]))


AEDAT4_LIMIT_SCRIPT = """
import json, resource, sys
import events
import events.formats.aedat4  # the decoder's library, loaded before the limit
from events.types import EventFormatError
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.RLIM_INFINITY))  # 1 GiB more than now
got = 0
try:
    with events.reader(sys.argv[1]) as r:
        for chunk in r.iter_chunks():
            got += len(chunk)
except EventFormatError as err:
    print(json.dumps({"events": got, "path": err.path, "offset": err.offset, "message": str(err)}))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc to set the memory limit")
def test_aedat4_huge_packet_length_is_refused_before_the_decoder_allocates(tmp_path):
    # A length field of 0xFFFFFFFF makes the aedat decoder allocate 4 GiB before reading; under a memory
    # limit that aborts the process (SIGABRT), which Python cannot catch. The length is checked first.
    path = tmp_path / "huge.aedat4"
    good = aedat4_events_packet(A4_EVENTS[0])
    path.write_bytes(aedat4_bytes([(0, good), (0, 0xFFFFFFFF)]))
    result = json.loads(run_isolated(AEDAT4_LIMIT_SCRIPT, path, timeout=60))
    assert result["events"] == 2  # the good packet's events came first
    assert result["path"] == str(path) and result["offset"] == AEDAT4_PACKETS_AT + 8 + len(good)
    assert "packet 1 (stream 0) declares 4294967295 bytes, but only 0 are left" in result["message"]


@pytest.mark.parametrize(
    "patch, offset, problem",
    [
        (lambda b: struct.pack_into("<I", b, 14, 0xFFFFFFFF), 14, "IOHeader length field says 4294967295 bytes"),
        (lambda b: struct.pack_into("<I", b, 18, 0x7FFFFFF0), 18, "bad IOHeader: root table"),
        (lambda b: struct.pack_into("<I", b, 18 + 36, 1 << 30), 18, "bad IOHeader: description"),
        (lambda b: struct.pack_into("<i", b, 18 + 24, 7), 18, "unknown compression 7"),
        (lambda b: struct.pack_into("<q", b, 18 + 28, 1 << 40), 18, "data table at byte 1099511627776"),
        (lambda b: struct.pack_into("<q", b, 18 + 28, AEDAT4_PACKETS_AT + 20), AEDAT4_PACKETS_AT, "runs into the file"),
        (lambda b: b.extend(b"\0\0\0\0\0"), "end", "inside a packet header \\(5 of 8 bytes\\)"),
        (lambda b: b.__delitem__(slice(-1, None)), "second", "declares 48 bytes, but only 47 are left"),
    ],
    ids=["ioheader-length", "root-offset", "description", "compression", "data-table", "into-table", "tail", "cut"],
)
def test_aedat4_bad_framing_is_refused_with_offset(tmp_path, patch, offset, problem):
    raw = bytearray(aedat4_bytes([(0, aedat4_events_packet(e)) for e in A4_EVENTS]))
    named = {"second": AEDAT4_PACKETS_AT + 8 + len(aedat4_events_packet(A4_EVENTS[0])), "end": len(raw)}
    patch(raw)
    path = tmp_path / "bad.aedat4"
    path.write_bytes(bytes(raw))
    with pytest.raises(EventFormatError, match=problem) as err:
        read(path)
    assert err.value.path == str(path)
    assert err.value.offset == named.get(offset, offset)


LZ4_MAGIC, ZSTD_MAGIC = struct.pack("<I", 0x184D2204), struct.pack("<I", 0xFD2FB528)


def zstd_raw_frame(data: bytes) -> bytes:
    """A Zstd frame holding ``data`` (< 256 bytes) in one raw block, with its content size."""
    return ZSTD_MAGIC + bytes([0x20, len(data)]) + (1 | len(data) << 3).to_bytes(3, "little") + data


def test_aedat4_zstd_packets_within_the_bound_are_decoded(tmp_path):
    path = tmp_path / "zstd.aedat4"
    path.write_bytes(aedat4_bytes([(0, zstd_raw_frame(aedat4_events_packet(e))) for e in A4_EVENTS], compression=3))
    np.testing.assert_array_equal(read(path).events["t"], [100, 150, 200])


@pytest.mark.parametrize(
    "compression, payload, problem",
    [
        (  # an LZ4 frame declaring 1 TiB of content
            1,
            LZ4_MAGIC + bytes([0x68, 0x40]) + struct.pack("<Q", 1 << 40) + b"\0" + struct.pack("<I", 0),
            "may decompress to 1099511627776 bytes, more than the 268435456 allowed",
        ),
        (  # 100 one-byte blocks, each of which may grow to 4 MiB
            2,
            LZ4_MAGIC + bytes([0x60, 0x70, 0]) + (struct.pack("<I", 1) + b"x") * 100 + struct.pack("<I", 0),
            "may decompress to 419430400 bytes",
        ),
        (  # 2100 RLE blocks of 128 KiB each, 4 bytes apiece
            3,
            ZSTD_MAGIC
            + bytes([0, 0])
            + ((1 << 1 | (128 << 10) << 3).to_bytes(3, "little") + b"x") * 2100
            + b"\x01\0\0",
            "may decompress to 275251200 bytes",
        ),
        (  # a Zstd frame declaring 2**62 bytes
            4,
            ZSTD_MAGIC + bytes([0xE0]) + struct.pack("<Q", 1 << 62) + b"\x01\0\0",
            "may decompress to 4611686018427387904 bytes",
        ),
        (1, ZSTD_MAGIC + b"\0" * 8, "is no LZ4 data the decoder can read: magic number 0xfd2fb528"),
        (3, zstd_raw_frame(b"x" * 40)[:-1], "is no Zstd data the decoder can read: its frames run past its 48 bytes"),
        (3, ZSTD_MAGIC + bytes([0x08]), "sets the reserved bit"),
    ],
    ids=["lz4-content-size", "lz4-blocks", "zstd-rle-blocks", "zstd-content-size", "magic", "cut", "reserved"],
)
def test_aedat4_packet_that_may_decompress_too_far_is_refused_unread(tmp_path, compression, payload, problem):
    path = tmp_path / "bomb.aedat4"
    good = zstd_raw_frame(aedat4_events_packet(A4_EVENTS[0]))
    first = [(0, good)] if compression >= 3 else []
    path.write_bytes(aedat4_bytes([*first, (0, payload)], compression=compression))
    got = []
    with pytest.raises(EventFormatError, match=problem) as err:
        for chunk in reader(path).iter_chunks():
            got.append(chunk)
    assert err.value.path == str(path)
    assert err.value.offset == AEDAT4_PACKETS_AT + sum(8 + len(p) for _, p in first)
    assert sum(map(len, got)) == (2 if first else 0)  # the good packet's events came first


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
        (np.array([[1, 1, 1, -np.inf]], dtype=np.float16), "t is not a time in 0..9007199254740 ms \\(float16"),
        (np.array([[1, 1, 1, 1.0], [1, 1, 1, 1e13]]), "row 1: t is not a time in 0..9007199254740 ms \\(float64"),
        (np.array([[1, 1, 1, -1]], dtype=np.int64), "t is not a time in 0..9223372036854775 ms \\(int64"),
        (np.array([[1, 1, 1, 2**63 - 1]], dtype=np.int64), "t is not a time"),
        (np.array(["a", "b", "c", "d"]).reshape(1, 4), "dtype"),
    ],
)
def test_gesture_npy_bad_content(tmp_path, arr, problem):
    path = tmp_path / "bad.npy"
    np.save(path, arr)
    with pytest.raises(EventFormatError, match=problem) as err:
        read(path)
    assert err.value.path == str(path) and err.value.offset is not None


def test_gesture_npy_float16_times_are_converted_in_float64(tmp_path):
    """float16 ``t * 1000`` overflows to inf past 65.5 ms (and inf to int64 is -2**63): converted exactly instead."""
    arr = np.array([[1, 2, 0, 0.5], [3, 4, 1, 100.0], [5, 6, 1, 60000.0]], dtype=np.float16)
    path = tmp_path / "half.npy"
    np.save(path, arr)
    np.testing.assert_array_equal(read(path).events["t"], [500, 100_000, 60_000_000])


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


def _with_heap_marker(path):
    """Rewrite an event file's marker as a variable-length string (as files written before the fixed-length marker
    hold it: its characters in the file's global heap); returns the offset of that heap object's size field."""
    import h5py

    with h5py.File(path, "r+") as f:
        del f.attrs["format"]
        f.attrs["format"] = "nsm-events"  # h5py stores a Python str as a variable-length string
    data = path.read_bytes()
    heap = data.index(b"GCOL")  # the collection: signature, version, 3 reserved, size (8); then the objects
    size_field = heap + 16 + 8  # first object: index (2), references (2), reserved (4), size (8)
    assert int.from_bytes(data[size_field : size_field + 8], "little") == len("nsm-events")
    return size_field


def test_hdf5_marker_is_a_fixed_length_string_and_a_heap_marker_still_reads(tmp_path):
    import h5py

    ev = random_events(300, 64, 48, 10**6, seed=4)
    path = tmp_path / "ev.h5"
    write_hdf5(path, ev, SensorSize(64, 48, 2))
    with h5py.File(path, "r") as f:
        assert not f.attrs.get_id("format").get_type().is_variable_str()
    assert b"GCOL" not in path.read_bytes()  # nothing of the file lives in a global heap
    _with_heap_marker(path)
    np.testing.assert_array_equal(read(path).events, ev)


@pytest.mark.timeout(120)
def test_hdf5_damaged_global_heap_is_an_error_within_the_time_limit_not_a_hang(tmp_path, monkeypatch):
    """Mutation fuzzing found it: a heap object's size shrunk from 10 to 8 leaves a free-space object of size 0
    behind it, on which libhdf5 loops forever; the marker's read by a child interpreter runs out of time."""
    from events import h5attrs

    path = tmp_path / "ev.h5"
    write_hdf5(path, random_events(200, 64, 48, 10**6, seed=3), SensorSize(64, 48, 2))
    size_field = _with_heap_marker(path)
    data = bytearray(path.read_bytes())
    data[size_field] = 8
    path.write_bytes(bytes(data))
    monkeypatch.setattr(h5attrs, "HEAP_READ_TIMEOUT_S", 5.0)
    with pytest.raises(EventFormatError, match=r"attribute 'format' .* could not be read within 5 s") as err:
        read(path)
    assert str(path) in str(err.value)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_heap_readers_child_dies_with_its_caller():
    """A child looping in libhdf5 answers no signal but SIGKILL: when the process that started it is killed, the
    kernel kills it too (no orphan left spinning)."""
    import time

    starter = "from events import h5attrs\nh5attrs.read_in_child('while True: pass', '/dev/null')\n"
    caller = subprocess.Popen([sys.executable, "-c", starter])
    try:
        deadline = time.monotonic() + 30
        children = []
        while not children and time.monotonic() < deadline:
            time.sleep(0.2)
            children = subprocess.run(["pgrep", "-P", str(caller.pid)], capture_output=True, text=True).stdout.split()
        assert children, "the reader child did not start"
    finally:
        caller.kill()
        caller.wait()
    time.sleep(1.0)

    def running(pid: str) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
        except FileNotFoundError:
            return False

    assert not [pid for pid in children if running(pid)]


def test_hdf5_sensor_attribute_stored_as_a_string_is_refused_unread(tmp_path):
    import h5py

    path = tmp_path / "ev.h5"
    write_hdf5(path, random_events(10, 64, 48, 10**6, seed=2), SensorSize(64, 48, 2))
    with h5py.File(path, "r+") as f:
        del f.attrs["width"]
        f.attrs["width"] = "64"  # a variable-length string: its heap is never read
    with pytest.raises(EventFormatError, match=r"attribute width='<not an integer>' must be an integer"):
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


@pytest.mark.parametrize(
    "row, value, problem",
    [
        (40, -5, "event 40: t=-5 out of range"),
        (40, 10, "event 40: t=10 is earlier than the event before it"),
        (30, 10, "event 30: t=10 is earlier than the event before it"),  # the first of a batch, against the last
    ],
)
def test_hdf5_bad_timestamps_name_the_event_and_offset(tmp_path, row, value, problem):
    import h5py

    ev = random_events(100, 64, 64, 10**6)
    ev["t"] += 1000
    path = tmp_path / "bad.h5"
    write_hdf5(path, ev, (64, 64))
    with h5py.File(path, "r+") as f:
        f["events/t"][row] = value
        offset = f["events/t"].id.get_offset() + row * 8
    got = []
    with pytest.raises(EventFormatError, match=problem) as err:
        for chunk in reader(path).iter_chunks(max_events=30):
            got.append(chunk)
    assert err.value.path == str(path) and err.value.offset == offset
    np.testing.assert_array_equal(np.concatenate(got), ev[:row])


def test_hdf5_uint64_times_beyond_int64_are_refused(tmp_path):
    import h5py

    path = tmp_path / "u64.h5"
    write_hdf5(path, random_events(3, 8, 8, 100), (8, 8))
    with h5py.File(path, "r+") as f:
        del f["events/t"]
        f["events/t"] = np.array([1, 2, 2**63], dtype=np.uint64)
    with pytest.raises(EventFormatError, match="event 2: t=9223372036854775808 out of range"):
        read(path)


def column_elsewhere(path, how, other):
    """Replace ``path``'s ``/events/t`` by one whose data are in file ``other`` (``how``: a virtual dataset mapping
    ``other``'s ``/events/t``, external raw storage in ``other``, or an external link to it), or make it or the group
    a soft link."""
    import h5py

    with h5py.File(path, "r+") as f:
        t = f["events/t"][...]
        del f["events/t"]
        if how == "virtual":
            layout = h5py.VirtualLayout(shape=t.shape, dtype=t.dtype)
            layout[:] = h5py.VirtualSource(str(other), "events/t", shape=t.shape)
            f["events"].create_virtual_dataset("t", layout, fillvalue=0)
        elif how == "external storage":
            Path(other).write_bytes(t.astype("<i8").tobytes())
            f["events"].create_dataset("t", shape=t.shape, dtype="<i8", external=[(str(other), 0, t.nbytes)])
        elif how == "external link":
            f["events/t"] = h5py.ExternalLink(str(other), "/events/t")
        elif how == "soft link":
            f["events/t"] = h5py.SoftLink("/events/x")
        elif how == "group link":
            f["events/t"] = t
            f.move("events", "stored")
            f["events"] = h5py.ExternalLink(str(other), "/events")


@pytest.mark.parametrize("how", ["virtual", "external storage", "external link", "soft link", "group link"])
def test_hdf5_columns_whose_data_live_in_other_files_are_refused(tmp_path, how):
    """An event file holds its own data: a column mapped from, stored in or linked to another file is refused
    whether that file is there (it would be read) or not (a virtual dataset would read as fill values)."""
    ev = random_events(50, 16, 16, 10**6)
    other = tmp_path / "other.h5"
    write_hdf5(other, ev, (16, 16))
    path = tmp_path / "ev.h5"
    write_hdf5(path, ev, (16, 16))
    column_elsewhere(path, how, other)
    where = "/events" if how == "group link" else "/events/t"
    problem = {
        "virtual": f"'{where}' is a virtual dataset, whose data come from other files ({other}:events/t)",
        "external storage": f"'{where}' keeps its data in other files ({other})",
        "external link": f"'{where}' is an external link to {other}:/events/t",
        "soft link": f"'{where}' is a link to /events/x, not a dataset of its own",
        "group link": f"'{where}' is an external link to {other}:/events",
    }[how]
    for present in (True, False):
        if not present:
            other.unlink()
        with pytest.raises(EventFormatError) as err:
            read(path)
        assert str(err.value).startswith(f"{path}: {problem}"), str(err.value)


def test_hdf5_writer_refuses_what_the_reader_would(tmp_path):
    with pytest.raises(ValueError, match="timestamps must be >= 0 and in time order"):
        write_hdf5(tmp_path / "a.h5", make_events([0, 1], [0, 0], [5, 4], [0, 1]), (8, 8))
    with pytest.raises(ValueError, match="timestamps must be >= 0 and in time order"):
        write_hdf5(tmp_path / "a.h5", make_events([0], [0], [-1], [0]), (8, 8))
    assert list(tmp_path.iterdir()) == []


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


# ---------------------------------------------------------------- special files and bad settings

SPECIAL_SCRIPT = """
import sys
from events.io import FORMATS, read
from events.types import EventFormatError
path, problem = sys.argv[1], sys.argv[2]
for fmt in (None, *FORMATS):
    try:
        read(path, format=fmt)
    except EventFormatError as err:
        assert err.path == path and problem in err.problem, (fmt, str(err))
        print(fmt, "refused")
    else:
        raise SystemExit(f"{fmt}: accepted")
"""


@pytest.mark.parametrize(
    "kind, problem",
    [
        ("fifo", "is a FIFO (named pipe), not a regular file"),
        ("directory", "is a directory, not a regular file"),
        ("symlink loop", "symbolic link loop"),
        ("device", "is a character device, not a regular file"),
    ],
)
def test_special_file_is_refused_by_every_reader_before_open(tmp_path, kind, problem):
    # Run apart, with a timeout: a FIFO opened for reading blocks until a writer comes, i.e. forever.
    path = tmp_path / "rec.bin"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "symlink loop":
        path.symlink_to(path.name)
    else:
        path.symlink_to(os.devnull)  # followed, like any link
    out = run_isolated(SPECIAL_SCRIPT, path, problem, timeout=60)
    assert out.split("\n")[:-1] == [f"{fmt} refused" for fmt in (None, *FORMATS)]


def test_missing_and_dangling_paths_are_file_not_found(tmp_path):
    (tmp_path / "dangling.bin").symlink_to("nowhere.bin")
    with pytest.raises(FileNotFoundError, match="dangling symbolic link"):
        read(tmp_path / "dangling.bin")
    for fmt in FORMATS:
        with pytest.raises(FileNotFoundError, match="no such event file"):
            reader(tmp_path / "missing.bin", format=fmt)


def test_bad_chunk_size_names_the_setting_and_file_at_once(tmp_path):
    path = tmp_path / "a.bin"
    write_nmnist(path, random_events(20, 34, 34, 1000))
    for bad in (0, -5, 2.5, True, None):
        with pytest.raises(ValueError, match="max_events \\(events per chunk\\) must be an integer >= 1") as err:
            reader(path).iter_chunks(bad)  # raised by the call, not by the first batch
        assert str(path) in str(err.value)
    with pytest.raises(ValueError, match="chunk_events \\(events per chunk\\) must be") as err:
        next(read_windows(path, 1000, 1000, chunk_events=0))
    assert str(path) in str(err.value)


def test_stream_command_names_chunk_events_option(tmp_path, capsys):
    from pipelines import cli

    path = tmp_path / "a.bin"
    write_nmnist(path, random_events(20, 34, 34, 1000))
    argv = ["stream", "--checkpoint", str(tmp_path / "none.pt"), "--events", str(path), "--chunk-events", "0"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "nsm stream: error: --chunk-events must be an integer >= 1 (events read per chunk), got 0"
