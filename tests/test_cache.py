"""events.cache: build, hit, stale and corrupt detection, atomic builds, lazy per-process reading."""

from __future__ import annotations

import errno
import hashlib
import logging
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import events.cache.build as cache_build
from events.atomic import OutputError
from events.cache import CachedFrames, CacheError, FrameCache
from events.cache.read import damage_marker
from events.frames import FrameSpec, frames_from_spec, split_clips
from events.types import EVENT_DTYPE, EventFormatError, SensorSize

SPEC = FrameSpec(time_window_us=10_000, polarity="both", frames_per_clip=2)


class FakeDataset:
    """In-memory data set following the project contract; counts every sample read."""

    name = "fake"
    classes = ["left", "right", "other"]
    sensor_size = SensorSize(20, 16, 2)

    def __init__(self, root, n: int = 12, split: str = "train", seed: int = 0, n_files: int = 3):
        self.root = root
        self.split = split
        self.transform = None
        self.reads = 0
        self.fail_at = None  # index whose read raises (a crash mid-build)
        self.kill_at = None  # index whose read kills the process (SIGKILL)
        self.bad_at = None  # index whose events lie off the sensor
        self.files = [root / f"rec{k}.bin" for k in range(n_files)]
        for k, f in enumerate(self.files):
            if not f.exists():
                f.write_bytes(bytes([k]) * (100 + k))
        rng = np.random.default_rng(seed)
        self._samples = []
        for i in range(n):
            m = 0 if i == 3 else int(rng.integers(50, 400))  # sample 3 has no events
            start = int(rng.integers(0, 50_000))
            end = start + int(rng.integers(20_000, 80_000))
            ev = np.empty(m, dtype=EVENT_DTYPE)
            ev["t"] = np.sort(rng.integers(start, end, m))
            ev["x"] = rng.integers(0, 20, m)
            ev["y"] = rng.integers(0, 16, m)
            ev["p"] = rng.integers(0, 2, m)
            self._samples.append((ev, int(rng.integers(0, 3)), start, end))

    def __len__(self):
        return len(self._samples)

    def __getitem__(self, i):
        self.reads += 1
        if i == self.fail_at:
            raise RuntimeError(f"simulated crash reading sample {i}")
        if i == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        ev, label, _, _ = self._samples[i]
        if i == self.bad_at:
            ev = ev.copy()
            ev["x"][0] = 99
        return ev, label

    def source_files(self):
        return list(self.files)

    def sample_info(self, i):
        _, label, start, end = self._samples[i]
        return {
            "file": str(self.files[i % len(self.files)]),
            "index": i,
            "start_us": start,
            "end_us": end,
            "label": label,
        }


def expected(ds, i, spec=SPEC):
    ev, label, start, end = ds._samples[i]
    if spec.span == "sample":
        return frames_from_spec(ev, ds.sensor_size, spec, start_us=start, end_us=end), label
    return frames_from_spec(ev, ds.sensor_size, spec), label


def assert_matches(cf: CachedFrames, ds, spec=SPEC):
    assert len(cf) == len(ds)
    for i in range(len(ds)):
        frames, label = cf[i]
        want, want_label = expected(ds, i, spec)
        assert frames.dtype == want.dtype and frames.shape == want.shape
        np.testing.assert_array_equal(frames, want)
        assert label == want_label and cf.labels[i] == want_label
        assert cf.info(i) == ds.sample_info(i)


def tmp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def ds(tmp_path):
    (tmp_path / "data").mkdir()
    return FakeDataset(tmp_path / "data")


@pytest.fixture
def cache(tmp_path):
    return FrameCache(tmp_path / "cache")


# ---------------------------------------------------------------- build and hit


