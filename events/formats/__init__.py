"""Event file formats: one module (or package) per format, with its streaming reader, its writer where the
project writes the format, and its record (``FORMAT``, :class:`~events.formats.record.EventFormat`: name, how its
files are recognized, name suffixes, reader, writer, sensor size), registered by one line in
``events.formats.registry``, whose list is the one place that names every format (docs/design.md, section 5,
tabulates it).

Every reader derives from :class:`EventFileReader`: it parses the file's header when it is
made, then :meth:`EventFileReader.iter_chunks` decodes the body in bounded batches, in file
order. Corruption met mid-file is reported only after every good event before it has been
yielded, so a streaming consumer can act on the good prefix first. ``events.io`` picks the
reader from the file's content and name; this module imports no format module.

Every path a reader or data set opens goes through :func:`check_regular_file` first, so a FIFO,
a device, a socket, a directory or a symbolic-link loop is refused before anything opens it (a
FIFO would block ``open`` forever, a device could be read without end).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from events.atomic import file_kind
from events.errors import InputError, MissingInputError
from events.types import (
    EVENT_DTYPE,
    EventFormatError,
    Recording,
    SensorSize,
    bad_times,
    check_in_bounds,
    check_int,
    empty_events,
    first_disorder,
)

DEFAULT_CHUNK_EVENTS = 1_000_000


def check_regular_file(path: str | os.PathLike, what: str = "event file") -> Path:
    """``path`` as a :class:`~pathlib.Path`, once ``os.stat`` (links followed) shows a regular file.

    Called before anything opens the file, so nothing blocks or reads without end:
    ``FileNotFoundError`` when it is missing (or a dangling link); ``EventFormatError`` naming the
    file when it is a directory, FIFO, device or socket, or a symbolic-link loop; other ``OSError``
    (permission, a path component that is a file) as the system reports them, with the path.
    ``what`` names the file's role in the messages ("event file", "labels file", ...).
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        dangling = " (a dangling symbolic link)" if os.path.islink(path) else ""
        raise MissingInputError(f"no such {what}{dangling}: {path}") from None
    except ValueError as err:  # an embedded NUL byte
        raise EventFormatError(f"unusable {what} path: {err}", repr(str(path))) from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise EventFormatError(f"{what} path is a symbolic link loop", path) from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise EventFormatError(f"{what} is {file_kind(st.st_mode)}, not a regular file; refusing to open it", path)
    return path


def check_chunk_size(value, path=None, name: str = "max_events") -> int:
    """``value`` as an ``int`` >= 1, else ``ValueError`` naming ``name`` and (when given) the file."""
    where = "" if path is None else f"{path}: "
    return check_int(f"{where}{name} (events per chunk)", value, 1)


