"""Offline data sets on tiny layouts written in tmp_path with the project's own writers."""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import events
from events.datasets import DVSGESTURE_URL, MAX_MEMBER_BYTES, NMNIST, NMNIST_URL, DatasetNotFoundError, DVSGesture
from events.formats.aedat3 import write_aedat3
from events.formats.nmnist import write_nmnist
from events.io import read
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, make_events

REPO = Path(__file__).resolve().parents[1]


def run_isolated(script: str, *args, timeout: float = 120) -> str:
    """Run ``script`` in a fresh Python with ``args``: a hang is killed after ``timeout`` s; returns its stdout."""
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )
    assert out.returncode == 0, f"status {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def random_events(n, width, height, t0, t1, seed):
    rng = np.random.default_rng(seed)
    return make_events(
        rng.integers(0, width, n), rng.integers(0, height, n), np.sort(rng.integers(t0, t1, n)), rng.integers(0, 2, n)
    )


# ---------------------------------------------------------------- N-MNIST


@pytest.fixture
def nmnist_root(tmp_path):
    """Train: digits 0, 3, 7 (two files each but 3 has one); Test: digit 5."""
    root = tmp_path / "nmnist"
    expected = {}
    seed = 0
    for split, digits in (("Train", {0: 2, 3: 1, 7: 2}), ("Test", {5: 2})):
        for d, count in digits.items():
            for k in range(count):
                seed += 1
                path = root / split / str(d) / f"{10 - k:05d}.bin"
                path.parent.mkdir(parents=True, exist_ok=True)
                ev = random_events(50 + seed, 34, 34, 0, 300_000, seed)
                write_nmnist(path, ev)
                expected[(split, d, path.name)] = ev
    (root / "Train" / "README").write_text("not a sample")  # ignored: not a digit folder
    return root, expected


def test_nmnist_folder_layout(nmnist_root):
    root, expected = nmnist_root
    ds = NMNIST(root)
    assert (ds.name, ds.split, ds.sensor_size) == ("nmnist", "train", SensorSize(34, 34, 2))
    assert ds.classes == [str(d) for d in range(10)] and len(ds) == 5
    labels = [ds.sample_info(i)["label"] for i in range(len(ds))]
    assert labels == [0, 0, 3, 7, 7]
    names = [Path(ds.sample_info(i)["file"]).name for i in range(len(ds))]
    assert names == ["00009.bin", "00010.bin", "00010.bin", "00009.bin", "00010.bin"]  # sorted
    for i in range(len(ds)):
        ev, label = ds[i]
        info = ds.sample_info(i)
        assert label == info["label"] and ev.dtype == EVENT_DTYPE
        np.testing.assert_array_equal(ev, expected[("Train", label, Path(info["file"]).name)])
    assert sorted(ds.source_files()) == sorted(Path(ds.sample_info(i)["file"]) for i in range(len(ds)))
    np.testing.assert_array_equal(ds[-1][0], ds[4][0])
    with pytest.raises(IndexError):
        ds[5]
    test = NMNIST(root, train=False, transform=lambda e: e[:10])
    assert test.split == "test" and len(test) == 2
    ev, label = test[0]
    assert label == 5 and len(ev) == 10


def test_nmnist_zip_layout_equals_folder_layout(nmnist_root, tmp_path):
    root, _ = nmnist_root
    zroot = tmp_path / "zipped"
    zroot.mkdir()
    with zipfile.ZipFile(zroot / "Train.zip", "w") as zf:
        for p in sorted((root / "Train").rglob("*.bin"), reverse=True):  # stored out of order
            zf.write(p, p.relative_to(root).as_posix())
        zf.writestr("__MACOSX/Train/0/._00009.bin", b"junk")
    folder, zipped = NMNIST(root), NMNIST(zroot)
    assert len(zipped) == len(folder)
    assert zipped.source_files() == [zroot / "Train.zip"]
    for i in range(len(folder)):
        (a, la), (b, lb) = folder[i], zipped[i]
        assert la == lb
        np.testing.assert_array_equal(a, b)
        assert zipped.sample_info(i)["member"].endswith(Path(folder.sample_info(i)["file"]).name)
    # a pickled copy (as sent to DataLoader workers) opens its own handle
    clone = pickle.loads(pickle.dumps(zipped))
    np.testing.assert_array_equal(clone[2][0], folder[2][0])


