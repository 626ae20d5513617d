"""``nsm convert`` and ``events.convert``: every writable format round trips exactly through the command line,
chunked; bad formats and outputs are one-line errors that leave the output as it was."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest

import events
from events.atomic import OutputError
from events.convert import convert
from events.formats.aedat3 import write_aedat3
from events.formats.hdf5 import write_hdf5
from events.formats.prophesee import write_prophesee
from events.types import SensorSize, make_events
from pipelines.cli import main


def simulated(n=2500, sensor=(128, 128), seed=0, start=2**25 + 3):
    rng = np.random.default_rng(seed)
    t = start + np.cumsum(rng.integers(0, 3000, n))
    return make_events(rng.integers(0, sensor[0], n), rng.integers(0, sensor[1], n), t, rng.integers(0, 2, n))


@pytest.mark.parametrize(
    "chain",
    [
        ["a.h5", "b.raw", "c.h5"],  # hdf5 -> evt3 -> hdf5
        ["a.h5", "b.evt2:evt2", "c.dat", "d.npy", "e.hdf5"],
        ["a.h5", "b.npy", "c.raw", "d.dat", "e.h5"],
        ["a.h5", "b.aedat4", "c.raw", "d.aedat4", "e.h5"],
    ],
)
def test_round_trips_through_the_cli_are_exact(tmp_path, capsys, chain):
    ev = simulated()
    write_hdf5(tmp_path / chain[0], ev, (128, 128))
    for src, dst in zip(chain[:-1], chain[1:]):
        name, _, fmt = dst.partition(":")
        args = ["convert", str(tmp_path / src.partition(":")[0]), str(tmp_path / name), "--chunk-events", "700"]
        assert main(args + (["--format", fmt] if fmt else []) + ["--quiet"]) == 0
        assert f"wrote {len(ev)} events (128x128)" in capsys.readouterr().out
        rec = events.read(tmp_path / name)
        assert np.array_equal(rec.events, ev), dst
        assert rec.sensor_size[:2] == (128, 128)
    assert events.detect_format(tmp_path / chain[1].partition(":")[0]) in {"evt3", "evt2", "gesture_npy", "aedat4"}


def test_prophesee_and_aedat_inputs_convert_with_their_sensor(tmp_path):
    ev = simulated(sensor=(1280, 720))
    write_prophesee(tmp_path / "in.raw", ev, (1280, 720), "evt3")
    done = convert(tmp_path / "in.raw", tmp_path / "out.h5", chunk_events=999)
    assert done.n_events == len(ev) and done.source_format == "evt3" and done.sensor_size == SensorSize(1280, 720)
    rec = events.read(tmp_path / "out.h5")
    assert np.array_equal(rec.events, ev) and rec.sensor_size == SensorSize(1280, 720, 2)
    small = simulated(sensor=(346, 260), seed=1)
    write_aedat3(tmp_path / "in.aedat", small, SensorSize(346, 260))
    convert(tmp_path / "in.aedat", tmp_path / "out.dat")
    assert np.array_equal(events.read(tmp_path / "out.dat").events, small)


def test_progress_bar_counts_events(tmp_path, capsys):
    write_hdf5(tmp_path / "a.h5", simulated(n=300), (128, 128))
    assert main(["convert", str(tmp_path / "a.h5"), str(tmp_path / "b.raw"), "--chunk-events", "100"]) == 0
    assert "300" in capsys.readouterr().err  # the tqdm bar, on stderr
    counts = []
    convert(tmp_path / "a.h5", tmp_path / "c.raw", chunk_events=100, progress=counts.append)
    assert counts == [100, 100, 100]


@pytest.mark.parametrize(
    "args, message",
    [
        (["OUT.xyz"], "cannot tell the output format"),
        (["OUT.h5", "--format", "aedat9"], "invalid choice"),
        (["OUT.npy"], "tonic's .npy holds 128x128"),
        (["IN"], "overwrite the input"),
        (["missing/../OUT.h5", "--chunk-events", "0"], "--chunk-events must be an integer >= 1"),
    ],
)
def test_bad_formats_and_outputs_are_one_line_errors(tmp_path, capsys, args, message):
    src = tmp_path / "in.raw"
    write_prophesee(src, simulated(sensor=(640, 480)), (640, 480), "evt3")
    out = [str(src) if a == "IN" else str(tmp_path / a) if a.startswith(("OUT", "missing")) else a for a in args]
    with pytest.raises(SystemExit) if "--format" in args or "--chunk-events" in args else nullcontext():
        assert main(["convert", str(src), *out, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nsm convert: error:") and message in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.raw"]


def test_unwritable_output_and_damaged_input_leave_no_file(tmp_path, capsys):
    src = tmp_path / "in.h5"
    write_hdf5(src, simulated(), (128, 128))
    (tmp_path / "file").write_text("x")
    assert main(["convert", str(src), str(tmp_path / "file" / "out.raw"), "--quiet"]) == 2
    assert "could not write" in capsys.readouterr().err
    cut = tmp_path / "cut.raw"
    write_prophesee(cut, simulated(), (128, 128), "evt3")
    cut.write_bytes(cut.read_bytes()[:-1])
    (tmp_path / "old.h5").write_bytes(b"old")
    assert main(["convert", str(cut), str(tmp_path / "old.h5"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "truncated" in err[0] and str(cut) in err[0]
    assert (tmp_path / "old.h5").read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_what_a_format_cannot_hold_is_refused(tmp_path, capsys):
    src = tmp_path / "sparse.h5"
    write_hdf5(src, make_events([1, 2], [1, 1], [10, 10 + (2**16 + 2) * 2**24], [0, 1]), (64, 64))
    assert main(["convert", str(src), str(tmp_path / "out.raw"), "--quiet"]) == 2
    assert "write EVT 2.0 or HDF5 instead" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "out.raw"), "--format", "evt2", "--quiet"]) == 0
    assert np.array_equal(events.read(tmp_path / "out.raw").events, events.read(src).events)


def test_a_genuine_aedat4_recording_rewritten_by_faery_reads_back_exactly(real_data, tmp_path):
    """DV's own file (decoded by the aedat package) -> faery's AEDAT 4 encoder -> the aedat package again."""
    source = events.read(real_data / "davis346_sample.aedat4")
    done = convert(real_data / "davis346_sample.aedat4", tmp_path / "copy.aedat4", chunk_events=5000)
    copy = events.read(tmp_path / "copy.aedat4")
    assert done.n_events == len(source.events) > 0 and done.format == "aedat4"
    assert np.array_equal(copy.events, source.events) and copy.sensor_size == source.sensor_size


def test_an_output_that_is_the_input_or_not_a_regular_file_is_refused_before_reading(tmp_path, capsys):
    """The input itself under another name (a symbolic link, a hard link, ``dir/../name``) and a FIFO, a folder or
    a device as OUT: one line naming OUT, exit status 2, the input unchanged and the special file still special."""
    src = tmp_path / "in.h5"
    write_hdf5(src, simulated(n=50), (128, 128))
    data = src.read_bytes()
    (tmp_path / "soft.h5").symlink_to(src)
    os.link(src, tmp_path / "hard.h5")
    (tmp_path / "sub").mkdir()
    fifo = tmp_path / "fifo.raw"
    os.mkfifo(fifo)
    cases = [(tmp_path / name, f"same file as the input {src}") for name in ("soft.h5", "hard.h5", "sub/../in.h5")]
    cases += [(fifo, "a FIFO (named pipe), not a regular file"), (tmp_path / "sub", "Is a directory")]
    cases += [("/dev/null", "a character device, not a regular file")]
    for out, why in cases:
        assert main(["convert", str(src), str(out), "--format", "evt3", "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"nsm convert: error: could not write {out}: ") and why in err[0]
    assert src.read_bytes() == data and (tmp_path / "hard.h5").read_bytes() == data
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and (tmp_path / "sub").is_dir()
    assert not [p for p in tmp_path.rglob("*.tmp")]
    with pytest.raises(OutputError, match="overwrite the input"):
        convert(src, tmp_path / "hard.h5")


@pytest.mark.parametrize("fmt, top", [("aedat4", 32767), ("evt3", 2048), ("evt2", 2048), ("dat", 16384)])
def test_a_sensor_larger_than_the_format_holds_is_refused_before_writing(tmp_path, capsys, fmt, top):
    """Each side of the sensor against the target format's limit (AEDAT 4: int16 coordinates, faery refuses
    32768), width and height alike; the largest that fits converts and reads back exactly."""
    for w, h in ((top + 1, 4), (4, top + 1), (32768, 32768)):
        src = tmp_path / f"{w}x{h}.h5"
        write_hdf5(src, make_events([0, w - 1], [h - 1, 0], [10, 20], [0, 1]), (w, h))
        (tmp_path / "old.out").write_bytes(b"old")
        assert main(["convert", str(src), str(tmp_path / "old.out"), "--format", fmt, "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"sensor size {w}x{h} does not fit" in err[0] and f"1..{top}" in err[0], err
        assert (tmp_path / "old.out").read_bytes() == b"old"
    src = tmp_path / "largest.h5"
    ev = make_events([0, top - 1], [top - 1, 0], [10, 20], [0, 1])
    write_hdf5(src, ev, (top, top))
    assert main(["convert", str(src), str(tmp_path / "largest.out"), "--format", fmt, "--quiet"]) == 0
    capsys.readouterr()
    rec = events.read(tmp_path / "largest.out")
    assert np.array_equal(rec.events, ev) and rec.sensor_size[:2] == (top, top)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


KILLED_WRITER = """
import sys, time
from events.convert import open_writer
from events.types import make_events

