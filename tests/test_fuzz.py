"""Mutation fuzzing of the readers: every damaged file either raises EventFormatError or reads as
a valid recording (events on the sensor, polarity 0/1). Seeded, a few hundred files in all."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from events.formats.aedat3 import Aedat3Reader, write_aedat3
from events.formats.hdf5 import write_hdf5
from events.formats.nmnist import write_nmnist
from events.formats.prophesee import write_prophesee
from events.io import read
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, make_events


def mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One of: truncation at a random offset, 1-8 bit flips, or a run of 1-64 random bytes."""
    buf = bytearray(data)
    kind = rng.integers(3)
    if kind == 0:
        return bytes(buf[: rng.integers(0, len(buf))])
    if kind == 1:
        for _ in range(rng.integers(1, 9)):
            i = int(rng.integers(len(buf)))
            buf[i] ^= 1 << int(rng.integers(8))
        return bytes(buf)
    n = int(rng.integers(1, 65))
    i = int(rng.integers(0, max(1, len(buf) - n)))
    buf[i : i + n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    return bytes(buf[: len(data)])


def check_outcome(path) -> str:
    """'error' for EventFormatError, 'ok' for a valid recording; anything else fails the test."""
    try:
        rec = read(path)
    except EventFormatError as err:
        assert err.path is not None and str(path) in str(err)
        return "error"
    ev = rec.events
    assert ev.dtype == EVENT_DTYPE
    w, h, _ = rec.sensor_size
    assert w > 0 and h > 0
    if len(ev):
        assert ev["x"].min() >= 0 and ev["x"].max() < w
        assert ev["y"].min() >= 0 and ev["y"].max() < h
        assert set(np.unique(ev["p"]).tolist()) <= {0, 1}
    return "ok"


def fuzz(tmp_path, name, data, n, seed, extra=None):
    rng = np.random.default_rng(seed)
    outcomes = {"error": 0, "ok": 0}
    for k in range(n):
        path = tmp_path / f"{k:04d}_{name}"
        path.write_bytes(mutate(data, rng))
        outcomes[check_outcome(path)] += 1
        if extra is not None:
            extra(path)
        path.unlink()
    assert outcomes["error"] > 0  # the mutations do reach the error paths
    return outcomes


def small_events(n, w, h, seed, t_max=2**31 + 10**6):
    rng = np.random.default_rng(seed)
    return make_events(
        rng.integers(0, w, n), rng.integers(0, h, n), np.sort(rng.integers(0, t_max, n)), rng.integers(0, 2, n)
    )


@pytest.mark.timeout(120)
def test_fuzz_nmnist(tmp_path):
    src = tmp_path / "src.bin"
    write_nmnist(src, small_events(300, 34, 34, 0, t_max=20_000_000))  # with overflow markers
    fuzz(tmp_path, "m.bin", src.read_bytes(), 300, seed=1)


@pytest.mark.timeout(120)
def test_fuzz_aedat3_read_and_packet_index(tmp_path):
    src = tmp_path / "src.aedat"
    write_aedat3(src, small_events(400, 128, 128, 1), packet_events=50)

    def index_and_range(path):
        try:
            r = Aedat3Reader(path)
            idx = r.packet_index()
            ev = r.read_time_range(int(idx.t_min.min(initial=0)), int(idx.t_max.max(initial=0)) + 1)
        except EventFormatError:
            return
        assert len(ev) == idx.n_events
        if len(ev):
            assert ev["x"].max() < r.sensor_size.width and ev["y"].max() < r.sensor_size.height

    fuzz(tmp_path, "m.aedat", src.read_bytes(), 300, seed=2, extra=index_and_range)


@pytest.mark.timeout(120)
def test_fuzz_hdf5(tmp_path):
    src = tmp_path / "src.h5"
    write_hdf5(src, small_events(200, 64, 48, 3), SensorSize(64, 48, 2))
    fuzz(tmp_path, "m.h5", src.read_bytes(), 200, seed=3)


@pytest.mark.timeout(120)
def test_fuzz_gesture_npy(tmp_path):
    rng = np.random.default_rng(4)
    arr = np.stack(
        [
            rng.integers(0, 128, 100),
            rng.integers(0, 128, 100),
            rng.integers(0, 2, 100),
            np.sort(rng.integers(0, 6000, 100)),
        ],
        axis=1,
    ).astype(np.float64)
    src = tmp_path / "src.npy"
    np.save(src, arr)
    fuzz(tmp_path, "m.npy", src.read_bytes(), 150, seed=4)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fmt", ["evt2", "evt3", "dat", "evt21"])
def test_fuzz_prophesee(tmp_path, fmt):
    ev = small_events(300, 320, 240, 7, t_max=10**6)
    src = tmp_path / "src"
    if fmt == "evt21":
        from test_prophesee import evt21_bytes

        src.write_bytes(evt21_bytes(ev, (320, 240)))
    else:
        write_prophesee(src, ev, (320, 240), fmt)
    fuzz(tmp_path, f"m.{fmt}", src.read_bytes(), 150, seed=8)


@pytest.mark.timeout(120)
def test_fuzz_aedat4_real_sample(real_data, tmp_path):
    data = (real_data / "davis346_sample.aedat4").read_bytes()
    fuzz(tmp_path, "m.aedat4", data, 80, seed=5)


@pytest.mark.timeout(120)
def test_fuzz_aedat4_length_fields(real_data, tmp_path):
    """The IOHeader and packet length fields, set to random, huge, zero or near-miss values: each must be an
    EventFormatError naming the file (or read validly), never a 4 GiB allocation by the decoder."""
    data = (real_data / "davis346_sample.aedat4").read_bytes()
    fields = [14]  # the IOHeader length, then each packet's (up to the file data table)
    off = 18 + struct.unpack_from("<I", data, 14)[0]
    table = 945243  # this file's data table position (its IOHeader says so)
    while off < table:
        fields.append(off + 4)
        off += 8 + struct.unpack_from("<I", data, off + 4)[0]
    assert off == table and len(fields) == 119
    rng = np.random.default_rng(6)
    outcomes = {"error": 0, "ok": 0}
    for k in range(120):
        at = int(fields[rng.integers(len(fields))])
        old = struct.unpack_from("<I", data, at)[0]
        value = [0xFFFFFFFF, 0, int(rng.integers(0, 1 << 32)), max(0, old + int(rng.integers(-8, 9))), len(data)][k % 5]
        buf = bytearray(data)
        struct.pack_into("<I", buf, at, value)
        path = tmp_path / f"{k:04d}_len.aedat4"
        path.write_bytes(bytes(buf))
        outcomes[check_outcome(path)] += 1
        path.unlink()
    assert outcomes["error"] > 0


@pytest.mark.timeout(120)
def test_fuzz_frame_cache(tmp_path):
    """Damaged frame cache files (h5py raises RuntimeError for some damage, a link may name a committed datatype):
    CachedFrames and every sample and info read either work or raise CacheError naming the file."""
    from test_cache import SPEC, FakeDataset

    from events.cache import CachedFrames, CacheError, FrameCache

    ds = FakeDataset(tmp_path)
    data = FrameCache(tmp_path / "cache").get(ds, SPEC, progress=False).path.read_bytes()
    rng = np.random.default_rng(3)
    outcomes = {"error": 0, "ok": 0}
    for k in range(200):
        path = tmp_path / f"{k:04d}.h5"
        path.write_bytes(mutate(data, rng))
        try:
            with CachedFrames(path) as cf:
                for i in range(len(cf)):
                    cf[i], cf.info(i)
            outcomes["ok"] += 1
        except CacheError as err:
            assert str(path) in str(err)
            outcomes["error"] += 1
        path.unlink()
    assert outcomes["error"] > 0 and outcomes["ok"] > 0