def test_build_stores_every_sample(ds, cache):
    cf = cache.get(ds, SPEC, progress=False)
    assert ds.reads == len(ds)
    assert cf.path == cache.path_for(ds, SPEC) and cf.path.name == f"fake-train-{SPEC.key()}.h5"
    assert_matches(cf, ds)
    assert cf[3][0].shape == (0, 2, 16, 20)  # the empty sample
    assert cf[-1][1] == cf[len(ds) - 1][1]
    assert cf.spec == SPEC and cf.sensor_size == SensorSize(20, 16, 2) and cf.classes == FakeDataset.classes
    assert list(cf.lengths) == [expected(ds, i)[0].shape[0] for i in range(len(ds))]
    with h5py.File(cf.path, "r") as f:
        assert f["frames"].compression == "lzf" and f["frames"].fletcher32 and f["frames"].chunks[0] >= 1
    with pytest.raises(IndexError):
        cf[len(ds)]


def test_hit_reads_no_sample(ds, cache, tmp_path):
    first = cache.get(ds, SPEC, progress=False)
    before = digest(first.path)
    ds.reads = 0
    again = FrameCache(tmp_path / "cache").get(ds, SPEC, progress=False)
    assert ds.reads == 0
    assert again.path == first.path and digest(again.path) == before
    assert_matches(again, ds)


def test_small_flushes_give_the_same_file_content(ds, cache, monkeypatch):
    monkeypatch.setattr(cache_build, "_FLUSH_BYTES", 1)  # flush after every sample
    assert_matches(cache.get(ds, SPEC, progress=False), ds)


