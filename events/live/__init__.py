"""Live event sources through iniVation's dv-processing (the optional extra ``nsm-events[live]``).

:func:`open_source` opens ``dv://HOST:PORT`` (a dv-processing network event stream, as a
``dv.io.NetworkWriter`` or the DV software serves it) or ``camera[:NAME]`` (an attached iniVation
camera; NAME is its ``MODEL_SERIAL`` name or its serial number) as a :class:`LiveSource`, which is read
like an event file: ``name``, ``format``, ``sensor_size`` (the stream's event resolution) and
``iter_chunks(max_events)``, yielding ``EVENT_DTYPE`` arrays packet by packet as they arrive. This module
imports ``dv_processing`` only when a source is opened.

How a stream ends. The iterator returns at the end of the stream: the server closed the connection
(the network protocol has no other end), the camera stopped, or :meth:`LiveSource.stop` was called (from
a signal handler, say). With ``reconnect_s`` a lost connection is waited for instead: it is reopened with
a backoff (0.1 s doubling up to 2 s between tries) for at most ``reconnect_s`` seconds, and must come back
with the same sensor; a source that does not is :class:`SourceLost`. No packet for ``stall_timeout_s``
seconds on an open connection is :class:`SourceLost` too. Every message names the source; progress
(the end, the waiting, the reconnection) goes to the ``notify`` callback.

Data dropped on the way. A server or a network that drops packets leaves a gap in the event clock, which would be
classified as windows without events. :class:`ClockGaps` (``events.live.clock``; a source's ``clock_gaps``, fed
every packet) counts them by this rule: a pause between two consecutive events is a gap when it is longer than
``GAP_MIN_US`` (0.1 s) and longer than the time the ``GAP_HISTORY`` (1000) events before it took, i.e. about 1000
times their mean spacing (recorded scenes stay below about 100: a camera's noise events keep coming when nothing
moves). So at 20 000 events/s a pause of 0.1 s is a gap, at 100 events/s one of 10 s. Gaps are reported, not
refused: a scene that goes dark at once looks the same.

Never a hang, never a crash: dv-processing's ``NetworkReader`` blocks, holding the interpreter, until the
server's whole stream header arrives, and its reading thread aborts the process on a malformed packet. So a
network stream is read in a child process (``events.live.reader_child``), whose packets come through a pipe: the
stream header must arrive within ``stall_timeout_s`` of the child's connecting (else the child is killed and the
source is a :class:`LiveSourceError`: part of a header, or a server that is no dv-processing stream), and a child
that dies mid-stream (a malformed packet) ends the stream with :class:`SourceLost` naming the source and
dv-processing's last words. The child is killed when the source is closed or its process ends (on Linux also when
the thread that opened it ends, for one killed outright). Before it, a plain socket probes the server, which must
accept a connection and send data within ``stall_timeout_s`` (the probe's short connection is one more client for
the server, which sends the header to each). A header whose event resolution is not 1..32768 on each side
(0 x 0, say) is a :class:`LiveSourceError`. Cameras are opened in this process. Events are not checked here:
their order and bounds are checked where they are windowed (``events.stream.SlidingWindows``).

The package: ``source`` (``open_source``, ``LiveSource``: reading, stalls, reconnection), ``network`` (the probe
and the parent's side of the reader child), ``reader_child`` (the child), ``clock`` (``ClockGaps``), ``errors``.
"""

from events.live.clock import GAP_HISTORY, GAP_MIN_US, ClockGaps
from events.live.errors import LiveSourceError, SourceLost
from events.live.source import DEFAULT_STALL_S, INSTALL_HINT, MAX_QUEUED_EVENTS, LiveSource, open_source

__all__ = [
    "LiveSource",
    "LiveSourceError",
    "SourceLost",
    "ClockGaps",
    "open_source",
    "INSTALL_HINT",
    "DEFAULT_STALL_S",
    "MAX_QUEUED_EVENTS",
    "GAP_HISTORY",
    "GAP_MIN_US",
]
