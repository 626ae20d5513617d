"""Hostile input files, a few hundred generated cases: every event file format (truncated at many offsets, bytes
flipped, length fields set huge, empty, under another extension, a directory or a FIFO in its place), the DVS
Gesture and N-MNIST data sets (damaged recordings, label and trial files, archives), the frame cache (damaged
bytes) and checkpoints (truncated, flipped). Each case runs in a process of its own with a timeout, which imports
only ``events`` (``pipelines.checkpoint`` for checkpoints) and reads the input, and must end in one of two ways:

* a clean error: a ``ValueError`` or ``OSError`` (``EventFormatError``, ``CacheError``, ...: what ``nsm`` reports
  as one line with exit status 2) whose message is one line naming the file or data folder;
* a valid result: events on the sensor with polarity 0/1 and ``t >= 0``, labels among the classes, cached frames
  equal to the source binned afresh.

Nothing else: no traceback, no crash, no hang. Cases that cannot hold valid data (empty files, directories,
FIFOs) must be errors. Two worker processes import the readers once each and fork a child per case, so that every
case is isolated without paying for the imports (a second) each time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import events
from events.formats.aedat3 import write_aedat3
from events.formats.hdf5 import write_hdf5
from events.formats.nmnist import write_nmnist
from events.formats.prophesee import write_prophesee
from events.types import make_events

REPO = Path(__file__).resolve().parents[1]
REAL_AEDAT4 = REPO.parent / "shared" / "data" / "real" / "davis346_sample.aedat4"
TIMEOUT_S = 20
CACHE_SPEC = dict(time_window_us=100_000, polarity="merge", downsample=8, span="sample")

pytestmark = pytest.mark.slow  # about a minute on two cores

WORKER = f"""
import json, os, signal, sys, traceback
import numpy as np
import events
import events.io, events.datasets, events.cache, events.formats.aedat3, events.formats.aedat4, events.formats.hdf5
import events.formats.prophesee
from events.cache.read import bin_sample
from events.types import EVENT_DTYPE

if "checkpoint" in sys.argv[1:]:
    import pipelines.checkpoint


def valid(ev, sensor):
    w, h, _ = sensor
    assert ev.dtype == EVENT_DTYPE, ev.dtype
    if len(ev):
        assert ev["x"].min() >= 0 and ev["x"].max() < w and ev["y"].min() >= 0 and ev["y"].max() < h, "off the sensor"
        assert set(np.unique(ev["p"]).tolist()) <= {{0, 1}} and ev["t"].min() >= 0, "bad polarity or time"


def check(kind, target):
    if kind == "read":
        rec = events.read(target)
        valid(rec.events, rec.sensor_size)
    elif kind == "aedat3-index":
        r = events.formats.aedat3.Aedat3Reader(target)
        index = r.packet_index()
        ev = r.read_time_range(int(index.t_min.min(initial=0)), int(index.t_max.max(initial=0)) + 1)
        valid(ev, r.sensor_size)
        assert len(ev) == index.n_events
    elif kind in ("dvsgesture", "nmnist"):
        ds = (events.DVSGesture if kind == "dvsgesture" else events.NMNIST)(target, train=True)
        for i in range(len(ds)):
            ev, label = ds[i]
            valid(ev, ds.sensor_size)
            assert 0 <= label < len(ds.classes), label
    elif kind == "cache":
        root, cache_dir = target.split("::")
        ds = events.DVSGesture(root, train=True)
        spec = events.FrameSpec(**{CACHE_SPEC!r})
        cached = events.FrameCache(cache_dir).get(ds, spec, progress=False)
        for i in range(len(ds)):
            frames, label = cached[i]
            want, want_label, _ = bin_sample(ds, i, spec, frames.dtype)
            assert label == want_label and np.array_equal(frames, want), f"sample {{i}} differs from its source"
    elif kind == "checkpoint":
        pipelines.checkpoint.load_checkpoint(target)
    else:
        raise ValueError(f"unknown case kind {{kind}}")


