"""The project's own HDF5 event files: :class:`HDF5EventReader`, the streaming :class:`HDF5Writer` and
:func:`write_hdf5` (a whole array at once), the only code that writes them.

Layout (HDF5, written with h5py):

    /                  attrs: format = "nsm-events" (the marker), format_version = 1,
                              width, height, polarities (the sensor)
    /events/x          int16[n]   column
    /events/y          int16[n]   row
    /events/t          int64[n]   timestamp, µs
    /events/p          int8[n]    polarity 0/1

The four datasets are contiguous and of equal length; event i is ``(x[i], y[i], t[i], p[i])``,
in recording order (timestamps never decrease). Reading slices them ``max_events`` at a time, so memory stays
bounded. An HDF5 file without the marker (e.g. a frame cache) is not an event file. Anything h5py cannot
read, a missing or mis-shaped column, a bad sensor attribute, an event off the sensor or with
a polarity other than 0/1, a timestamp that is negative or beyond int64, or one earlier than the event before
it raises ``EventFormatError`` (with the event's index, and the byte offset of the offending value where HDF5
stores it contiguously), after every good event before it has been yielded.

The root's attributes are read by their stored type first (metadata only): the marker as a string, the others as
integers; anything else is refused unread. The marker is written as a fixed-length string, stored in the attribute
itself. Files written before that hold it as a variable-length string, whose characters live in the file's global
heap, and libhdf5 (2.0.0) loops forever on a damaged global heap collection (a free-space object of size 0, found
by mutation fuzzing); so such a marker is read by a child interpreter within ``events.h5attrs.HEAP_READ_TIMEOUT_S``
seconds, and a child that runs out of time is an ``EventFormatError`` naming the file, not a hang.

An event file holds its own data: reading it never opens another file. The group and the columns must be plain
(hard) links, not soft or external links, and a column that is a virtual dataset (its data mapped from other
files, read as fill values where they are missing) or that keeps its data in external raw files is refused with
``EventFormatError`` naming the column and the files it points at.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack

import numpy as np

from events.atomic import atomic_write
from events.errors import InputError
from events.formats import CheckedChunks, EventFileReader, as_event_array
from events.formats.record import EventFormat, Signature
from events.types import EVENT_DTYPE, EventFormatError, SensorSize, bad_times, first_disorder

FORMAT_MARKER = "nsm-events"
FORMAT_VERSION = 1
GROUP = "events"
COLUMNS = ("x", "y", "t", "p")
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
MAX_SIDE = 1 << 15
"""The widest and tallest sensor an event file may give (and the writer takes)."""


class HDF5EventReader(EventFileReader):
    """Streaming reader of one project HDF5 event file; keeps the file open until :meth:`close`."""

    format = "hdf5"

    def __init__(self, path):
        super().__init__(path)
        import h5py

        self._file = None
        try:
            self._file = h5py.File(self.path, "r")
            self.sensor_size, self._columns = self._check_layout()
        except EventFormatError:
            self.close()
            raise
        except Exception as err:  # h5py raises OSError, KeyError, ValueError, ... on damage
            self.close()
            raise EventFormatError(f"unreadable HDF5 file ({type(err).__name__}: {err})", self.path) from err
        self.n_events = len(self._columns[0])

    def _check_layout(self):
        f, path = self._file, self.path
        marker = _string_attribute(f, "format", path)
        if marker != FORMAT_MARKER:
            raise EventFormatError(
                f"HDF5 file is not a project event file (attribute format={marker!r}, expected {FORMAT_MARKER!r})", path
            )
        version = _integer_attribute(f, "format_version")
        if version != FORMAT_VERSION:
            raise EventFormatError(
                f"unsupported event file version {version!r} (this reader knows {FORMAT_VERSION})", path
            )
        dims = []
        for name, top in (("width", MAX_SIDE), ("height", MAX_SIDE), ("polarities", 2)):
            v = _integer_attribute(f, name)
            if not (isinstance(v, (int, np.integer)) and 1 <= int(v) <= top):
                raise EventFormatError(f"attribute {name}={v!r} must be an integer in 1..{top}", path)
            dims.append(int(v))
        _check_link(f, GROUP, f"/{GROUP}", path)
        group = f.get(GROUP)
        if group is None or not hasattr(group, "keys"):
            raise EventFormatError(f"no '/{GROUP}' group", path)
        cols = []
        for name in COLUMNS:
            _check_link(group, name, f"/{GROUP}/{name}", path)
            ds = group.get(name)
            if ds is None or not hasattr(ds, "shape"):
                raise EventFormatError(f"no dataset '/{GROUP}/{name}'", path)
            _check_own_data(ds, f"/{GROUP}/{name}", path)
            if ds.ndim != 1 or ds.dtype.kind not in "iu":
                raise EventFormatError(
                    f"'/{GROUP}/{name}' must be a 1-D integer dataset, got shape {ds.shape} dtype {ds.dtype}", path
                )
            cols.append(ds)
        if len({len(c) for c in cols}) != 1:
            raise EventFormatError(
                "event columns differ in length: " + ", ".join(f"{n}={len(c)}" for n, c in zip(COLUMNS, cols)), path
            )
        return SensorSize(*dims), cols

    def _chunks(self, max_events: int) -> Iterator[np.ndarray]:
        if self._file is None:
            raise InputError(f"{self.path}: reader is closed")
        w, h, _ = self.sensor_size
        limits = {"x": w, "y": h, "p": 2}
        last_t = None  # of the event before the batch
        for start in range(0, self.n_events, max_events):
            stop = min(start + max_events, self.n_events)
            out = np.empty(stop - start, dtype=EVENT_DTYPE)
            bad_at = None
            for name, ds in zip(COLUMNS, self._columns):
                try:
                    col = ds[start:stop]
                except Exception as err:
                    raise EventFormatError(
                        f"cannot read '/{GROUP}/{name}' events {start}..{stop} ({type(err).__name__}: {err})", self.path
                    ) from err
                bad = (col < 0) | (col >= limits[name]) if name in limits else bad_times(col)
                if bad.any():
                    i = int(np.argmax(bad))
                    if bad_at is None or i < bad_at[0]:
                        bad_at = (i, name, col[i], ds)
                out[name] = col if not bad.any() else np.where(bad, 0, col)
            late = first_disorder(out, last_t)
            value_at = len(out) if bad_at is None else bad_at[0]
            i = min(value_at, len(out) if late < 0 else late)
            if i == len(out):
                last_t = int(out["t"][-1])
                yield out
                continue
            if i:
                yield out[:i]
            if value_at == i:
                _, name, value, ds = bad_at
                problem = f"{name}={value} out of range ({w}x{h} sensor, polarities 0/1, t in 0..2**63-1 µs)"
            else:
                ds = self._columns[COLUMNS.index("t")]
                before = last_t if i == 0 else int(out["t"][i - 1])
                problem = f"t={int(out['t'][i])} is earlier than the event before it (t={before}); not in time order"
            raise EventFormatError(f"event {start + i}: {problem}", self.path, _byte_offset(ds, start + i))

    def close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            finally:
                self._file = None


def _integer_attribute(f, name: str):
    """The root attribute ``name`` when it is stored as a number (``events.h5attrs``), else the string
    ``"<not an integer>"`` without reading it (None when absent)."""
    from events.h5attrs import NotInline, read_attribute

    try:
        return read_attribute(f, name)
    except NotInline:
        return "<not an integer>"


_HEAP_STRING_READER = (
    "import json, sys, h5py\n"
    "with h5py.File(sys.argv[1], 'r') as f:\n"
    "    v = f.attrs[sys.argv[2]]\n"
    "print(json.dumps(v.decode('utf-8', 'replace') if isinstance(v, bytes) else str(v)))\n"
)


def _string_attribute(f, name: str, path) -> str | None:
    """The root attribute ``name`` as text when it is stored as a string (None when absent; ``"<not a string>"``
    unread when stored otherwise): a fixed-length string read here (``events.h5attrs``), a variable-length one by a
    child interpreter within ``events.h5attrs.HEAP_READ_TIMEOUT_S`` (module docstring); ``EventFormatError`` when the
    child fails or runs out of time."""
    from events import h5attrs

    try:
        return h5attrs.read_attribute(f, name, "text")
    except h5attrs.NotInline as err:
        if err.kind != h5attrs.HEAP_STRING:
            return "<not a string>"
    child = h5attrs.read_in_child(_HEAP_STRING_READER, path, name)
    if child is None:
        raise EventFormatError(
            f"attribute {name!r} (a variable-length string in the file's global heap) could not be read within "
            f"{h5attrs.HEAP_READ_TIMEOUT_S:g} s: the heap is damaged",
            path,
        )
    if child.returncode == 0:
        try:
            return str(json.loads(child.stdout.strip().splitlines()[-1]))
        except (ValueError, IndexError):
            pass
    raise EventFormatError(
        f"attribute {name!r} (a variable-length string) could not be read: {child.stderr.strip()[-300:]}", path
    )


def _check_link(group, name: str, where: str, path) -> None:
    """Refuse a soft or external link at ``group[name]`` (module docstring); a missing one passes."""
    import h5py

    link = group.get(name, getlink=True)
    if isinstance(link, h5py.ExternalLink):
        raise EventFormatError(
            f"'{where}' is an external link to {link.filename}:{link.path}: an event file must hold its own data", path
        )
    if link is not None and not isinstance(link, h5py.HardLink):
        target = getattr(link, "path", "?")
        raise EventFormatError(f"'{where}' is a link to {target}, not a dataset of its own", path)


def _check_own_data(ds, where: str, path) -> None:
    """Refuse a dataset whose data live in other files: a virtual dataset or external storage (module docstring)."""
    if ds.is_virtual:
        what = "is a virtual dataset, whose data come from"
        files = {f"{m.file_name}:{m.dset_name}" for m in ds.virtual_sources()}
    elif ds.external:
        what = "keeps its data in"
        files = {os.fsdecode(entry[0]) for entry in ds.external}
    else:
        return
    listed = ", ".join(sorted(files)[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    raise EventFormatError(f"'{where}' {what} other files ({listed}): an event file must hold its own data", path)


def _byte_offset(ds, i: int) -> int | None:
    """File offset of element ``i`` of a contiguous dataset (None when HDF5 does not store it so)."""
    try:
        base = ds.id.get_offset()
    except Exception:
        return None
    return None if base is None else int(base) + i * ds.dtype.itemsize


class HDF5Writer(CheckedChunks):
    """Streaming writer of a project HDF5 event file: ``with HDF5Writer(path, (w, h)) as out: out.write(events)``
    (any number of calls, in time order; each chunk checked as :class:`~events.formats.CheckedChunks` checks it);
    the file appears at ``path`` when the block ends without error (``events.atomic``: a write the system refuses
    is an ``OutputError`` naming ``path``), else ``path`` is left as it was.

    ``sensor_size`` is ``(width, height[, polarities])``, each side 1..``MAX_SIDE``, 1 or 2 polarities
    (``ValueError`` naming ``path`` otherwise). With ``n_events`` (how many events will be written, when known
    beforehand) the columns are stored contiguously, so a reader's errors can give byte offsets; without it they
    are chunked and grown as events arrive.
    """

    CHUNK = 1 << 16

    def __init__(self, path, sensor_size, n_events: int | None = None):
        super().__init__(path, SensorSize(*sensor_size))
        w, h, n_pol = (int(v) for v in self.sensor_size)
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE and n_pol in (1, 2)):
            raise InputError(
                f"{path}: sensor size {w}x{h} with {n_pol} polarities does not fit an HDF5 event file (each side "
                f"1..{MAX_SIDE}, 1 or 2 polarities)"
            )
        self.n_events = n_events

    def __enter__(self) -> HDF5Writer:
        import h5py

        from events.h5attrs import fixed_text

        w, h, n_pol = (int(v) for v in self.sensor_size)
        if self.n_events is None:
            shape = {"shape": (0,), "maxshape": (None,), "chunks": (self.CHUNK,)}
        else:
            shape = {"shape": (self.n_events,)}
        with ExitStack() as stack:
            self._fh, _ = stack.enter_context(atomic_write(self.path, "r+b"))
            f = stack.enter_context(h5py.File(self._fh, "w"))
            f.attrs["format"] = fixed_text(FORMAT_MARKER)  # stored in the attribute, not the global heap
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["width"], f.attrs["height"], f.attrs["polarities"] = w, h, n_pol
            group = f.create_group(GROUP)
            self._columns = [group.create_dataset(name, dtype=EVENT_DTYPE[name], **shape) for name in COLUMNS]
            self._stack = stack.pop_all()
        return self

    def write(self, events) -> None:
        """Append ``events`` (fields x, y, t, p; after every event written before)."""
        ev = self.check(events)
        if self.n_events is not None and self.n > self.n_events:
            raise InputError(f"{self.path}: {self.n} events written, {self.n_events} announced")
        for name, ds in zip(COLUMNS, self._columns):
            if self.n_events is None:
                ds.resize((self.n,))
            ds[self.n - len(ev) : self.n] = ev[name]
        self._fh.check()  # a refused write surfaces now, not after the whole file went to memory

    def __exit__(self, *exc) -> bool:
        if exc[0] is None and self.n_events not in (None, self.n):
            err = InputError(f"{self.path}: {self.n} of the {self.n_events} events announced were written")
            self._stack.__exit__(ValueError, err, None)
            raise err
        return bool(self._stack.__exit__(*exc))


def write_hdf5(path, events, sensor_size) -> None:
    """Write ``events`` to a project HDF5 event file, its columns contiguous (:class:`HDF5Writer`, which lists
    the checks). Reading the file back returns exactly ``events`` (as ``EVENT_DTYPE``)."""
    ev = as_event_array(events)
    with HDF5Writer(path, sensor_size, n_events=len(ev)) as out:
        out.write(ev)


FORMAT = EventFormat(
    name="hdf5",
    label="HDF5",
    title="the project's HDF5 event files",
    reader=HDF5EventReader,
    signature=Signature(HDF5_MAGIC, "HDF5"),
    suffixes=(".h5", ".hdf5"),
    sensor=f"its `width` and `height` attributes, 1..{MAX_SIDE} a side",
    writer=HDF5Writer,
    max_side=MAX_SIDE,
    writes="columns chunked and grown as events arrive",
)