def test_nmnist_corrupt_zip_member_names_member_and_offset(nmnist_root, tmp_path):
    root, _ = nmnist_root
    zroot = tmp_path / "zbad"
    zroot.mkdir()
    with zipfile.ZipFile(zroot / "Train.zip", "w") as zf:
        zf.writestr("Train/1/00001.bin", b"\x00" * 12)  # 2.4 records
    ds = NMNIST(zroot)
    with pytest.raises(EventFormatError) as err:
        ds[0]
    assert err.value.offset == 10 and "Train.zip:Train/1/00001.bin" in str(err.value)


def one_member_zip(path: Path, data: bytes, name="Train/1/00001.bin"):
    """Write a Train.zip holding one deflated member; returns the byte offsets of its local and central headers."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED)
    raw = path.read_bytes()
    return raw.index(b"PK\x03\x04"), raw.index(b"PK\x01\x02")


def patch_member(path: Path, local: int, central: int, field: str, value: int):
    """Set one field of the member in both its local header and the central directory."""
    at = {"flags": (6, 8, "<H"), "method": (8, 10, "<H"), "crc": (14, 16, "<I"), "size": (22, 24, "<I")}[field]
    raw = bytearray(path.read_bytes())
    struct.pack_into(at[2], raw, local + at[0], value)
    struct.pack_into(at[2], raw, central + at[1], value)
    path.write_bytes(bytes(raw))


def test_nmnist_zip_member_declared_huge_is_refused_before_reading(tmp_path):
    local, central = one_member_zip(tmp_path / "Train.zip", b"\x00\x00\x00\x00\x00" * 10)
    patch_member(tmp_path / "Train.zip", local, central, "size", 0x7FFFFFF0)
    ds = NMNIST(tmp_path)
    with pytest.raises(
        EventFormatError, match=f"declares 2147483632 bytes uncompressed, more than the {MAX_MEMBER_BYTES}"
    ):
        ds[0]


def test_nmnist_zip_member_inflating_beyond_its_declared_size_is_refused_unread(tmp_path):
    # 32 MiB of zeros deflate to 32 kB; the member then claims 1000 bytes (with the true CRC, or one forged for
    # the first 1000 bytes: either way it is refused after one byte more than declared, never read whole)
    bomb = bytes(32 << 20)
    local, central = one_member_zip(tmp_path / "Train.zip", bomb)
    patch_member(tmp_path / "Train.zip", local, central, "size", 1000)
    ds = NMNIST(tmp_path)
    for crc in (None, zipfile.crc32(bomb[:1000])):
        if crc is not None:
            patch_member(tmp_path / "Train.zip", local, central, "crc", crc)
        tracemalloc.start()
        try:
            with pytest.raises(EventFormatError, match="inflates beyond its declared 1000 bytes") as err:
                ds[0]
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert err.value.path == f"{tmp_path / 'Train.zip'}:Train/1/00001.bin"
        assert peak < 4 << 20


@pytest.mark.parametrize(
    "field, value, problem",
    [
        ("method", 9, "compression method 9"),  # Deflate64, which zipfile cannot read
        ("flags", 1, "encrypted"),
        ("crc", 0x12345678, "fails its CRC-32 check"),
        ("size", 51, "ends after 50 of its declared 51 bytes"),
        ("size", 49, "inflates beyond its declared 49 bytes"),
        ("damage", 0, "cannot read archive member"),
    ],
)
def test_nmnist_bad_zip_member_is_refused_naming_it(tmp_path, field, value, problem):
    data = b"\x01\x02\x00\x00\x10" * 10
    local, central = one_member_zip(tmp_path / "Train.zip", data)
    if field == "damage":  # deflate data of an invalid block type
        raw = bytearray((tmp_path / "Train.zip").read_bytes())
        start = local + 30 + len("Train/1/00001.bin")
        raw[start : start + 4] = b"\xff\xff\xff\xff"
        (tmp_path / "Train.zip").write_bytes(bytes(raw))
    else:
        patch_member(tmp_path / "Train.zip", local, central, field, value)
    ds = NMNIST(tmp_path)
    with pytest.raises(EventFormatError, match=problem) as err:
        ds[0]
    assert err.value.path == f"{tmp_path / 'Train.zip'}:Train/1/00001.bin"


def test_nmnist_missing_or_empty_raises_dataset_not_found(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        NMNIST(tmp_path / "nowhere")
    msg = str(err.value)
    assert NMNIST_URL in msg and "Train/<digit>/<id>.bin" in msg and "Train.zip" in msg
    assert isinstance(err.value, FileNotFoundError)
    (tmp_path / "empty" / "Test" / "4").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match="no <digit>/<id>.bin"):
        NMNIST(tmp_path / "empty", train=False)
    assert events.DatasetNotFoundError is DatasetNotFoundError


# ---------------------------------------------------------------- DVS Gesture, original release

HEADER = "class,startTime_usec,endTime_usec\n"


def make_gesture_root(root: Path, labels: dict[str, str], train: list[str], test: list[str], seed=0):
    """Write one AEDAT 3.1 recording (events over 0..10 s, the first at 0 and the last at 9 999 999 µs, so that
    its time span is [0, 10 s)) and its labels CSV per entry of ``labels``."""
    root.mkdir(parents=True, exist_ok=True)
    recs = {}
    for k, (stem, csv) in enumerate(sorted(labels.items())):
        ev = random_events(3000, 128, 128, 0, 10_000_000, seed + k)
        ev["t"][0], ev["t"][-1] = 0, 9_999_999
        write_aedat3(root / f"{stem}.aedat", ev, packet_events=64)
        (root / f"{stem}_labels.csv").write_text(csv)
        recs[stem] = ev
    (root / "trials_to_train.txt").write_text("".join(f"{s}.aedat\n" for s in train))
    (root / "trials_to_test.txt").write_text("".join(f"{s}.aedat\r\n" for s in test) + "\n")
    return recs


@pytest.fixture
def gesture_root(tmp_path):
    labels = {
        "user02_led": HEADER + "3,1000000,2500000\n1,4000000,5000000\n",
        "user01_fluorescent": HEADER + "11,0,1000000\n2,2000000,3000000\n5,6000000,9999999\n",
        "user24_natural": HEADER + "7,500000,700000\n",
    }
    root = tmp_path / "DvsGesture"
    recs = make_gesture_root(root, labels, ["user02_led", "user01_fluorescent"], ["user24_natural"])
    return root, recs


def test_dvsgesture_original_layout_samples(gesture_root):
    root, recs = gesture_root
    ds = DVSGesture(root)
    assert (ds.name, ds.split, ds.sensor_size) == ("dvsgesture", "train", SensorSize(128, 128, 2))
    assert ds.classes[0] == "hand_clapping" and ds.classes[10] == "other_gestures" and len(ds.classes) == 11
    assert len(ds) == 5
    infos = [ds.sample_info(i) for i in range(len(ds))]
    assert [(i["user"], i["lighting"], i["label"]) for i in infos] == [
        (1, "fluorescent", 10),
        (1, "fluorescent", 1),
        (1, "fluorescent", 4),
        (2, "led", 2),
        (2, "led", 0),
    ]
    for i, info in enumerate(infos):
        ev, label = ds[i]
        full = recs[Path(info["file"]).stem]
        want = full[(full["t"] >= info["start_us"]) & (full["t"] < info["end_us"])]
        assert label == info["label"] and len(want) > 0
        np.testing.assert_array_equal(ev, want)
    files = ds.source_files()
    assert root / "trials_to_train.txt" in files and root / "user01_fluorescent.aedat" in files
    assert root / "user02_led_labels.csv" in files and root / "user24_natural.aedat" not in files
    test = DVSGesture(root.parent, train=False, transform=len)  # root/DvsGesture is found too
    assert len(test) == 1 and test[0] == (
        len(recs["user24_natural"][(recs["user24_natural"]["t"] >= 500000) & (recs["user24_natural"]["t"] < 700000)]),
        6,
    )
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[3][0], ds[3][0])


def test_dvsgesture_duplicate_rows_dropped_with_one_warning(tmp_path):
    csv = HEADER + "1,0,1000000\n2,1000000,2000000\n1,0,1000000\n2,1000000,2000000\n"
    make_gesture_root(tmp_path, {"user26_fluorescent": csv}, [], ["user26_fluorescent"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = DVSGesture(tmp_path, train=False)
    dup = [w for w in caught if "duplicate" in str(w.message)]
    assert len(dup) == 1 and "2 duplicate" in str(dup[0].message) and "user26_fluorescent" in str(dup[0].message)
    assert len(ds) == 2 and [ds.sample_info(i)["label"] for i in range(2)] == [0, 1]


def test_dvsgesture_overlapping_intervals_share_events(tmp_path):
    csv = HEADER + "4,1000000,3000000\n5,2000000,4000000\n"
    recs = make_gesture_root(tmp_path, {"user22_led": csv}, ["user22_led"], [])
    ds = DVSGesture(tmp_path)
    (a, la), (b, lb) = ds[0], ds[1]
    assert (la, lb) == (3, 4)
    t = recs["user22_led"]["t"]
    overlap = recs["user22_led"][(t >= 2000000) & (t < 3000000)]
    assert len(overlap) > 0
    np.testing.assert_array_equal(a[a["t"] >= 2000000], overlap)
    np.testing.assert_array_equal(b[b["t"] < 3000000], overlap)


@pytest.mark.parametrize(
    "csv, line, problem",
    [
        ("cls,start,end\n1,0,10\n", 1, "header"),
        (HEADER + "1,0,10\n1,zero,10\n", 3, "three integers"),
        (HEADER + "1,0,10,4\n", 2, "three integers"),
        (HEADER + "12,0,10\n", 2, "class 12"),
        (HEADER + "0,0,10\n", 2, "class 0"),
        (HEADER + "3,10,10\n", 2, "empty or negative"),
        (HEADER + "3,-5,10\n", 2, "empty or negative"),
        (HEADER + "3,0,9223372036854775808\n", 2, "beyond the int64"),
        ("", None, "empty labels file"),
    ],
)
def test_dvsgesture_malformed_csv_names_file_and_line(tmp_path, csv, line, problem):
    make_gesture_root(tmp_path, {"user03_led": csv}, ["user03_led"], [])
    with pytest.raises(EventFormatError, match=problem) as err:
        DVSGesture(tmp_path)
    assert err.value.path == str(tmp_path / "user03_led_labels.csv")
    if line is not None:
        assert f"line {line}:" in str(err.value)
        offset = sum(len(x) for x in csv.encode().splitlines(keepends=True)[: line - 1])
        assert err.value.offset == offset


def test_dvsgesture_bad_trials_line(tmp_path):
    make_gesture_root(tmp_path, {"user03_led": HEADER + "1,0,10\n"}, ["user03_led"], [])
    (tmp_path / "trials_to_train.txt").write_text("user03_led.aedat\nnotes.txt\n")
    with pytest.raises(EventFormatError, match="line 2") as err:
        DVSGesture(tmp_path)
    assert err.value.offset == len("user03_led.aedat\n")


@pytest.mark.parametrize(
    "row",
    [
        "3,1000000,900000000000000",  # ends 28 years after a 10 s recording: binning it would ask for TiB
        "3,10500000,10900000",  # wholly after the recording: it would be cached as empty frames
        "3,9000000,11000001",  # one µs further past the last event than a label may reach
    ],
)
def test_dvsgesture_label_outside_its_recording_is_refused_with_file_and_line(tmp_path, row):
    csv = HEADER + "1,0,1000000\n" + row + "\n"
    make_gesture_root(tmp_path, {"user03_led": csv}, ["user03_led"], [])  # events span [0, 10 s)
    ds = DVSGesture(tmp_path)  # the rows themselves are well formed
    for i in (0, 1):  # checked when the recording is first read, before any of its samples is returned
        with pytest.raises(EventFormatError, match="line 3: interval .* does not lie inside") as err:
            ds[i]
        assert err.value.path == str(tmp_path / "user03_led_labels.csv")
        assert err.value.offset == len(HEADER) + len("1,0,1000000\n")
        assert "user03_led.aedat, which spans [0, 10000000) µs" in str(err.value)


def test_dvsgesture_label_outside_its_recording_is_refused_before_binning(tmp_path):
    make_gesture_root(tmp_path, {"user03_led": HEADER + "3,1000000,900000000000000\n"}, ["user03_led"], [])
    spec = events.FrameSpec(time_window_us=1000, span="sample")
    with pytest.raises(EventFormatError, match="line 2: interval"):
        events.FrameCache(tmp_path / "cache").get(DVSGesture(tmp_path), spec, progress=False)


@pytest.mark.parametrize("row", ["3,0,10000000", "3,9000000,11000000"])
def test_dvsgesture_label_spanning_the_recording_or_reaching_the_margin_past_it_is_accepted(tmp_path, row):
    recs = make_gesture_root(tmp_path, {"user03_led": HEADER + row + "\n"}, ["user03_led"], [])
    ev, label = DVSGesture(tmp_path)[0]
    assert label == 2
    start = int(row.split(",")[1])
    np.testing.assert_array_equal(ev, recs["user03_led"][recs["user03_led"]["t"] >= start])


@pytest.mark.parametrize(
    "entry",
    [
        "user03_led/../../outside/user09_led.aedat",
        "user01_../../outside/user09_led.aedat",
        "../user03_led.aedat",
        "/tmp/user03_led.aedat",
        "user03_..\\..\\x.aedat",
        "user03_a..b.aedat",
        "user03_led\x07.aedat",
    ],
)
def test_dvsgesture_trial_entry_outside_the_data_folder_is_refused_with_line(tmp_path, entry):
    make_gesture_root(tmp_path / "data", {"user03_led": HEADER + "1,0,10\n"}, ["user03_led"], [])
    make_gesture_root(tmp_path / "outside", {"user09_led": HEADER + "1,0,10\n"}, [], [])
    (tmp_path / "data" / "user01_").mkdir()  # so that the second entry would resolve on disk
    (tmp_path / "data" / "user03_led").mkdir()
    trials = tmp_path / "data" / "trials_to_train.txt"
    trials.write_text("user03_led.aedat\n" + entry + "\n")
    with pytest.raises(EventFormatError, match="line 2: .* is not a bare file name") as err:
        DVSGesture(tmp_path / "data")
    assert err.value.path == str(trials) and err.value.offset == len("user03_led.aedat\n")


SPECIAL_DATASET_SCRIPT = """
import json, sys
from events.datasets import NMNIST, DVSGesture
from events.types import EventFormatError
for name, root, path in json.loads(sys.argv[1]):
    try:
        ds = (NMNIST if name.startswith("nmnist") else DVSGesture)(root)
        ds[0]
    except EventFormatError as err:
        assert err.path == path and sys.argv[2] in err.problem, (name, str(err))
        print(name, "refused")
    else:
        raise SystemExit(f"{name}: accepted")
