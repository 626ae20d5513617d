"""Reading event files of any supported format.

``read(path)`` returns a whole :class:`~events.types.Recording`; ``reader(path)`` returns a
streaming :class:`~events.formats.EventFileReader` (``.path``, ``.format``, ``.sensor_size``,
``.iter_chunks(max_events)``, context manager). The format is chosen by
:func:`detect_format` from the file's first bytes, and from its name where the format has no
magic number:

| format          | recognised by                                   |
| --------------- | ----------------------------------------------- |
| ``hdf5``        | HDF5 signature ``\\x89HDF\\r\\n\\x1a\\n``           |
| ``gesture_npy`` | NumPy signature ``\\x93NUMPY``                    |
| ``aedat4``      | first line ``#!AER-DAT4.x``                      |
| ``aedat3``      | first line ``#!AER-DAT3.x``                      |
| ``evt2``, ``evt21``, | a Prophesee ``%`` header naming the format (``% evt 3.0``, |
| ``evt3``, ``dat``    | ``% format EVT3;...``, DAT's ``% Version``), else ``.dat`` |
| ``nmnist``      | name ending ``.bin`` (the format has no header) |

An empty file or anything else raises ``EventFormatError``; a missing file raises
``FileNotFoundError``. A path that is not a regular file (a directory, FIFO, device, socket or a
symbolic-link loop) is refused with ``EventFormatError`` before it is opened
(:func:`events.formats.check_regular_file`).
"""

from __future__ import annotations

import importlib
import os

from events.formats import EventFileReader, check_regular_file
from events.types import EventFormatError, Recording

FORMATS = ("nmnist", "aedat3", "aedat4", "gesture_npy", "hdf5", "evt2", "evt21", "evt3", "dat")
_READERS = {
    "nmnist": ("events.formats.nmnist", "NMNISTReader"),
    "aedat3": ("events.formats.aedat3", "Aedat3Reader"),
    "aedat4": ("events.formats.aedat4", "Aedat4Reader"),
    "gesture_npy": ("events.formats.gesture_npy", "GestureNpyReader"),
    "hdf5": ("events.formats.hdf5", "HDF5EventReader"),
    **{name: ("events.formats.prophesee", "PropheseeReader") for name in ("evt2", "evt21", "evt3", "dat")},
}


def detect_format(path: str | os.PathLike) -> str:
    """The format name of ``path`` (one of ``FORMATS``), from its content and name."""
    path = check_regular_file(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if not head:
        raise EventFormatError("empty file (0 bytes)", path, 0)
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(b"\x93NUMPY"):
        return "gesture_npy"
    if head.startswith(b"#!AER-DAT4"):
        return "aedat4"
    if head.startswith(b"#!AER-DAT3"):
        return "aedat3"
    if head.startswith(b"#!AER-DAT"):
        version = head[len(b"#!AER-DAT") :].split(b"\r")[0].split(b"\n")[0].decode("latin-1")
        raise EventFormatError(f"AEDAT version {version!r} is not supported (3.x and 4.x are)", path, 0)
    if head.startswith(b"%"):
        return importlib.import_module("events.formats.prophesee").read_header(path).format
    if path.suffix.lower() == ".bin":
        return "nmnist"
    raise EventFormatError(
        "unrecognised event file: no known signature (HDF5, .npy, AEDAT 3/4, a Prophesee '%' header) and not an "
        "N-MNIST '.bin' name",
        path,
        0,
    )


def reader(path: str | os.PathLike, format: str | None = None) -> EventFileReader:
    """A streaming reader for ``path``; ``format`` overrides :func:`detect_format` (a Prophesee file's reader
    takes the EVT version from the file's header whatever ``format`` names)."""
    fmt = detect_format(path) if format is None else format
    if fmt not in _READERS:
        raise ValueError(f"unknown event format {fmt!r}; known: {', '.join(FORMATS)}")
    module, cls = _READERS[fmt]
    return getattr(importlib.import_module(module), cls)(path)


def read(path: str | os.PathLike, format: str | None = None) -> Recording:
    """The whole recording at ``path``: events (``EVENT_DTYPE``, file order), sensor size, path."""
    with reader(path, format) as r:
        return r.read()