def test_span_sample_bins_the_sample_interval(ds, cache):
    spec = FrameSpec(time_window_us=10_000, span="sample")
    cf = cache.get(ds, spec, progress=False)
    assert_matches(cf, ds, spec)
    _, _, start, end = ds._samples[3]
    assert cf[3][0].shape[0] == max((end - start - 10_000) // 10_000 + 1, 1)  # empty sample still has frames


def test_clips_are_read_per_clip(ds, cache):
    cf = cache.get(ds, SPEC, progress=False)
    clips = cf.clips()
    want = [(c, ds._samples[i][1]) for i in range(len(ds)) for c in split_clips(expected(ds, i)[0], 2)]
    assert len(clips) == len(want) > 0
    for k, (c, label) in enumerate(want):
        got, got_label = clips[k]
        np.testing.assert_array_equal(got, c)
        assert got_label == label == clips.labels[k]
    strided = cf.clips(3, stride=1)
    assert len(strided) == sum(max(t - 3 + 1, 0) for t in cf.lengths)
    with pytest.raises(ValueError, match="frames_per_clip"):
        cache.get(ds, FrameSpec(time_window_us=10_000), progress=False).clips()


# ---------------------------------------------------------------- stale keys


def test_touched_source_file_rebuilds(ds, cache, caplog):
    cache.get(ds, SPEC, progress=False)
    st = ds.files[1].stat()
    os.utime(ds.files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    ds.reads = 0
    with caplog.at_level(logging.INFO, logger="events.cache"):
        cf = cache.get(ds, SPEC, progress=False)
    assert ds.reads == len(ds)
    assert "stale" in caplog.text and str(cf.path) in caplog.text
    assert f"{ds.files[1].resolve()} changed" in caplog.text
    assert_matches(cf, ds)
    ds.reads = 0
    cache.get(ds, SPEC, progress=False)
    assert ds.reads == 0


def test_added_removed_and_resized_source_files_rebuild(ds, cache, tmp_path, caplog):
    cache.get(ds, SPEC, progress=False)
    extra = tmp_path / "data" / "rec9.bin"
    extra.write_bytes(b"x")
    ds.files.append(extra)
    with caplog.at_level(logging.INFO, logger="events.cache"):
        ds.reads = 0
        cache.get(ds, SPEC, progress=False)
        assert ds.reads == len(ds) and "added" in caplog.text
        ds.files.remove(extra)
        ds.reads = 0
        cache.get(ds, SPEC, progress=False)
        assert ds.reads == len(ds) and "removed" in caplog.text
        st = ds.files[0].stat()
        ds.files[0].write_bytes(b"longer content")
        os.utime(ds.files[0], ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, new size
        ds.reads = 0
        cache.get(ds, SPEC, progress=False)
        assert ds.reads == len(ds)


def test_changed_spec_builds_its_own_file(ds, cache):
    a = cache.get(ds, SPEC, progress=False)
    other = FrameSpec(time_window_us=10_000, polarity="merge", downsample=2, binary=True, frames_per_clip=2)
    ds.reads = 0
    b = cache.get(ds, other, progress=False)
    assert ds.reads == len(ds) and b.path != a.path
    assert b[0][0].shape[1:] == (1, 8, 10) and b[0][0].dtype == np.uint8
    assert_matches(b, ds, other)
    ds.reads = 0
    cache.get(ds, SPEC, progress=False)  # the first spec's file is still valid
    assert ds.reads == 0


def test_split_is_part_of_the_file_name(tmp_path, cache):
    (tmp_path / "data").mkdir()
    train = FakeDataset(tmp_path / "data", split="train")
    test = FakeDataset(tmp_path / "data", split="test", seed=1)
    assert cache.get(train, SPEC, progress=False).path != cache.get(test, SPEC, progress=False).path


def test_frame_cap_keeps_the_first_frames_and_is_part_of_the_key(ds, cache):
    """DVS Gesture's protocol in small: gestures binned from their start, the first ``max_frames`` frames
    kept, so at most max_frames // frames_per_clip clips a gesture; each cap (or none) has its own file."""
    uncapped = FrameSpec(time_window_us=5_000, frames_per_clip=2, span="sample")
    capped = FrameSpec(time_window_us=5_000, frames_per_clip=2, span="sample", max_frames=6)
    full = cache.get(ds, uncapped, progress=False)
    ds.reads = 0
    cf = cache.get(ds, capped, progress=False)
    assert ds.reads == len(ds) and cf.path != full.path  # not the uncapped file
    assert cf.spec == capped
    assert_matches(cf, ds, capped)
    assert (full.lengths > 6).any()  # the cap cuts real samples short
    for i in range(len(ds)):
        np.testing.assert_array_equal(cf[i][0], full[i][0][:6])
    clips = cf.clips()
    assert np.bincount(clips.sample_index, minlength=len(ds)).max() == 6 // 2
    assert len(clips) < len(full.clips())
    ds.reads = 0
    other = cache.get(
        ds, FrameSpec(time_window_us=5_000, frames_per_clip=2, span="sample", max_frames=4), progress=False
    )
    assert ds.reads == len(ds) and other.path not in (cf.path, full.path)  # another cap, another file
    assert other.lengths.max() == 4
    ds.reads = 0
    assert cache.get(ds, capped, progress=False).path == cf.path and ds.reads == 0  # each still a hit
    assert cache.get(ds, uncapped, progress=False).path == full.path and ds.reads == 0


# ---------------------------------------------------------------- corrupt files


def _garbage(path):
    path.write_bytes(b"this is not an HDF5 file" * 10)


def _truncate(path):
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)


def _drop_labels(path):
    with h5py.File(path, "a") as f:
        del f["labels"]


def _bad_version(path):
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 999


def _incomplete(path):
    with h5py.File(path, "a") as f:
        del f.attrs["complete"]


def _bad_offsets(path):
    with h5py.File(path, "a") as f:
        f["offsets"][-1] = f["offsets"][-1] + 5


def _heap_key(path):
    """The key as a variable-length string (its characters in the global heap, where libhdf5 can loop forever on
    damage): refused unread."""
    with h5py.File(path, "a") as f:
        key = f.attrs["key"].decode()
        del f.attrs["key"]
        f.attrs["key"] = key


def _heap_info(path):
    with h5py.File(path, "a") as f:
        info = [bytes(v).decode() for v in f["info"][()]]
        del f["info"]
        f.create_dataset("info", data=info, dtype=h5py.string_dtype("utf-8"))


@pytest.mark.parametrize(
    "damage,reason",
    [
        (_garbage, "cannot be read"),
        (_truncate, "cannot be read"),
        (_drop_labels, "missing dataset"),
        (_bad_version, "format version 999"),
        (_incomplete, "not marked complete"),
        (_bad_offsets, "offsets"),
        (_heap_key, "attribute 'key' is stored as a variable-length string"),
        (_heap_info, "info is stored as object, not as fixed-length text"),
        (lambda p: p.write_bytes(b""), "cannot be read"),
    ],
)
def test_corrupt_file_is_detected_and_rebuilt(ds, cache, caplog, damage, reason):
    path = cache.get(ds, SPEC, progress=False).path
    damage(path)
    ds.reads = 0
    with caplog.at_level(logging.WARNING, logger="events.cache"):
        cf = cache.get(ds, SPEC, progress=False)
    assert ds.reads == len(ds)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(path) in warnings[0] and "corrupt" in warnings[0]
    assert reason in warnings[0]
    assert_matches(cf, ds)


def _flip_byte(path, dataset, coord):
    """Invert a byte in the middle of the chunk of ``dataset`` that holds element ``coord``."""
    with h5py.File(path, "r") as f:
        info = f[dataset].id.get_chunk_info_by_coord(coord)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + info.size // 2)
        b = fh.read(1)
        fh.seek(info.byte_offset + info.size // 2)
        fh.write(bytes([b[0] ^ 0xFF]))


def _flip_chunk(path, first_frame):
    _flip_byte(path, "frames", (first_frame, 0, 0, 0))


def test_damaged_chunk_is_binned_again_on_read_and_repaired_by_the_next_get(ds, cache, caplog, monkeypatch):
    monkeypatch.setattr(cache_build, "_CHUNK_BYTES", 1)  # one frame per chunk: many chunks
    path = cache.get(ds, SPEC, progress=False).path
    with h5py.File(path, "r") as f:
        assert f["frames"].chunks[0] == 1 and f["frames"].shape[0] > 3
        offsets = f["offsets"][()]
    _flip_chunk(path, 1)  # the chunk of frame 1: neither the first nor the last frame
    sample = int(np.searchsorted(offsets, 1, side="right") - 1)
    with pytest.raises(CacheError, match=str(path)):
        CachedFrames(path)[sample]  # no source to bin it from
    ds.reads = 0
    cf = cache.get(ds, SPEC, progress=False)  # the quick check reads the first and last frame only
    assert ds.reads == 0
    with caplog.at_level(logging.WARNING, logger="events.cache"):
        assert_matches(cf, ds)  # the damaged sample binned again from its source, in memory
        assert_matches(cf, ds)
    assert ds.reads == 1 and len(caplog.records) == 1
    assert f"{path}: frames of sample {sample} failed their checksum" in caplog.text
    assert damage_marker(path).exists()
    caplog.clear()
    ds.reads = 0
    with caplog.at_level(logging.WARNING, logger="events.cache"):
        fixed = cache.get(ds, SPEC, progress=False)  # the marker: every chunk checked, the file repaired
    assert ds.reads == 1 and len(caplog.records) == 1
    assert "damaged frame cache (frame chunk(s) starting at frame 1 fail" in caplog.text
    assert "binning 1 of 12 samples again" in caplog.text
    assert not damage_marker(path).exists() and tmp_files(path.parent) == []
    assert_matches(fixed, ds)
    ds.reads = 0
    assert_matches(cache.get(ds, SPEC, progress=False, verify=True), ds)
    assert ds.reads == 0


def test_flipped_label_and_frame_bytes_are_repaired_from_the_source(ds, cache, caplog, monkeypatch):
    monkeypatch.setattr(cache_build, "_CHUNK_BYTES", 1)
    monkeypatch.setattr(cache_build, "_LABEL_CHUNK", 4)  # labels of samples 0-3, 4-7, 8-11
    path = cache.get(ds, SPEC, progress=False).path
    with h5py.File(path, "r") as f:
        assert f["labels"].fletcher32 and f["offsets"].fletcher32
        last = f["frames"].shape[0] - 1
        offsets = f["offsets"][()]
    _flip_byte(path, "labels", (5,))
    _flip_chunk(path, last)  # read by the quick check
    with pytest.raises(CacheError, match=f"{path}: not a usable frame cache"):
        CachedFrames(path)  # labels are checked when the file is opened
    ds.reads = 0
    with caplog.at_level(logging.WARNING, logger="events.cache"):
        cf = cache.get(ds, SPEC, progress=False)
    rebinned = {4, 5, 6, 7, int(np.searchsorted(offsets, last, side="right") - 1)}
    assert ds.reads == len(rebinned)
    assert len(caplog.records) == 1 and "labels fail their checksum" in caplog.text
    assert f"binning {len(rebinned)} of 12 samples again from the source" in caplog.text
    assert_matches(cf, ds)


@pytest.mark.parametrize(
    "version,before", [(1, "before labels were checksummed"), (2, "before its text was stored as fixed-length strings")]
)
def test_old_cache_formats_are_stale(ds, cache, caplog, version, before):
    path = cache.get(ds, SPEC, progress=False).path
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = version
    ds.reads = 0
    with caplog.at_level(logging.INFO, logger="events.cache"):
        assert_matches(cache.get(ds, SPEC, progress=False), ds)
    assert ds.reads == len(ds) and f"stale frame cache (format version {version}, {before})" in caplog.text


def test_cache_text_is_stored_inline_and_a_heap_string_is_refused_unread(ds, cache):
    """Nothing of a cache lives in the file's global heap (``events.h5attrs``); CachedFrames refuses a spec stored
    there without reading it."""
    path = cache.get(ds, SPEC, progress=False).path
    assert b"GCOL" not in path.read_bytes()
    with h5py.File(path, "a") as f:
        spec = f.attrs["spec"].decode()
        del f.attrs["spec"]
        f.attrs["spec"] = spec
    with pytest.raises(CacheError, match=f"{path}: .*attribute 'spec' is stored as a variable-length string"):
        CachedFrames(path)


def test_cached_frames_refuses_a_broken_file(tmp_path, ds, cache):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"nope")
    with pytest.raises(CacheError, match="x.h5"):
        CachedFrames(bad)
    path = cache.get(ds, SPEC, progress=False).path
    _bad_offsets(path)
    with pytest.raises(CacheError, match=f"{path}: offsets do not partition"):
        CachedFrames(path)


# ---------------------------------------------------------------- atomic builds


def test_crash_mid_build_keeps_old_cache_and_leaves_no_file(ds, cache):
    path = cache.get(ds, SPEC, progress=False).path
    old = digest(path)
    os.utime(ds.files[0], ns=(0, 1_000_000_000))  # stale now
    ds.fail_at = 5
    with pytest.raises(RuntimeError, match="simulated crash"):
        cache.get(ds, SPEC, progress=False)
    assert digest(path) == old
    assert tmp_files(path.parent) == []
    ds.fail_at = None
    ds.reads = 0
    assert_matches(cache.get(ds, SPEC, progress=False), ds)
    assert ds.reads == len(ds)


def test_crash_on_first_build_leaves_nothing(ds, cache):
    ds.fail_at = 7
    with pytest.raises(RuntimeError):
        cache.get(ds, SPEC, progress=False)
    assert not cache.path_for(ds, SPEC).exists()
    assert tmp_files(cache.cache_dir) == []


def _full_disk_after(monkeypatch, n_bytes):
    """Writes that reach beyond byte ``n_bytes`` of a file fail as on a full disk."""
    pwrite = os.pwrite

    def refuse(fd, data, offset):
        if offset + len(data) > n_bytes:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", refuse)


@pytest.mark.parametrize("n_bytes", [0, 3000, 20_000])
def test_full_disk_while_binning_names_the_cache_and_leaves_no_partial_file(ds, cache, monkeypatch, n_bytes):
    path = cache.get(ds, SPEC, progress=False).path
    old = digest(path)
    os.utime(ds.files[0], ns=(0, 1_000_000_000))  # stale now
    with monkeypatch.context() as m:
        _full_disk_after(m, n_bytes)
        with pytest.raises(OutputError) as err:
            cache.get(ds, SPEC, progress=False)
    assert (
        str(err.value)
        == f"could not write {path}: No space left on device (the disk is full: free some space or write elsewhere)"
    )
    assert err.value.errno == errno.ENOSPC and digest(path) == old and tmp_files(path.parent) == []
    path.unlink()
    with monkeypatch.context() as m:
        _full_disk_after(m, n_bytes)
        with pytest.raises(OutputError):
            cache.get(ds, SPEC, progress=False)
    assert list(cache.cache_dir.iterdir()) == []
    assert_matches(cache.get(ds, SPEC, progress=False), ds)  # room again: the build succeeds


def test_full_disk_in_another_process_is_one_clean_line(ds, cache, tmp_path):
    """A real refusal (a file size limit: EFBIG) mid-build: h5py never sees a failed write, so the process reports
    the one line and exits normally (HDF5 left after a failed write prints errors and can crash the process)."""
    script = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_cache import SPEC, FakeDataset
from pathlib import Path
from events.cache import FrameCache
ds = FakeDataset(Path({str(ds.root)!r}))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))
try:
    FrameCache({str(cache.cache_dir)!r}).get(ds, SPEC, progress=False)
