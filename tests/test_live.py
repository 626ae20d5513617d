"""Live sources (issue 16): ``nsm stream --source dv://HOST:PORT`` and ``camera[:NAME]`` (``events.live``).

A dv-processing ``NetworkWriter`` in a child process (dv-processing cannot drop a connected writer in the
process that reads it) serves two seconds of a simulated recording in 20 ms packets on 127.0.0.1; the stream
is read in this process by ``nsm stream``. Every wait is bounded: the test timeouts, the server's own, and
``--stall-timeout``.
"""

from __future__ import annotations

import _thread
import json
import re
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
from nsm import MCSettings
from pipelines import cli
from pipelines.checkpoint import save_checkpoint
from pipelines.stream import TIMING_FIELDS, predict_recording

DROPPED = slice(-8, 8)  # the packets around the middle one that the "drop" server leaves out (320 ms): as SERVER
SPEC = events.FrameSpec(time_window_us=16_000, polarity="merge", downsample=8, frames_per_clip=6)
PACKET_US = 20_000

# argv: port, .npz of the events and their packets' bounds, width, height, first packet, end packet (exclusive),
# then: "close" (exit once sent), "hold" (keep the connection open), "swap" (send the middle two packets in
# reverse order, then close) or "drop" (leave out the middle DROPPED packets, then close)
SERVER = """
import os, sys, time
import numpy as np
import dv_processing as dv

port, path, width, height, first, end, then = sys.argv[1:]
data = np.load(path)
ev, bounds = data["events"], data["bounds"]
deadline = time.monotonic() + 30  # never outlive the test
packets = [ev[a:b] for a, b in zip(bounds[:-1], bounds[1:])][int(first):int(end)]
k = len(packets) // 2
if then == "swap":
    packets[k], packets[k + 1] = packets[k + 1], packets[k]
if then == "drop":
    del packets[k - 8 : k + 8]
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
    mc = MCSettings(samples=2)
    preds = predict_recording(tiny_net(), ev, SPEC, sensor, mc=mc, seed=3, classes=GESTURE_CLASSES, **kw)
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
    from events.live import network

    _, sensor, npy, _ = recording
    started = []
    real_opener = network.network_opener

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

    monkeypatch.setattr(network, "network_opener", opener)

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
    assert live["clock_gaps"] == 0 and live["largest_clock_gap"] is None
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


def test_packets_dropped_by_the_server_are_a_clock_gap_in_the_summary(recording, checkpoint, serve, tmp_path, capsys):
    ev, _, _, _ = recording
    packets = packets_of(ev)
    k = len(packets) // 2
    before, after = packets[k + DROPPED.start - 1]["t"][-1], packets[k + DROPPED.stop]["t"][0]
    port = free_port()
    serve(port, then="drop")
    status, out, summary = nsm_stream(checkpoint, tmp_path, "--source", f"dv://127.0.0.1:{port}")
    assert status == 0
    s = json.loads(summary.read_text())
    assert s["clock_gaps"] == 1 and s["clock_gap_s"] == pytest.approx((after - before) * 1e-6)
    assert s["largest_clock_gap"]["at_s"] == pytest.approx((before - ev["t"][0]) * 1e-6)
    assert capsys.readouterr().out.count(f"warning: 1 gap in the event clock ({(after - before) * 1e-6:.2f} s") == 1


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


def test_a_clock_gap_is_a_pause_longer_than_the_last_thousand_events_took_and_a_tenth_of_a_second():
    from events.live import GAP_HISTORY, GAP_MIN_US, ClockGaps

    def gaps(times, chunk=777):
        found = ClockGaps()
        for start in range(0, len(times), chunk):
            found.add(np.asarray(times[start : start + chunk]))
        return found

    steady = np.arange(5000) * 50  # 20 000 events/s: 1000 events take 50 ms
    lost = np.concatenate([steady, steady[-1] + 150_000 + np.arange(3000) * 50])  # 150 ms of it lost
    found = gaps(lost)
    assert (found.count, found.total_us) == (1, 150_000)
    assert found.largest == (int(steady[-1]), 150_000, pytest.approx((GAP_HISTORY - 1) / 49_950 * 1e6))
    assert [gaps(lost, chunk).count for chunk in (1, 5000, 10**6)] == [1, 1, 1]  # wherever packets are cut
    assert gaps(np.concatenate([steady, steady[-1] + GAP_MIN_US + np.arange(10)])).count == 0  # not over 0.1 s
    slow = np.arange(3000) * 5000  # 200 events/s: 1000 events take 5 s, a 2 s pause is no gap
    assert gaps(np.concatenate([slow, slow[-1] + 2_000_000 + slow])).count == 0
    rng = np.random.default_rng(0)  # a rate that changes a hundredfold, with pauses over 0.1 s, has no gap
    bursty = np.cumsum(rng.exponential(np.repeat(rng.choice([200.0, 20_000.0], 40), 500))).astype(np.int64)
    assert np.diff(bursty).max() > GAP_MIN_US and gaps(bursty).count == 0
    assert gaps(lost[: GAP_HISTORY - 1]).count == 0 and ClockGaps().summary()["largest_clock_gap"] is None


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

    monkeypatch.setattr(live.source, "MAX_QUEUED_EVENTS", 50_000)
    source = live.LiveSource(
        "dv://fake:1", "dv network stream", _EndlessInput, "closed", stall_timeout_s=5, reconnect_s=None, notify=None
    )
    time.sleep(0.5)  # nothing is taken: the reader fills the queue up to the bound, then gives up
    taken = 0
    with pytest.raises(live.SourceLost, match="cannot keep up"):
        for chunk in source.iter_chunks():
            taken += len(chunk)
    assert 50_000 - 1000 <= taken <= 50_000  # what was queued within the bound, then the error


# ------------------------------------------------------------------------------------------------
# hostile servers: part of a header, a bad header, malformed packets (issue 29)
# ------------------------------------------------------------------------------------------------

CAPTURE = """
import socket, struct, sys, time
import dv_processing as dv