"""


@pytest.mark.parametrize("kind, problem", [("fifo", "a FIFO (named pipe)"), ("directory", "a directory")])
def test_special_files_in_data_sets_are_refused_before_open(tmp_path, kind, problem):
    cases = []
    for target in ("labels", "trials", "recording", "nmnist sample", "nmnist archive"):
        root = tmp_path / target.replace(" ", "-")
        if target.startswith("nmnist"):
            (root / "Train" / "3").mkdir(parents=True)
            write_nmnist(root / "Train" / "3" / "00002.bin", random_events(10, 34, 34, 0, 1000, 0))
            path = root / "Train" / "3" / "00001.bin"
            if target == "nmnist archive":
                os.rename(root / "Train", root / "unzipped")
                path = root / "Train.zip"
        else:
            make_gesture_root(root, {"user03_led": HEADER + "1,0,10\n"}, ["user03_led"], [])
            name = {"labels": "user03_led_labels.csv", "trials": "trials_to_train.txt", "recording": "user03_led.aedat"}
            path = root / name[target]
            path.unlink()
        os.mkfifo(path) if kind == "fifo" else path.mkdir()
        cases.append((target, str(root), str(path)))
    out = run_isolated(SPECIAL_DATASET_SCRIPT, json.dumps(cases), problem, timeout=90)
    assert out.split("\n")[:-1] == [f"{name} refused" for name, _, _ in cases]


def test_dvsgesture_missing_data_raises_dataset_not_found(tmp_path, gesture_root):
    with pytest.raises(DatasetNotFoundError) as err:
        DVSGesture(tmp_path / "nothing")
    msg = str(err.value)
    assert DVSGESTURE_URL in msg and "trials_to_train.txt" in msg and "ibmGestureTrain" in msg
    root, _ = gesture_root
    (root / "user02_led.aedat").unlink()
    with pytest.raises(DatasetNotFoundError, match="user02_led.aedat"):
        DVSGesture(root)


def test_dvsgesture_sample_read_uses_packet_index(gesture_root, monkeypatch):
    import events.formats.aedat3 as a3

    root, _ = gesture_root
    ds = DVSGesture(root)
    ds[0]  # builds the index of user01_fluorescent (3000 events in 47 packets)
    decoded = []
    original = a3._decode_polarity

    def spy(buf, *args):
        decoded.append(len(buf) // 8)
        return original(buf, *args)

    monkeypatch.setattr(a3, "_decode_polarity", spy)
    ev, _ = ds[1]  # 1 s of a 10 s recording
    assert sum(decoded) <= len(ev) + 2 * 64


# ---------------------------------------------------------------- DVS Gesture, tonic's .npy layout


def test_dvsgesture_tonic_npy_layout(tmp_path):
    rng = np.random.default_rng(11)
    want = {}
    for folder, classes in (("user01_led", (0, 10)), ("user03_natural", (4,))):
        (tmp_path / "ibmGestureTrain" / folder).mkdir(parents=True)
        for c in classes:
            n = 20 + c
            arr = np.stack(
                [
                    rng.integers(0, 128, n),
                    rng.integers(0, 128, n),
                    rng.integers(0, 2, n),
                    np.sort(rng.integers(0, 6000, n)),
                ],
                axis=1,
            ).astype(np.float64)
            np.save(tmp_path / "ibmGestureTrain" / folder / f"{c}.npy", arr)
            want[(folder, c)] = make_events(arr[:, 0], arr[:, 1], arr[:, 3].astype(np.int64) * 1000, arr[:, 2])
    ds = DVSGesture(tmp_path)
    assert len(ds) == 3
    infos = [ds.sample_info(i) for i in range(3)]
    assert [(i["user"], i["lighting"], i["label"]) for i in infos] == [(1, "led", 0), (1, "led", 10), (3, "natural", 4)]
    for i, info in enumerate(infos):
        ev, label = ds[i]
        assert label == info["label"] and info["start_us"] is None
        np.testing.assert_array_equal(ev, want[(f"user{info['user']:02d}_{info['lighting']}", label)])
    assert len(ds.source_files()) == 3
    np.save(tmp_path / "ibmGestureTrain" / "user01_led" / "11.npy", np.zeros((1, 4)))
    with pytest.raises(EventFormatError, match="class index"):
        DVSGesture(tmp_path)


def test_dvsgesture_prefers_original_files(gesture_root):
    root, _ = gesture_root
    (root / "ibmGestureTrain" / "user01_led").mkdir(parents=True)
    np.save(root / "ibmGestureTrain" / "user01_led" / "0.npy", np.zeros((1, 4)))
    ds = DVSGesture(root)
    assert ds.layout == "aedat" and len(ds) == 5
    assert read(ds.source_files()[1]).sensor_size == SensorSize(128, 128, 2)