class EventFileReader:
    """Streaming reader of one event file.

    Attributes: ``path`` (Path), ``format`` (str, a format name of :mod:`events.io`),
    ``sensor_size`` (:class:`~events.types.SensorSize`). Subclasses parse the header in
    ``__init__`` and implement :meth:`_chunks`. Usable as a context manager; :meth:`close`
    releases whatever the reader holds open.
    """

    format: str = ""

    def __init__(self, path: str | os.PathLike):
        self.path = check_regular_file(path)
        self.sensor_size: SensorSize = SensorSize(0, 0, 2)

    def iter_chunks(self, max_events: int = DEFAULT_CHUNK_EVENTS) -> Iterator[np.ndarray]:
        """Yield ``EVENT_DTYPE`` batches of at most ``max_events`` events, in file order.

        Memory is bounded by ``max_events`` (plus one packet of the file where the format has
        packets). On damage the good batches before it are yielded first, then
        :class:`~events.types.EventFormatError` is raised. A ``max_events`` that is not a positive
        integer is a ``ValueError`` naming it and the file, raised here rather than on the first batch.
        """
        return self._batches(check_chunk_size(max_events, self.path))

    def _batches(self, max_events: int) -> Iterator[np.ndarray]:
        batcher = Batcher(max_events)
        try:
            for events in self._chunks(max_events):
                yield from batcher.add(events)
        except Exception:
            # Hand over the good events decoded before the damage, then re-raise.
            if batcher.pending:
                yield from batcher.flush()
            raise
        yield from batcher.flush()

    def _chunks(self, max_events: int) -> Iterator[np.ndarray]:  # pragma: no cover - abstract
        raise NotImplementedError

    def read(self) -> Recording:
        """The whole file as a :class:`~events.types.Recording` (holds every event in memory)."""
        parts = list(self.iter_chunks())
        events = np.concatenate(parts) if parts else empty_events()
        return Recording(events=events, sensor_size=self.sensor_size, path=str(self.path), meta={"format": self.format})

    def close(self) -> None:
        """Release open handles (readers that hold none need not override this)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, sensor_size={tuple(self.sensor_size)})"


class Batcher:
    """Regroups event arrays of any length into batches of exactly ``size`` (the last shorter)."""

    def __init__(self, size: int):
        self.size = size
        self._parts: list[np.ndarray] = []
        self.pending = 0

    def add(self, events: np.ndarray) -> Iterator[np.ndarray]:
        if len(events) == 0:
            return
        self._parts.append(events)
        self.pending += len(events)
        if self.pending < self.size:
            return
        joined = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
        n_full = len(joined) // self.size * self.size
        for start in range(0, n_full, self.size):
            yield joined[start : start + self.size]
        rest = joined[n_full:]
        self._parts = [rest] if len(rest) else []
        self.pending = len(rest)

    def flush(self) -> Iterator[np.ndarray]:
        if self.pending:
            joined = np.concatenate(self._parts) if len(self._parts) > 1 else self._parts[0]
            self._parts, self.pending = [], 0
            yield joined


def as_event_array(events, name: str = "events") -> np.ndarray:
    """Validate a writer's input: a structured array with integer fields x, y, t, p.

    Returns it as ``EVENT_DTYPE`` (values must fit: x, y in int16, p in int8).
    """
    arr = np.asarray(events)
    if arr.dtype.names is None or not {"x", "y", "t", "p"} <= set(arr.dtype.names):
        raise InputError(f"{name} must be a structured array with fields x, y, t, p; got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise InputError(f"{name} must be one-dimensional, got shape {arr.shape}")
    out = np.empty(len(arr), dtype=EVENT_DTYPE)
    for f in ("x", "y", "t", "p"):
        col = arr[f]
        if col.dtype.kind not in "iub":
            raise InputError(f"{name}[{f!r}] must hold integers, got {col.dtype}")
        info = np.iinfo(EVENT_DTYPE[f])
        if len(col) and (col.min() < info.min or col.max() > info.max):
            raise InputError(f"{name}[{f!r}] holds values outside {EVENT_DTYPE[f]}")
        out[f] = col
    return out


def native_call(fn, path, what: str):
    """Run one call into a compiled decoder or encoder (the ``aedat`` and ``faery`` packages), turning any failure
    into ``EventFormatError`` naming ``path``, with ``what`` (e.g. "AEDAT 4 decoder failed at packet 3") before
    the library's message; Rust panics arrive as ``BaseException`` subclasses, so all but the interpreter's own
    exits are caught."""
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit, GeneratorExit, StopIteration, MemoryError):
        raise
    except BaseException as err:  # noqa: BLE001 - pyo3 PanicException is a BaseException
        raise EventFormatError(f"{what}: {type(err).__name__}: {err}", path) from None


class CheckedChunks:
    """What a streaming writer checks of each chunk it is handed (:meth:`check`): a structured array of integer
    fields x, y, t, p (:func:`as_event_array`), on ``sensor_size`` (``EventFormatError`` naming ``path``
    otherwise), with ``t >= 0`` and in time order, also across chunks (``ValueError`` naming ``path``). Keeps
    ``n`` (events checked so far) and ``last_t``."""

    def __init__(self, path, sensor_size):
        self.path, self.sensor_size = path, SensorSize(*sensor_size)
        self.last_t: int | None = None
        self.n = 0

    def check(self, events) -> np.ndarray:
        """``events`` as ``EVENT_DTYPE``, once checked."""
        ev = as_event_array(events)
        check_in_bounds(ev, self.sensor_size, self.path)
        if bad_times(ev["t"]).any() or first_disorder(ev, self.last_t) >= 0:
            raise InputError(f"{self.path}: event timestamps must be >= 0 and in time order")
        if len(ev):
            self.last_t = int(ev["t"][-1])
        self.n += len(ev)
        return ev