except OSError as err:
    print(err)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    path = cache.path_for(ds, SPEC)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith(f"could not write {path}: File too large (") and result.stdout.count("\n") == 1
    assert list(cache.cache_dir.iterdir()) == []


def test_bad_sample_names_the_sample_and_leaves_nothing(ds, cache):
    ds.bad_at = 4
    with pytest.raises(EventFormatError) as err:
        cache.get(ds, SPEC, progress=False)
    assert "sample 4 of fake/train" in "\n".join(getattr(err.value, "__notes__", []))
    assert list(cache.cache_dir.iterdir()) == []


def _build_and_get_killed(ds, cache):
    ds.kill_at = 6
    cache.get(ds, SPEC, progress=False)


def test_killed_build_is_never_taken_as_valid(ds, cache):
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_build_and_get_killed, args=(ds, cache))
    proc.start()
    proc.join(60)
    assert proc.exitcode == -signal.SIGKILL
    path = cache.path_for(ds, SPEC)
    assert not path.exists()
    assert len(tmp_files(cache.cache_dir)) == 1  # the dead build's temporary file
    ds.reads = 0
    assert_matches(cache.get(ds, SPEC, progress=False), ds)
    assert ds.reads == len(ds)
    assert tmp_files(cache.cache_dir) == []  # removed: its process is gone


