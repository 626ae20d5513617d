"""Opening and reading a live source (``events.live``, whose docstring says how a stream ends, stalls and comes
back): :func:`open_source` and :class:`LiveSource`."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import numpy as np

from events.errors import InputError
from events.formats import DEFAULT_CHUNK_EVENTS, check_chunk_size
from events.live import network
from events.live.clock import ClockGaps
from events.live.errors import LiveSourceError, SourceLost
from events.live.reader_child import dv_problem
from events.types import EVENT_DTYPE, SensorSize

INSTALL_HINT = "pip install nsm-events[live]"
DEFAULT_STALL_S = 10.0  # seconds without a packet (or, connecting, without an answer) before a source is stalled
POLL_S = 0.001  # the pause between polls of a source with nothing to read: the latency it adds
MAX_SIDE = 1 << 15  # the widest and highest sensor a stream header may give (x and y are int16)
FIRST_RETRY_S, MAX_RETRY_S = 0.1, 2.0  # reconnecting: the first pause between tries, doubled up to this
MAX_QUEUED_EVENTS = 1 << 24
"""The most events read and not yet taken by :meth:`LiveSource.iter_chunks` (16 M events, 256 MiB): a consumer
that falls this far behind the stream ends it with :class:`SourceLost` rather than letting memory grow."""


def _import_dv(source: str):
    try:
        import dv_processing
    except ImportError:
        raise LiveSourceError(f"live sources need iniVation's dv-processing: {INSTALL_HINT}", source) from None
    return dv_processing


def _event_array(store) -> np.ndarray:
    """A dv-processing ``EventStore`` as an ``EVENT_DTYPE`` array."""
    raw = store.numpy()
    out = np.empty(len(raw), dtype=EVENT_DTYPE)
    out["x"], out["y"], out["t"], out["p"] = raw["x"], raw["y"], raw["timestamp"], raw["polarity"]
    return out


def _camera_opener(dv, wanted: str | None, name: str) -> Callable:
    def open_input():
        found = {f"{d.cameraModel}_{d.serialNumber}": d for d in dv.io.camera.discover()}
        picked = [n for n, d in found.items() if wanted is None or wanted in (n, str(d.serialNumber))]
        if not picked:
            listed = ", ".join(sorted(found)) or "none"
            what = "no iniVation camera is attached" if wanted is None else f"no camera named {wanted!r}"
            raise LiveSourceError(f"{what} (dv-processing found: {listed})", name)
        try:
            return dv.io.camera.open(found[picked[0]])
        except RuntimeError as err:
            raise LiveSourceError(f"cannot open {picked[0]}: {dv_problem(err)}", name) from None

    return open_input


def _sensor(dv_input, name: str) -> SensorSize:
    """The input's event resolution: ``LiveSourceError`` when it has none, or one outside 1..``MAX_SIDE``."""
    resolution = dv_input.getEventResolution() if dv_input.isEventStreamAvailable() else None
    if resolution is None:
        raise LiveSourceError("the stream carries no events", name)
    width, height = (int(v) for v in resolution)
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise LiveSourceError(
            f"the stream header gives a {width}x{height} sensor: not a valid event resolution (each side must be "
            f"1..{MAX_SIDE})",
            name,
        )
    return SensorSize(width, height, 2)