with open_writer(sys.argv[1], sys.argv[2], (128, 128)) as out:
    out.write(make_events([1], [1], [10], [0]))
    print("writing", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("fmt, name", [("hdf5", "out.h5"), ("evt3", "out.raw"), ("aedat4", "out.aedat4")])
def test_the_next_conversion_removes_what_killed_ones_left_and_nothing_else(tmp_path, capsys, fmt, name):
    """A conversion killed mid-write leaves ``.<name>.<pid>.<random>.tmp``; the next conversion to the same target
    removes it, and any of that target's not modified for a day (a reused process number), but not one of a
    running writer, nor another target's."""
    src, target = tmp_path / "in.h5", tmp_path / name
    write_hdf5(src, simulated(n=50), (128, 128))
    argv = [sys.executable, "-c", KILLED_WRITER, str(target), fmt]
    killed = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert killed.stdout.readline().strip() == "writing"
    killed.kill()
    killed.wait(10)
    killed.stdout.close()
    (left,) = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert left.name.startswith(f".{name}.{killed.pid}.") and not target.exists()
    running = tmp_path / f".{name}.1.0123abcd.tmp"  # process 1 runs: a writer at work
    reused = tmp_path / f".{name}.1.4567cdef.tmp"  # the same, not modified for two days
    mine = tmp_path / f".{name}.{os.getpid()}.89abcdef.tmp"
    other = tmp_path / f".other{name}.{killed.pid}.0123abcd.tmp"
    for path in (running, reused, mine, other):
        path.write_bytes(b"partial")
    os.utime(reused, (time.time() - 2 * 86400,) * 2)
    assert main(["convert", str(src), str(target), "--format", fmt, "--quiet"]) == 0
    assert np.array_equal(events.read(target).events, events.read(src).events)
    assert sorted(p for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == sorted([running, mine, other])


LONG_EVENTS = 6_000_000  # 78 MB as EVENT_DTYPE records; reading them whole takes about twice that at its peak
HEADROOM = 96 << 20  # address space allowed beyond the interpreter with its libraries loaded
LIMITED = """
import resource, sys
import h5py, events, events.convert, events.formats.prophesee, events.formats.aedat4_writer
import pipelines.commands.convert
from pipelines import cli
vm = next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + int(sys.argv[1]), resource.RLIM_INFINITY))
if sys.argv[2] == "whole":
    try:
        print(len(events.read(sys.argv[3]).events))
    except MemoryError:
        print("MemoryError")
else:
    print(cli.main(["convert", sys.argv[3], sys.argv[2], "--chunk-events", "100000", "--quiet"]))
"""


def run_limited(*args) -> str:
    """``LIMITED`` in a fresh Python whose address space may grow by ``HEADROOM`` once its libraries are loaded."""
    res = subprocess.run(
        [sys.executable, "-c", LIMITED, str(HEADROOM), *map(str, args)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


@pytest.fixture(scope="module")
def long_files(tmp_path_factory):
    """One long recording (LONG_EVENTS events on 128 x 128 over about 6 s) as EVT 3.0, EVT 2.0 and HDF5."""
    rng = np.random.default_rng(7)
    t = np.cumsum(rng.integers(0, 3, LONG_EVENTS))
    ev = make_events(
        rng.integers(0, 128, LONG_EVENTS), rng.integers(0, 128, LONG_EVENTS), t, rng.integers(0, 2, LONG_EVENTS)
    )
    root = tmp_path_factory.mktemp("long")
    paths = {"evt3": root / "long.raw", "evt2": root / "long-evt2.raw", "hdf5": root / "long.h5"}
    write_prophesee(paths["evt3"], ev, (128, 128), "evt3")
    write_prophesee(paths["evt2"], ev, (128, 128), "evt2")
    write_hdf5(paths["hdf5"], ev, (128, 128))
    return ev, paths


LINUX_PROC = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux's /proc for the limit")


@LINUX_PROC
@pytest.mark.parametrize(
    "source, name", [("evt3", "out.h5"), ("evt2", "out.aedat4"), ("hdf5", "out.raw"), ("hdf5", "out.npy")]
)
def test_a_long_recording_converts_within_a_memory_limit_too_small_to_hold_it(long_files, tmp_path, source, name):
    """``nsm convert`` under an address-space limit (RLIMIT_AS) of HEADROOM beyond the loaded interpreter: the
    Prophesee and HDF5 readers and every writer hold a chunk, not the recording, so the conversion completes and
    reads back exactly. Measured beyond the loaded interpreter with chunks of 100 000 events: at most 52 MB."""
    ev, paths = long_files
    target = tmp_path / name
    out = run_limited(target, paths[source]).splitlines()
    assert out[-1] == "0" and out[0].startswith(f"wrote {LONG_EVENTS} events")
    assert np.array_equal(events.read(target).events, ev)


@LINUX_PROC
@pytest.mark.parametrize("source", ["evt3", "evt2", "hdf5"])
def test_the_memory_limit_is_too_small_to_read_the_long_recording_whole(long_files, source):
    """The control of the test above: under the same limit, reading the file whole raises MemoryError (it takes
    about 26 bytes per event at its peak, 160 MB here), so the limit binds."""
    assert run_limited("whole", long_files[1][source]) == "MemoryError"