# ---------------------------------------------------------------- readers in other processes


def _read_all(cf):
    return [(cf[i][0].sum(dtype=np.int64), cf[i][1], cf.info(i)["index"]) for i in range(len(cf))]


def test_forked_workers_open_their_own_handle(ds, cache):
    cf = cache.get(ds, SPEC, progress=False)
    want = _read_all(cf)  # the parent's handle is open now
    assert cf._pid == os.getpid()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.SimpleQueue()
    # with fork, Process arguments are inherited as they are (open handle included), not pickled
    procs = [ctx.Process(target=_read_in_child, args=(cf, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    for child_pid, handle_pid, data in results:
        assert child_pid != os.getpid() and handle_pid == child_pid
        assert data == want
    with ctx.Pool(2) as pool:  # pickled to the workers: the handle is dropped
        assert pool.map(_read_all, [cf, cf]) == [want, want]
    clone = pickle.loads(pickle.dumps(cf))
    assert clone._file is None and _read_all(clone) == want
    assert _read_all(cf) == want  # the parent's own handle still works
    cf.close()
    assert _read_all(cf) == want


def _read_in_child(cf, queue):
    data = _read_all(cf)
    queue.put((os.getpid(), cf._pid, data))


def test_data_set_with_transform_is_refused(ds, cache):
    ds.transform = lambda ev: ev
    with pytest.raises(ValueError, match="transform"):
        cache.get(ds, SPEC, progress=False)
