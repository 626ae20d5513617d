"""The parent's side of a dv-processing network stream read in a child process (``events.live.reader_child``;
why: ``events.live``): a socket probe of the server, then the child, read through the methods
``events.live.source.LiveSource`` calls on dv-processing's own inputs."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from multiprocessing.connection import Connection

import numpy as np

from events.live.errors import LiveSourceError, SourceLost

CHILD_START_S = 60.0  # the most a reader child may take to start (Python, numpy, dv-processing imported)


def _probe(host: str, port: int, name: str, timeout_s: float) -> None:
    """Return once a server at ``host:port`` accepts a connection and sends data within ``timeout_s`` each."""
    try:
        conn = socket.create_connection((host, port), timeout=timeout_s)
    except TimeoutError:
        raise LiveSourceError(f"no answer from the server within {timeout_s:g} s", name) from None
    except OSError as err:
        raise LiveSourceError(f"cannot connect: {err.strerror or err}", name) from None
    with conn:
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            raise LiveSourceError(
                f"the server sent nothing within {timeout_s:g} s: not a dv-processing network stream?", name
            ) from None
        except OSError as err:
            raise LiveSourceError(f"connection failed: {err.strerror or err}", name) from None
    if not first:
        raise LiveSourceError("the server closed the connection at once (too many clients?)", name)


class _Packet:
    """A packet from the reader child, read as a dv-processing ``EventStore`` is (``size``, ``numpy``)."""

    def __init__(self, raw: np.ndarray):
        self._raw = raw

    def size(self) -> int:
        return len(self._raw)

    def numpy(self) -> np.ndarray:
        return self._raw


def _end_child(proc: subprocess.Popen, conn: Connection) -> None:
    """Kill and reap a reader child, close its pipe (also at exit, through ``weakref.finalize``)."""
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass
    conn.close()


class IsolatedReader:
    """A dv-processing ``NetworkReader`` run in a child process (``events.live.reader_child``), read
    through the methods ``LiveSource`` calls on dv-processing's inputs. Opening returns once the stream header
    has arrived: ``LiveSourceError`` when it does not within ``timeout_s`` of the child's connecting, when
    dv-processing refuses it, or when the child dies; a child that dies later is :class:`SourceLost`."""

    def __init__(self, host: str, port: int, name: str, timeout_s: float):
        self.name = name
        read_fd, write_fd = os.pipe()
        self._conn = Connection(read_fd, writable=False)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # holds ``events``
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "events.live.reader_child", host, str(port), str(write_fd), str(os.getpid())],
                pass_fds=(write_fd,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={**os.environ, "PYTHONPATH": path},
            )
        except OSError as err:
            self._conn.close()
            raise LiveSourceError(f"cannot start the stream's reader process: {err.strerror or err}", name) from None
        finally:
            os.close(write_fd)
        self._finalizer = weakref.finalize(self, _end_child, self._proc, self._conn)
        self._last_words: collections.deque[str] = collections.deque(maxlen=4)  # of the child's stderr
        self._drain = threading.Thread(target=self._drain_stderr, name=f"stderr of {name}", daemon=True)
        self._drain.start()
        self._ended, self._events = False, 0
        try:
            self._expect("connecting", CHILD_START_S, "start")
            self.resolution = self._expect("open", timeout_s, "header")[1]
        except BaseException:
            self.close()
            raise

    def _drain_stderr(self) -> None:
        for line in self._proc.stderr:
            text = "".join(c if c.isascii() and c.isprintable() else "?" for c in line.decode("ascii", "replace"))
            text = " ".join(text.replace("what():", "").split())  # C++'s "  what():  <message>"
            if text:
                self._last_words.append(text[:200])

    def _expect(self, kind: str, timeout_s: float, stage: str) -> tuple:
        """The child's next message, which must be ``kind``, within ``timeout_s``."""
        if not self._conn.poll(timeout_s):
            if stage == "start":
                raise LiveSourceError(f"the stream's reader process did not start within {timeout_s:g} s", self.name)
            raise LiveSourceError(
                f"no complete stream header within {timeout_s:g} s: the server sent part of one, or is not a "
                "dv-processing network stream",
                self.name,
            )
        message = self._receive(LiveSourceError, f"reading the stream {stage}", "not a dv-processing network stream?")
        if message[0] == "error":
            raise LiveSourceError(f"bad stream {stage}: {message[1]}", self.name)
        if message[0] != kind:
            raise LiveSourceError(f"the stream's reader process sent {message[0]!r} instead of {kind!r}", self.name)
        return message

    def _receive(self, error: type, when: str, why: str) -> tuple:
        """The child's next message; when it is gone, ``error`` naming ``when``, how the child died, its last words
        on stderr (C++'s ``what()``) and ``why``."""
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            pass
        try:
            status = self._proc.wait(5)
        except subprocess.TimeoutExpired:
            status = None
        self._drain.join(1)  # its last words, written as it died
        if status is None or status >= 0:
            how = "its pipe closed" if status is None else f"exit status {status}"
        else:
            how = signal.Signals(-status).name if -status in signal.valid_signals() else f"signal {-status}"
        said = f": {self._last_words[-1]}" if self._last_words else ""
        raise error(f"dv-processing's reader died {when} ({how}{said}): {why}", self.name)

    def isEventStreamAvailable(self) -> bool:  # dv-processing's names, as LiveSource calls them
        return self.resolution is not None

    def getEventResolution(self):
        return self.resolution

    def isRunning(self) -> bool:
        return not self._ended

    def getNextEventBatch(self) -> _Packet | None:
        """The next packet, or ``None`` when none is waiting or the stream has ended; :class:`SourceLost` when the
        child died or dv-processing raised an error."""
        if self._ended or not self._conn.poll():
            return None
        message = self._receive(SourceLost, f"after {self._events} events", "a malformed packet in the stream")
        self._events += len(message[1]) if message[0] == "events" else 0
        if message[0] == "events":
            return _Packet(message[1])
        self._ended = True
        if message[0] == "error":
            raise SourceLost(f"the stream failed: {message[1]}", self.name)
        return None

    def close(self) -> None:
        """Kill the child (it holds the connection) and close the pipe."""
        self._finalizer()


def network_opener(host: str, port: int, name: str, timeout_s: float) -> Callable:
    def open_input():
        _probe(host, port, name, timeout_s)
        return IsolatedReader(host, port, name, timeout_s)

    return open_input
