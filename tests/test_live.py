"""Live sources (issue 16): ``nsm stream --source dv://HOST:PORT`` and ``camera[:NAME]`` (``events.live``).

A dv-processing ``NetworkWriter`` in a child process (dv-processing cannot drop a connected writer in the
process that reads it) serves two seconds of a simulated recording in 20 ms packets on 127.0.0.1; the stream
is read in this process by ``nsm stream``. Every wait is bounded: the test timeouts, the server's own, and
``--stall-timeout``.
"""

from __future__ import annotations

import _thread
import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import events
import models
from events.datasets import GESTURE_CLASSES
from events.formats.aedat3 import write_aedat3
from pipelines import cli
from pipelines.checkpoint import save_checkpoint
from pipelines.stream import TIMING_FIELDS, predict_recording

SPEC = events.FrameSpec(time_window_us=16_000, polarity="merge", downsample=8, frames_per_clip=6)
PACKET_US = 20_000

# argv: port, .npz of the events and their packets' bounds, width, height, first packet, end packet (exclusive),
# then: "close" (exit once sent), "hold" (keep the connection open) or "swap" (send the middle two packets in
# reverse order, then close)
SERVER = """
import os, sys, time
import numpy as np
import dv_processing as dv

port, path, width, height, first, end, then = sys.argv[1:]
data = np.load(path)
ev, bounds = data["events"], data["bounds"]
deadline = time.monotonic() + 30  # never outlive the test
packets = [ev[a:b] for a, b in zip(bounds[:-1], bounds[1:])][int(first):int(end)]
if then == "swap":
    k = len(packets) // 2
    packets[k], packets[k + 1] = packets[k + 1], packets[k]
stream = dv.io.Stream.EventStream(0, "events", "nsm-test", (int(width), int(height)))
writer = dv.io.NetworkWriter("127.0.0.1", int(port), stream)
print("listening", flush=True)
while writer.getClientCount() == 0 and time.monotonic() < deadline:
    time.sleep(0.005)
sys.stdin.readline()  # "go": the test's client has connected its reader (the first client was its probe)
for packet in packets:
    store = dv.EventStore()
    for x, y, t, p in packet.tolist():
        store.push_back(t, x, y, bool(p))
    writer.writeEvents(store)
while writer.getQueuedPacketCount() and time.monotonic() < deadline:
    time.sleep(0.005)
print("sent", flush=True)
time.sleep(0.2 if then != "hold" else max(0.0, deadline - time.monotonic()))
os._exit(0)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def json_result(line: dict) -> dict:
    return {k: v for k, v in line.items() if k not in TIMING_FIELDS}


def lines_of(path) -> list[dict]:
    return [json_result(json.loads(line)) for line in path.read_text().splitlines()]


def expected(ev, sensor, **kw) -> list[dict]:
    """What ``nsm stream --samples 2 --seed 3`` predicts for ``ev`` (ended as a file ends, unless ``end_us``)."""
    preds = predict_recording(tiny_net(), ev, SPEC, sensor, samples=2, seed=3, classes=GESTURE_CLASSES, **kw)
    return [json_result(p.to_dict()) for p in preds]


def tiny_net():
    import torch

    torch.manual_seed(0)
    return models.create_model("allconvnet18", in_channels=6, input_size=(16, 16), num_classes=11, width=0.125)


def packet_bounds(ev) -> np.ndarray:
    """Where the server's packets start (and the last ends): ``ev`` cut every ``PACKET_US`` from its first event,
    empty packets left out."""
    return np.unique(np.searchsorted(ev["t"], np.arange(ev["t"][0], ev["t"][-1] + PACKET_US + 1, PACKET_US)))


def packets_of(ev) -> list[np.ndarray]:
    bounds = packet_bounds(ev)
    return [ev[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """Two seconds of a simulated DVS Gesture recording: (events, sensor, .npz for the server, AEDAT file)."""
    folder = tmp_path_factory.mktemp("live")
    root = events.simulate_gestures(folder / "sim", seed=0, users=1, per_class=1, gesture_s=(0.55, 0.6), progress=False)
    rec = events.read(next(root.glob("*.aedat")))
    ev = rec.events[rec.events["t"] < rec.events["t"][0] + 2_000_000]
    np.savez(folder / "events.npz", events=ev, bounds=packet_bounds(ev))
    write_aedat3(folder / "events.aedat", ev, rec.sensor_size)
    return ev, rec.sensor_size, folder / "events.npz", folder / "events.aedat"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny.pt"
    save_checkpoint(path, tiny_net(), classes=GESTURE_CLASSES, frame_spec=SPEC.to_dict())
    return path


@pytest.fixture
def serve(recording, monkeypatch):
    """``serve(port, first=0, end=None, then="close")``: start a server of packets ``first:end`` and return its
    process once it listens; every server still running is killed at the end of the test. A server sends once
    ``events.live`` has connected a reader to it (told through its stdin), so no packet goes to the probe alone."""
    pytest.importorskip("dv_processing")
    from events import live

    _, sensor, npy, _ = recording
    started = []
    real_opener = live._network_opener

    def opener(*args, **kwargs):
        open_input = real_opener(*args, **kwargs)

        def connected():
            reader = open_input()
            for proc in started:
                if proc.poll() is None and not proc.told:
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                    proc.told = True
            return reader

        return connected

    monkeypatch.setattr(live, "_network_opener", opener)

    def start(port, first=0, end=None, then="close"):
        end = len(packets_of(recording[0])) if end is None else end
        argv = [port, npy, sensor.width, sensor.height, first, end, then]
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, *map(str, argv)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        proc.told = False
        started.append(proc)
        assert proc.stdout.readline().strip() == "listening"
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stdin.close()


def nsm_stream(checkpoint, tmp_path, *source, name="live"):
    """``nsm stream`` (2 samples, seed 3) writing ``<name>.jsonl`` and ``<name>.json``: (exit status, outputs)."""
    out, summary = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.json"
    argv = ["stream", "--checkpoint", str(checkpoint), *map(str, source), "--samples", "2", "--seed", "3"]
    argv += ["--out", str(out), "--summary", str(summary), "--chunk-events", "700", "--quiet"]
    return cli.main(argv), out, summary


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


# ------------------------------------------------------------------------------------------------
# a network stream
# ------------------------------------------------------------------------------------------------


def test_a_network_stream_gives_the_predictions_of_its_recording(recording, checkpoint, serve, tmp_path, capsys):
    ev, sensor, _, aedat = recording
    port = free_port()
    serve(port)
    timeline = tmp_path / "timeline.png"
    status, out, summary = nsm_stream(
        checkpoint, tmp_path, "--source", f"dv://127.0.0.1:{port}", "--timeline", timeline
    )
    assert status == 0
    assert stderr_lines(capsys)[-1] == (
        f"dv://127.0.0.1:{port}: the server closed the connection after {len(ev)} events: end of the stream"
    )
    file_status, file_out, file_summary = nsm_stream(checkpoint, tmp_path, "--events", aedat, name="file")
    assert file_status == 0
    assert lines_of(out) == lines_of(file_out) == expected(ev, sensor)
    live, replayed = json.loads(summary.read_text()), json.loads(file_summary.read_text())
    assert live["source"] == f"dv://127.0.0.1:{port}"
    for key in ("windows", "empty_windows", "mean_samples", "recording_s"):
        assert live[key] == replayed[key]
    assert timeline.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_killed_server_ends_the_stream_after_every_prediction_of_what_it_sent(
    recording, checkpoint, serve, tmp_path, capsys
):
    ev, sensor, _, _ = recording
    half = len(packets_of(ev)) // 2
    sent = np.concatenate(packets_of(ev)[:half])
    port = free_port()
    server = serve(port, end=half, then="hold")

    def kill_once_sent():
        assert server.stdout.readline().strip() == "sent"
        time.sleep(0.3)
        server.kill()

    killer = threading.Thread(target=kill_once_sent, daemon=True)
    killer.start()
    status, out, summary = nsm_stream(checkpoint, tmp_path, "--source", f"dv://127.0.0.1:{port}")
    killer.join(10)
    assert status == 0 and summary.exists()
    assert stderr_lines(capsys)[-1] == (
        f"dv://127.0.0.1:{port}: the server closed the connection after {len(sent)} events: end of the stream"
    )
    assert len(lines_of(out)) > 10
    assert lines_of(out) == expected(sent, sensor)


def test_a_stalled_stream_stops_with_exit_status_1_after_the_summary(recording, checkpoint, serve, tmp_path, capsys):
    ev, sensor, _, _ = recording
    half = len(packets_of(ev)) // 2
    sent = np.concatenate(packets_of(ev)[:half])
    port = free_port()
    serve(port, end=half, then="hold")
    status, out, summary = nsm_stream(
        checkpoint, tmp_path, "--source", f"dv://127.0.0.1:{port}", "--stall-timeout", "0.7"
    )
    assert status == 1
    assert stderr_lines(capsys)[-1] == (
        f"nsm stream: dv://127.0.0.1:{port}: no packet for 0.7 s after {len(sent)} events: the source stalled"
    )
    assert lines_of(out) == expected(sent, sensor)
    assert json.loads(summary.read_text())["windows"] == len(lines_of(out))


def test_out_of_order_packets_stop_after_the_predictions_before_them(recording, checkpoint, serve, tmp_path, capsys):
    ev, sensor, _, _ = recording
    packets = packets_of(ev)
    k = len(packets) // 2
    port = free_port()
    serve(port, then="swap")
    status, out, _ = nsm_stream(checkpoint, tmp_path, "--source", f"dv://127.0.0.1:{port}")
    assert status == 2
    err = stderr_lines(capsys)
    assert err[-1].startswith(f"nsm stream: error: dv://127.0.0.1:{port}: timestamps go back")
    # the reader thread may see the server close before the predictions reach the late packet (a loaded machine)
    assert all(line.startswith(f"dv://127.0.0.1:{port}: the server closed the connection") for line in err[:-1])
    assert len(err) <= 2
    before = np.concatenate(packets[:k] + [packets[k + 1]])  # all that was pushed before the late packet
    assert lines_of(out) == expected(before, sensor, end_us=int(before["t"][-1]))


def test_reconnect_waits_for_a_new_server_then_gives_up(recording, checkpoint, serve, tmp_path, capsys):
    ev, sensor, _, _ = recording
    half = len(packets_of(ev)) // 2
    port = free_port()
    first = serve(port, end=half)

    def replace_server():
        first.wait(20)
        time.sleep(0.3)  # the client is waiting
        serve(port, first=half)

    replacer = threading.Thread(target=replace_server, daemon=True)
    replacer.start()
    status, out, summary = nsm_stream(checkpoint, tmp_path, "--source", f"dv://127.0.0.1:{port}", "--reconnect", "3")
    replacer.join(10)
    assert status == 1
    err = stderr_lines(capsys)
    name = f"dv://127.0.0.1:{port}"
    n_first = len(np.concatenate(packets_of(ev)[:half]))
    assert (
        err[0]
        == f"{name}: the server closed the connection after {n_first} events; waiting up to 3 s for it to come back"
    )
    assert err[1].startswith(f"{name}: back after ")
    assert (
        err[2]
        == f"{name}: the server closed the connection after {len(ev)} events; waiting up to 3 s for it to come back"
    )
    assert err[3].startswith(f"nsm stream: {name}: did not come back within 3 s (last try: cannot connect: ")
    assert lines_of(out) == expected(ev, sensor)
    assert json.loads(summary.read_text())["windows"] == len(lines_of(out))


def test_ctrl_c_ends_a_live_stream_with_the_summary_and_exit_status_0(recording, checkpoint, serve, tmp_path, capsys):
    ev, sensor, _, _ = recording
    half = len(packets_of(ev)) // 2
    sent = np.concatenate(packets_of(ev)[:half])
    want = expected(sent, sensor)
    port = free_port()
    serve(port, end=half, then="hold")
    out = tmp_path / "live.jsonl"

    def interrupt_once_predicted():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if out.exists() and len(out.read_text().splitlines()) >= len(want) - 2:  # the last ones wait for the end
                time.sleep(0.3)
                _thread.interrupt_main()  # as Ctrl-C
                return
            time.sleep(0.05)

    threading.Thread(target=interrupt_once_predicted, daemon=True).start()
    status, out, summary = nsm_stream(checkpoint, tmp_path, "--source", f"dv://127.0.0.1:{port}")
    assert status == 0 and json.loads(summary.read_text())["windows"] == len(want)
    assert stderr_lines(capsys)[-1] == f"dv://127.0.0.1:{port}: stopped after {len(sent)} events: end of the stream"
    assert lines_of(out) == want


# ------------------------------------------------------------------------------------------------
# sources that cannot be opened, and the options
# ------------------------------------------------------------------------------------------------


def one_line_error(capsys, argv) -> str:
    assert cli.main(["stream", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


def test_without_the_extra_a_source_asks_for_it(checkpoint, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dv_processing", None)  # as if not installed
    for source in ("dv://127.0.0.1:7777", "camera"):
        assert one_line_error(capsys, ["--checkpoint", checkpoint, "--source", source]) == (
            f"nsm stream: error: {source}: live sources need iniVation's dv-processing: pip install nsm-events[live]"
        )


def test_no_server_or_a_silent_one_is_a_clear_error_not_a_hang(checkpoint, capsys):
    pytest.importorskip("dv_processing")
    port = free_port()
    err = one_line_error(capsys, ["--checkpoint", checkpoint, "--source", f"dv://127.0.0.1:{port}"])
    assert err == f"nsm stream: error: dv://127.0.0.1:{port}: cannot connect: Connection refused"
    with socket.socket() as silent:  # accepts connections (the backlog does) and never sends a byte
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        argv = ["--checkpoint", checkpoint, "--source", f"dv://127.0.0.1:{port}", "--stall-timeout", "0.3"]
        assert one_line_error(capsys, argv) == (
            f"nsm stream: error: dv://127.0.0.1:{port}: the server sent nothing within 0.3 s: "
            "not a dv-processing network stream?"
        )


def test_cameras_found_are_listed_when_none_or_not_the_named_one_is_attached(checkpoint, monkeypatch, capsys):
    dv = pytest.importorskip("dv_processing")
    assert one_line_error(capsys, ["--checkpoint", checkpoint, "--source", "camera"]) == (
        "nsm stream: error: camera: no iniVation camera is attached (dv-processing found: none)"
    )

    class Found:
        def __init__(self, model, serial):
            self.cameraModel, self.serialNumber = model, serial

    monkeypatch.setattr(dv.io.camera, "discover", lambda: [Found("DVXplorer", "DXA00093"), Found("DAVIS346", "00001")])
    assert one_line_error(capsys, ["--checkpoint", checkpoint, "--source", "camera:DXA00094"]) == (
        "nsm stream: error: camera:DXA00094: no camera named 'DXA00094' "
        "(dv-processing found: DAVIS346_00001, DVXplorer_DXA00093)"
    )


def test_source_options_are_checked(checkpoint, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["stream", "--checkpoint", str(checkpoint), "--events", "x.aedat", "--source", "camera"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "argument --source: not allowed with argument --events" in err
    for argv, message in (
        (["--events", "x.aedat", "--reconnect"], "--stall-timeout and --reconnect apply to a live --source only"),
        (["--source", "dv://127.0.0.1"], "'dv://127.0.0.1': a network source is dv://HOST:PORT, e.g."),
        (["--source", "usb:3"], "'usb:3' is not a live source: give dv://HOST:PORT or camera[:NAME]"),
    ):
        assert message in one_line_error(capsys, ["--checkpoint", checkpoint, *argv])


class _EndlessInput:
    """A stand-in for a dv-processing input that always has a packet of 1000 events ready."""

    class _Store:
        def size(self):
            return 1000

        def numpy(self):
            return np.zeros(1000, dtype=[("timestamp", "<i8"), ("x", "<i2"), ("y", "<i2"), ("polarity", "u1")])

    def isEventStreamAvailable(self):
        return True

    def getEventResolution(self):
        return (32, 32)

    def isRunning(self):
        return True

    def getNextEventBatch(self):
        return self._Store()


def test_a_consumer_that_falls_behind_ends_the_stream_instead_of_growing_the_queue(monkeypatch):
    from events import live

    monkeypatch.setattr(live, "MAX_QUEUED_EVENTS", 50_000)
    source = live.LiveSource(
        "dv://fake:1", "dv network stream", _EndlessInput, "closed", stall_timeout_s=5, reconnect_s=None, notify=None
    )
    time.sleep(0.5)  # nothing is taken: the reader fills the queue up to the bound, then gives up
    taken = 0
    with pytest.raises(live.SourceLost, match="cannot keep up"):
        for chunk in source.iter_chunks():
            taken += len(chunk)
    assert 50_000 - 1000 <= taken <= 50_000  # what was queued within the bound, then the error