class LiveSource:
    """An open live event stream (see ``events.live``); made by :func:`open_source`.

        ``name``: the source as given (``dv://HOST:PORT``, ``camera[:NAME]``); ``format``: what it is;
        ``sensor_size``: the stream's event resolution; ``events_received``: events read so far; ``clock_gaps``: the
        gaps in the event clock of the packets taken so far (:class:`ClockGaps`). A thread reads
        the source from the moment it is opened, since dv-processing discards the packets not yet read when a
        connection closes; its packets wait in a queue for :meth:`iter_chunks`, at most ``MAX_QUEUED_EVENTS`` events
    (beyond, the stream ends with :class:`SourceLost`: the consumer cannot keep up). A context manager:
        :meth:`close` stops the thread, which then drops the connection or the camera.
    """

    def __init__(
        self,
        name: str,
        format: str,
        open_input: Callable,
        ended: str,
        *,
        stall_timeout_s: float,
        reconnect_s: float | None,
        notify: Callable[[str], None] | None,
    ):
        self.name, self.format, self._open_input, self._ended = name, format, open_input, ended
        self.stall_timeout_s, self.reconnect_s = stall_timeout_s, reconnect_s
        self._notify = notify or (lambda message: None)
        self._input = open_input()
        try:
            self.sensor_size = _sensor(self._input, name)
        except LiveSourceError:
            self._drop_input()
            raise
        self.events_received = 0
        self.clock_gaps = ClockGaps()
        self._stopped = self._closed = False
        self._packets: queue.SimpleQueue = queue.SimpleQueue()
        self._queued = 0  # events in the queue (the reader adds, iter_chunks takes away, under _lock)
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"read {name}", daemon=True)
        self._reader.start()

    def stop(self) -> None:
        """End the stream: reading stops at once, the packets read before still come out (safe to call from a
        signal handler or another thread)."""
        self._stopped = True

    def iter_chunks(self, max_events: int = DEFAULT_CHUNK_EVENTS) -> Iterator[np.ndarray]:
        """Yield ``EVENT_DTYPE`` arrays of at most ``max_events`` events, each packet as soon as it arrives, until
        the stream ends; :class:`SourceLost` when it stalls or does not come back in time to ``reconnect_s``."""
        max_events = check_chunk_size(max_events, self.name)
        while True:
            try:
                item = self._packets.get(timeout=0.1)  # a timeout, so that signal handlers run while waiting
            except queue.Empty:
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            with self._lock:
                self._queued -= len(item)
            self.clock_gaps.add(item["t"])
            for start in range(0, len(item), max_events):
                yield item[start : start + max_events]

    def _read(self) -> None:
        """The reading thread: each packet into the queue, then ``None`` at the end or the error that ended it."""
        try:
            while (events := self._next_packet()) is not None:
                with self._lock:
                    self._queued += len(events)
                    behind = self._queued
                if behind > MAX_QUEUED_EVENTS:
                    raise SourceLost(
                        f"{behind} events wait to be classified (more than {MAX_QUEUED_EVENTS}): the classifier "
                        "cannot keep up with the stream (fewer --samples, a larger --hop-ms or a smaller network)",
                        self.name,
                    )
                self._packets.put(events)
            self._packets.put(None)
        except BaseException as err:  # handed over to iter_chunks, to be raised there
            self._packets.put(err)
        finally:
            self._drop_input()

    def _drop_input(self) -> None:
        """Let go of the input: a reader process is ended at once, dv-processing's own inputs when freed."""
        dv_input, self._input = self._input, None
        close = getattr(dv_input, "close", None)
        if close is not None:
            close()

    def _next_packet(self) -> np.ndarray | None:
        """The next packet's events, or ``None`` at the end of the stream (in the reading thread)."""
        last_packet = time.monotonic()
        while not self._stopped:
            running = self._input.isRunning()  # asked first: a packet that came just before the end is still read
            store = self._input.getNextEventBatch()
            if store is not None:
                self.events_received += store.size()
                return _event_array(store)
            if not running:
                if self.reconnect_s is None:
                    self._notify(f"{self.name}: {self._ended} after {self.events_received} events: end of the stream")
                    return None
                self._reconnect()
                last_packet = time.monotonic()
            elif time.monotonic() - last_packet > self.stall_timeout_s:
                raise SourceLost(
                    f"no packet for {self.stall_timeout_s:g} s after {self.events_received} events: the source stalled",
                    self.name,
                )
            else:
                time.sleep(POLL_S)
        if not self._closed:
            self._notify(f"{self.name}: stopped after {self.events_received} events: end of the stream")
        return None

    def _reconnect(self) -> None:
        """Reopen the lost source (see ``events.live``); return without it once :meth:`stop` is called."""
        self._notify(
            f"{self.name}: {self._ended} after {self.events_received} events; "
            f"waiting up to {self.reconnect_s:g} s for it to come back"
        )
        self._drop_input()
        lost = time.monotonic()
        pause = FIRST_RETRY_S
        while True:
            try:
                new = self._open_input()
                break
            except LiveSourceError as err:
                problem = err.problem
            left = lost + self.reconnect_s - time.monotonic()
            if left <= 0:
                raise SourceLost(f"did not come back within {self.reconnect_s:g} s (last try: {problem})", self.name)
            self._pause(min(pause, left))
            if self._stopped:
                return
            pause = min(2 * pause, MAX_RETRY_S)
        self._input = new  # dropped by the reading thread, whatever happens next
        try:
            sensor = _sensor(new, self.name)
        except LiveSourceError as err:
            raise SourceLost(f"came back with a bad stream: {err.problem}", self.name) from None
        if sensor != self.sensor_size:
            raise SourceLost(
                f"came back with a {sensor.width}x{sensor.height} sensor instead of "
                f"{self.sensor_size.width}x{self.sensor_size.height}",
                self.name,
            )
        self._notify(f"{self.name}: back after {time.monotonic() - lost:.1f} s")

    def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less once :meth:`stop` is called."""
        end = time.monotonic() + seconds
        while not self._stopped and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))

    def close(self) -> None:
        """Stop reading; the reading thread drops the connection (or releases the camera) as it ends."""
        self._closed = self._stopped = True
        self._reader.join(self.stall_timeout_s + 1)  # it ends within a poll, or a connection attempt

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LiveSource({self.name!r}, sensor_size={tuple(self.sensor_size)})"


def open_source(
    source: str,
    *,
    stall_timeout_s: float = DEFAULT_STALL_S,
    reconnect_s: float | None = None,
    notify: Callable[[str], None] | None = None,
) -> LiveSource:
    """Open ``dv://HOST:PORT`` or ``camera[:NAME]`` as a :class:`LiveSource` (see ``events.live``).

    ``stall_timeout_s``: seconds without a packet, or while connecting without an answer, before giving up.
    ``reconnect_s``: wait this long for a lost source to come back (``None``: its loss ends the stream).
    ``notify``: called with each one-line progress message. ``ValueError`` for a malformed ``source``;
    :class:`LiveSourceError` when dv-processing is not installed or the source cannot be opened (no server,
    not a dv stream, no such camera: the cameras found are listed).
    """
    for name, value in (("stall_timeout_s", stall_timeout_s), ("reconnect_s", reconnect_s)):
        if value is not None and not value > 0:
            raise InputError(f"{name} must be a positive number of seconds, got {value!r}")
    settings = dict(stall_timeout_s=float(stall_timeout_s), reconnect_s=reconnect_s, notify=notify)
    if source.startswith("dv://"):
        try:
            parts = urlsplit(source)
            host, port = parts.hostname, parts.port
        except ValueError:
            host = port = None
        if not host or not port or parts.path or parts.query or parts.fragment:
            raise InputError(f"{source!r}: a network source is dv://HOST:PORT, e.g. dv://127.0.0.1:7777")
        _import_dv(source)  # here, for its error; the reader process imports it again
        opener = network.network_opener(host, port, source, float(stall_timeout_s))
        return LiveSource(source, "dv network stream", opener, "the server closed the connection", **settings)
    kind, _, wanted = source.partition(":")
    if kind != "camera":
        raise InputError(f"{source!r} is not a live source: give dv://HOST:PORT or camera[:NAME]")
    opener = _camera_opener(_import_dv(source), wanted or None, source)
    return LiveSource(source, "iniVation camera", opener, "the camera stopped", **settings)