for line in sys.stdin:  # a case a line: [kind, target, file for its output]; each runs in a child of its own
    kind, target, out = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.alarm({TIMEOUT_S})  # a hang ends the child (SIGALRM)
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        try:
            check(kind, target)
        except (ValueError, OSError) as err:
            print(json.dumps({{"outcome": "error", "message": str(err)}}))
        except BaseException:
            traceback.print_exc()
            sys.stdout.flush()
            os._exit(1)
        else:
            print(json.dumps({{"outcome": "ok"}}))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    print(json.dumps(os.waitpid(pid, 0)[1]), flush=True)
"""


class Case:
    """One input: the reader ``kind``, its ``target`` (a path, ``root::cache`` for the cache), the name an error
    must mention, and whether it can only be an error."""

    def __init__(self, name: str, kind: str, target, names=None, must_fail: bool = False):
        self.name, self.kind, self.target, self.must_fail = name, kind, str(target), must_fail
        self.names = str(names or target)


def verdict(case: Case, status: int, output: str) -> str | None:
    """``None`` when the case ended cleanly (its child's wait ``status`` and ``output``), else what went wrong."""
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM:
        return f"{case.name}: hang (no result in {TIMEOUT_S} s)"
    lines = output.strip().splitlines()
    if status != 0 or "Traceback" in output or not lines:
        return f"{case.name}: wait status {status}: {output.strip()[-600:]}"
    outcome = json.loads(lines[-1])
    if outcome["outcome"] == "ok":
        return f"{case.name}: accepted, but it holds no valid data" if case.must_fail else None
    message = outcome["message"]
    if "\n" in message or case.names not in message:
        return f"{case.name}: the error is not one line naming {case.names}: {message!r}"
    return None


def run_share(cases: list[Case], outputs: Path) -> list[str | None]:
    """Run ``cases`` through one worker, which imports the readers once and forks a child per case."""
    kinds = sorted({c.kind for c in cases})
    jobs = "".join(json.dumps([c.kind, c.target, str(outputs / f"{id(c)}.out")]) + "\n" for c in cases)
    result = subprocess.run(
        [sys.executable, "-c", WORKER, *kinds],
        input=jobs,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S * (len(cases) + 2),
    )
    statuses = [int(line) for line in result.stdout.split()]
    assert result.returncode == 0 and len(statuses) == len(cases), result.stderr
    return [verdict(c, st, (outputs / f"{id(c)}.out").read_text()) for c, st in zip(cases, statuses)]


def run_all(cases: list[Case], outputs: Path) -> None:
    """Every case in a process of its own (two workers at a time); fails listing each case that misbehaved."""
    outputs.mkdir(exist_ok=True)
    with ThreadPoolExecutor(2) as pool:
        verdicts = [v for share in pool.map(run_share, (cases[0::2], cases[1::2]), (outputs, outputs)) for v in share]
    problems = [v for v in verdicts if v is not None]
    assert not problems, f"{len(problems)} of {len(cases)} cases:\n" + "\n".join(problems)


# ---------------------------------------------------------------- mutations


def mutants(data: bytes, seed: int, *, cuts: int = 10, flips: int = 10, lengths: int = 6) -> dict[str, bytes]:
    """Damaged copies of ``data``: truncations (at offsets spread over the file and its first bytes), single
    flipped bytes, 4-byte fields set to huge values, and trailing junk."""
    rng = np.random.default_rng(seed)
    n = len(data)
    out = {}
    for at in sorted({1, 3, 8, 17, 64, *rng.integers(1, n, cuts).tolist()} - {n}):
        out[f"cut{at}"] = data[:at]
    for at in rng.integers(0, n, flips).tolist():
        buf = bytearray(data)
        buf[at] ^= 0xFF
        out[f"flip{at}"] = bytes(buf)
    for k, at in enumerate(rng.integers(0, max(1, n - 4), lengths).tolist()):
        buf = bytearray(data)
        struct.pack_into("<I", buf, at, (0xFFFFFFFF, 0x7FFFFFFF, 0x80000000)[k % 3])
        out[f"huge{at}"] = bytes(buf)
    out["junk-tail"] = data + bytes(rng.integers(0, 256, 7, dtype=np.uint8))
    return out


def file_cases(folder: Path, name: str, data: bytes, seed: int, kind: str = "read", **counts) -> list[Case]:
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for label, payload in mutants(data, seed, **counts).items():
        path = folder / f"{label}-{name}"
        path.write_bytes(payload)
        cases.append(Case(f"{name} {label}", kind, path))
    return cases


def special_cases(folder: Path, name: str) -> list[Case]:
    """An empty file, a directory and a FIFO, each under ``name``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"empty-{name}").write_bytes(b"")
    (folder / f"dir-{name}").mkdir()
    os.mkfifo(folder / f"fifo-{name}")
    return [
        Case(f"{name} {kind}", "read", folder / f"{kind}-{name}", must_fail=True) for kind in ("empty", "dir", "fifo")
    ]


def small_events(n, w, h, seed, t_max):
    rng = np.random.default_rng(seed)
    return make_events(
        rng.integers(0, w, n), rng.integers(0, h, n), np.sort(rng.integers(0, t_max, n)), rng.integers(0, 2, n)
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, bytes]:
    """A small valid file of every format, by file name."""
    folder = tmp_path_factory.mktemp("sources")
    write_nmnist(folder / "a.bin", small_events(300, 34, 34, 0, 20_000_000))
    write_aedat3(folder / "a.aedat", small_events(400, 128, 128, 1, 2**31 + 10**6), packet_events=50)
    write_hdf5(folder / "a.h5", small_events(200, 64, 48, 2, 10**6), (64, 48))
    rng = np.random.default_rng(3)
    columns = [rng.integers(0, 128, 100), rng.integers(0, 128, 100), rng.integers(0, 2, 100)]
    np.save(folder / "a.npy", np.stack([*columns, np.sort(rng.uniform(0, 6000, 100))], axis=1))
    np.save(folder / "h.npy", np.stack([*columns, np.sort(rng.uniform(0, 60000, 100))], axis=1).astype(np.float16))
    sys.path.insert(0, str(Path(__file__).parent))
    from test_formats import A4_EVENTS, aedat4_bytes, aedat4_events_packet

    (folder / "a.aedat4").write_bytes(aedat4_bytes([(0, aedat4_events_packet(e)) for e in A4_EVENTS], data_table=True))
    prophesee = small_events(300, 320, 240, 4, 10**6)
    for name, fmt in (("p2.raw", "evt2"), ("p3.raw", "evt3"), ("pd.dat", "dat")):
        write_prophesee(folder / name, prophesee, (320, 240), fmt)
    from test_prophesee import evt21_bytes

    (folder / "p21.raw").write_bytes(evt21_bytes(prophesee, (320, 240)))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize(
    "name", ["a.bin", "a.aedat", "a.h5", "a.npy", "h.npy", "a.aedat4", "p2.raw", "p21.raw", "p3.raw", "pd.dat"]
)
def test_damaged_event_files(sources, tmp_path, name):
    seed = sorted(sources).index(name)
    cases = file_cases(tmp_path, name, sources[name], seed) + special_cases(tmp_path / "special", name)
    if name == "a.aedat":
        cases += file_cases(tmp_path / "index", name, sources[name], seed + 10, "aedat3-index", cuts=6, flips=6)
    run_all(cases, tmp_path / "outputs")


@pytest.mark.skipif(not REAL_AEDAT4.exists(), reason=f"genuine recording not found at {REAL_AEDAT4}")
def test_damaged_real_aedat4_file(tmp_path):
    cases = file_cases(tmp_path, "real.aedat4", REAL_AEDAT4.read_bytes(), 20, cuts=12, flips=12, lengths=8)
    run_all(cases, tmp_path / "outputs")


def test_files_under_another_name(sources, tmp_path):
    """Formats are told by their content, N-MNIST (no header) by its name: any content under any name."""
    cases = []
    for source, data in sources.items():
        for suffix in (".bin", ".npy", ".h5", ".aedat", ".aedat4", ".raw", ".dat", ".txt"):
            path = tmp_path / f"{Path(source).stem}-{source.split('.')[-1]}{suffix}"
            path.write_bytes(data)
            cases.append(Case(path.name, "read", path))
    run_all(cases, tmp_path / "outputs")


# ---------------------------------------------------------------- data sets


@pytest.fixture(scope="module")
def gesture_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gestures") / "data"
    return events.simulate_gestures(
        root, seed=0, users=2, per_class=1, lightings=["fluorescent"], gesture_s=(0.6, 0.8), progress=False
    )


def copy_tree(root: Path, to: Path) -> Path:
    """``root``'s files linked into ``to`` (a damaged file is written over its link, never into ``root``)."""
    to.mkdir(parents=True)
    for p in root.iterdir():
        (to / p.name).symlink_to(p)
    return to


def replaced(root: Path, to: Path, name: str, payload: bytes | None) -> Path:
    """A copy of ``root`` with file ``name`` replaced by ``payload`` (``None``: a directory in its place)."""
    folder = copy_tree(root, to)
    (folder / name).unlink()
    if payload is None:
        (folder / name).mkdir()
    else:
        (folder / name).write_bytes(payload)
    return folder


def test_damaged_dvs_gesture_data_sets(gesture_root, tmp_path):
    labels = (gesture_root / "user01_fluorescent_labels.csv").read_bytes()
    trials = (gesture_root / "trials_to_train.txt").read_bytes()
    first = labels.splitlines()[1].decode()
    cls, start, end = first.split(",")
    edits = {
        "labels.csv": {
            "class-0": labels.replace(first.encode(), f"0,{start},{end}".encode()),
            "class-12": labels.replace(first.encode(), f"12,{start},{end}".encode()),
            "class-huge": labels.replace(first.encode(), f"{2**64},{start},{end}".encode()),
            "start-after-end": labels.replace(first.encode(), f"{cls},{end},{start}".encode()),
            "negative": labels.replace(first.encode(), f"{cls},-5,{end}".encode()),
            "past-recording": labels.replace(first.encode(), f"{cls},{start},{2**62}".encode()),
            "huge-interval": labels.replace(first.encode(), f"{cls},0,{2**62}".encode()),
            "no-header": b"\n".join(labels.splitlines()[1:]),
            "fields": labels.replace(first.encode(), f"{cls},{start}".encode()),
            "binary": bytes(range(256)),
            **mutants(labels, 30, cuts=6, flips=6, lengths=2),
        },
        "trials.txt": {
            "outside-root": trials + b"../../etc/passwd.aedat\n",
            "absolute": trials + b"/etc/passwd\n",
            "missing": trials + b"user09_fluorescent.aedat\n",
            "binary": b"\xff\xfe\x00" * 10,
            "empty": b"",
            **mutants(trials, 31, cuts=3, flips=4, lengths=1),
        },
    }
    cases = []
    for what, name in (("labels.csv", "user01_fluorescent_labels.csv"), ("trials.txt", "trials_to_train.txt")):
        for label, payload in edits[what].items():
            folder = replaced(gesture_root, tmp_path / f"{what}-{label}", name, payload)
            cases.append(Case(f"dvsgesture {what} {label}", "dvsgesture", folder))
        folder = replaced(gesture_root, tmp_path / f"{what}-dir", name, None)
        cases.append(Case(f"dvsgesture {what} is a directory", "dvsgesture", folder, must_fail=True))
    recording = (gesture_root / "user01_fluorescent.aedat").read_bytes()
    rng = np.random.default_rng(32)
    for at in [0, 100, *rng.integers(200, len(recording), 5).tolist()]:
        for how, payload in (
            ("cut", recording[:at]),
            ("flip", recording[:at] + bytes([recording[at] ^ 0xFF]) + recording[at + 1 :]),
        ):
            folder = replaced(gesture_root, tmp_path / f"aedat-{how}{at}", "user01_fluorescent.aedat", payload)
            cases.append(Case(f"dvsgesture recording {how}{at}", "dvsgesture", folder))
    cases.append(Case("dvsgesture empty folder", "dvsgesture", tmp_path / "nothing", must_fail=True))
    (tmp_path / "nothing").mkdir()
    run_all(cases, tmp_path / "outputs")


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    return events.simulate_digits(tmp_path_factory.mktemp("digits") / "data", seed=0, per_class=1, progress=False)


def zipped(train: Path, to: Path, method=zipfile.ZIP_DEFLATED) -> bytes:
    with zipfile.ZipFile(to, "w", method) as zf:
        for p in sorted(train.rglob("*.bin")):
            zf.write(p, f"Train/{p.relative_to(train)}")
    return to.read_bytes()


def test_damaged_n_mnist_data_sets(digits_root, tmp_path):
    cases = []
    sample = next(iter(sorted((digits_root / "Train").rglob("*.bin"))))
    data = sample.read_bytes()
    for label, payload in [("empty", b""), *mutants(data, 40, cuts=4, flips=4, lengths=2).items()]:
        root = tmp_path / f"bin-{label}"
        shutil.copytree(digits_root, root)
        (root / sample.relative_to(digits_root)).write_bytes(payload)
        cases.append(Case(f"nmnist sample {label}", "nmnist", root, must_fail=label == "empty"))
    archive = zipped(digits_root / "Train", tmp_path / "Train.zip")
    for method, name in ((zipfile.ZIP_DEFLATED, "deflated"), (zipfile.ZIP_STORED, "stored")):
        blob = zipped(digits_root / "Train", tmp_path / f"{name}.zip", method) if name == "stored" else archive
        for label, payload in [("intact", blob), *mutants(blob, 41, cuts=6, flips=8, lengths=4).items()]:
            root = tmp_path / f"zip-{name}-{label}"
            root.mkdir()
            (root / "Train.zip").write_bytes(payload)
            cases.append(Case(f"nmnist {name} zip {label}", "nmnist", root))
    root = tmp_path / "zip-dir"
    (root / "Train.zip").mkdir(parents=True)
    cases.append(Case("nmnist zip is a directory", "nmnist", root, must_fail=True))
    run_all(cases, tmp_path / "outputs")


# ---------------------------------------------------------------- frame cache and checkpoints


def test_damaged_frame_caches_are_repaired_or_refused(gesture_root, tmp_path):
    """Every damaged cache file is rebuilt or repaired from the source (the worker compares each sample with the
    source binned afresh), or refused naming the file."""
    spec = events.FrameSpec(**CACHE_SPEC)
    pristine = events.FrameCache(tmp_path / "pristine").get(events.DVSGesture(gesture_root), spec, progress=False).path
    data = pristine.read_bytes()
    cases = []
    for label, payload in mutants(data, 50, cuts=6, flips=16, lengths=4).items():
        cache = tmp_path / label
        cache.mkdir()
        (cache / pristine.name).write_bytes(payload)
        cases.append(Case(f"cache {label}", "cache", f"{gesture_root}::{cache}", names=cache))
    cache = tmp_path / "dir"
    (cache / pristine.name).mkdir(parents=True)
    cases.append(Case("cache file is a directory", "cache", f"{gesture_root}::{cache}", names=cache))
    run_all(cases, tmp_path / "outputs")


def test_damaged_checkpoints(tmp_path):
    import models
    from pipelines.checkpoint import save_checkpoint

    path = tmp_path / "ck.pt"
    model = models.create_model(
        "nmnist_cnn", in_channels=2, input_size=(18, 18), num_classes=4, channels=(4, 8), hidden=16
    )
    save_checkpoint(path, model, classes=["a", "b", "c", "d"], frame_spec={"n_time_bins": 2, "polarity": "merge"})
    cases = file_cases(tmp_path / "damaged", "ck.pt", path.read_bytes(), 60, cuts=3, flips=4, lengths=2)
    run_all(cases, tmp_path / "outputs")
