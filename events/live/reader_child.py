"""The child process that reads a dv-processing network stream for ``events.live``, so that the stream cannot
block or kill the process that classifies it.

dv-processing's ``NetworkReader`` blocks, holding the interpreter, until the server's whole stream header has
arrived (a server that sends part of it and then nothing blocks it until the server closes), and its reading
thread aborts the process (SIGABRT, an uncaught C++ exception) on a malformed packet: a size of -1 or 0, an
unknown stream id, a body that is no event packet. Run here, in a process of its own, the first is a wait that
``events.live`` bounds by its stall timeout, and the second ends this process only, which ``events.live``
reports as one error naming the source.

Run as ``python -m events.live.reader_child HOST PORT FD PARENT_PID``. It sends pickled tuples on the
``multiprocessing.connection.Connection`` of file descriptor ``FD`` (write end of a pipe):

    ("connecting",)            dv-processing imported; connecting and waiting for the stream header
    ("open", (w, h) or None)   the header arrived: the stream's event resolution, None when it carries no events
    ("events", array)          one packet: ``EventStore.numpy()`` (fields timestamp, x, y, polarity)
    ("end",)                   the server closed the connection
    ("error", message)         dv-processing raised an error (the message without its C++ location)

and exits after the last two. It also ends when its parent does (Linux: the parent-death signal, which also
covers a parent killed while this process waits in dv-processing; elsewhere: the next packet it cannot send).
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL_S = 0.001  # the pause between polls of a reader with nothing to read


def dv_problem(err: Exception) -> str:
    """dv-processing's message without the location of the C++ code that raised it."""
    return str(err).split(" [", 1)[0]


def _die_with_parent(parent_pid: int) -> None:
    """Have the system kill this process when its parent ends (Linux); exit now if the parent is already gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:
        os._exit(0)


def serve(host: str, port: int, conn) -> None:
    """Read the stream at ``host:port`` and send what happens on ``conn`` (the module docstring's messages)."""
    import dv_processing as dv

    conn.send(("connecting",))
    try:
        reader = dv.io.NetworkReader(host, port)
    except RuntimeError as err:
        conn.send(("error", dv_problem(err)))
        return
    available = reader.isEventStreamAvailable()
    conn.send(("open", tuple(int(v) for v in reader.getEventResolution()) if available else None))
    while True:
        running = reader.isRunning()  # asked first: a packet that came just before the end is still read
        try:
            store = reader.getNextEventBatch()
        except RuntimeError as err:
            conn.send(("error", dv_problem(err)))
            return
        if store is not None:
            conn.send(("events", store.numpy()))
        elif not running:
            conn.send(("end",))
            return
        else:
            time.sleep(POLL_S)


def main(argv: list[str]) -> None:
    from multiprocessing.connection import Connection

    host, port, fd, parent = argv
    _die_with_parent(int(parent))
    conn = Connection(int(fd), readable=False)
    try:
        serve(host, int(port), conn)
    except (BrokenPipeError, ConnectionResetError):  # the parent stopped listening
        pass
    finally:
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