width, height = int(sys.argv[1]), int(sys.argv[2])
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
writer = dv.io.NetworkWriter("127.0.0.1", port, dv.io.Stream.EventStream(0, "events", "nsm-test", (width, height)))
client = socket.create_connection(("127.0.0.1", port), timeout=10)
deadline = time.monotonic() + 10
while writer.getClientCount() == 0 and time.monotonic() < deadline:  # events go to the clients it has
    time.sleep(0.005)
store = dv.EventStore()
for i in range(5):
    store.push_back(1000 + i, i, i, True)
writer.writeEvents(store)
data = b""
def whole(data):  # the header (its int32 size, then that many bytes), then a packet (stream id, size, body)
    if len(data) < 4:
        return False
    cut = 4 + struct.unpack("<i", data[:4])[0]
    return len(data) >= cut + 8 and len(data) >= cut + 8 + struct.unpack("<i", data[cut + 4 : cut + 8])[0]
while not whole(data):
    data += client.recv(65536)
print(data.hex())
"""


@pytest.fixture(scope="module")
def wire(recording):
    """What a dv-processing ``NetworkWriter`` sends a client, captured in a child process: the stream header and
    the first packet (5 events) of a stream of the recording's sensor, and the header of a 0 x 0 sensor."""
    pytest.importorskip("dv_processing")
    sensor = recording[1]

    def capture(width, height) -> tuple[bytes, bytes]:
        out = subprocess.run(
            [sys.executable, "-c", CAPTURE, str(width), str(height)], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        data = bytes.fromhex(out.stdout.strip())
        cut = 4 + int.from_bytes(data[:4], "little")
        return data[:cut], data[cut:]

    header, packet = capture(sensor.width, sensor.height)
    return {"header": header, "packet": packet, "empty_header": capture(0, 0)[0]}


@pytest.fixture
def hostile_server():
    """``hostile_server(pieces, pause_s=0)``: a server on 127.0.0.1 (threads of this process) that sends every client
    ``pieces`` one after the other, ``pause_s`` apart, then holds the connection open, silent, until the test ends;
    returns its port."""
    done = threading.Event()
    sockets = []

    def start(pieces, pause_s=0.0):
        server = socket.create_server(("127.0.0.1", 0))
        server.settimeout(0.1)
        sockets.append(server)

        def talk(conn):
            with conn:
                for piece in pieces:
                    if done.wait(pause_s):
                        return
                    try:
                        conn.sendall(piece)
                    except OSError:
                        return
                done.wait(60)

        def accept():
            while not done.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                threading.Thread(target=talk, args=(conn,), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()
        return server.getsockname()[1]

    yield start
    done.set()
    for server in sockets:
        server.close()


HEADER_CUTS = {
    "half of it": lambda h: [h[: len(h) // 2]],
    "all but one byte": lambda h: [h[:-1]],
    "byte by byte, slowly": lambda h: [bytes([b]) for b in h],  # one byte every 50 ms: all of it would take 30 s
}


@pytest.mark.parametrize("cut", list(HEADER_CUTS))
def test_part_of_a_stream_header_is_an_error_within_the_stall_timeout(checkpoint, wire, hostile_server, capsys, cut):
    port = hostile_server(HEADER_CUTS[cut](wire["header"]), pause_s=0.05 if "slowly" in cut else 0.0)
    started = time.monotonic()
    argv = ["--checkpoint", checkpoint, "--source", f"dv://127.0.0.1:{port}", "--stall-timeout", "0.5"]
    assert one_line_error(capsys, argv) == (
        f"nsm stream: error: dv://127.0.0.1:{port}: no complete stream header within 0.5 s: the server sent part of "
        "one, or is not a dv-processing network stream"
    )
    assert time.monotonic() - started < 20  # the reader process's start, then 0.5 s: never the 30 s of the header


@pytest.mark.parametrize(
    "garbage",
    [b"\xff" * 64, b"\x00" * 64, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 4, bytes(range(256)), b"\x10\x00\x00\x00junk"],
)
def test_a_garbage_stream_header_is_one_error_naming_the_source(checkpoint, hostile_server, capsys, garbage):
    port = hostile_server([garbage])
    argv = ["--checkpoint", checkpoint, "--source", f"dv://127.0.0.1:{port}", "--stall-timeout", "0.5"]
    err = one_line_error(capsys, argv)
    assert err.startswith(f"nsm stream: error: dv://127.0.0.1:{port}: ")
    problems = ("no complete stream header within 0.5 s", "bad stream header: ", "died reading the stream header")
    assert any(problem in err for problem in problems), err


def test_a_header_with_a_zero_sensor_size_says_so(checkpoint, wire, hostile_server, capsys):
    port = hostile_server([wire["empty_header"]])
    argv = ["--checkpoint", checkpoint, "--source", f"dv://127.0.0.1:{port}", "--stall-timeout", "2"]
    assert one_line_error(capsys, argv) == (
        f"nsm stream: error: dv://127.0.0.1:{port}: the stream header gives a 0x0 sensor: not a valid event "
        "resolution (each side must be 1..32768)"
    )


def packet(stream_id: int, size: int, body: bytes) -> bytes:
    return stream_id.to_bytes(4, "little", signed=True) + size.to_bytes(4, "little", signed=True) + body


BAD_PACKETS = {
    "size -1": lambda good: packet(0, -1, good[8:]),
    "size -5": lambda good: packet(0, -5, good[8:]),
    "size 0": lambda good: packet(0, 0, good[8:]),
    "unknown stream id": lambda good: packet(7, len(good) - 8, good[8:]),
    "garbage body": lambda good: packet(0, len(good) - 8, b"\xff" * (len(good) - 8)),
    "body of another type": lambda good: packet(0, len(good) - 8, good[8:].replace(b"EVTS", b"FRME")),
}


@pytest.mark.parametrize("bad", list(BAD_PACKETS))
def test_a_malformed_packet_ends_the_stream_with_one_error_not_a_signal(
    checkpoint, wire, hostile_server, tmp_path, capsys, bad
):
    """dv-processing's reading thread aborts its process on these: the reader process dies, not this one; the
    summary is written and the status is 1 (the source was lost)."""
    good = wire["packet"]
    port = hostile_server([wire["header"], good, BAD_PACKETS[bad](good)])
    status, out, summary = nsm_stream(checkpoint, tmp_path, "--source", f"dv://127.0.0.1:{port}", "--stall-timeout", 5)
    err = stderr_lines(capsys)
    assert status == 1 and summary.exists(), err
    assert len(err) == 1 and err[0].startswith(f"nsm stream: dv://127.0.0.1:{port}: "), err
    assert re.search(r"dv-processing's reader died after \d+ events \(SIGABRT: .+\): a malformed packet", err[0]), err
