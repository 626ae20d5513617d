"""Reading event files of any registered format (``events.formats.registry``).

``read(path)`` returns a whole :class:`~events.types.Recording`; ``reader(path)`` returns a
streaming :class:`~events.formats.EventFileReader` (``.path``, ``.format``, ``.sensor_size``,
``.iter_chunks(max_events)``, context manager). The format is chosen by :func:`detect_format` from the
file's first bytes (each format's ``Signature``), and from its name where the format has none.

An empty file or anything else raises ``EventFormatError``; a missing file raises
``FileNotFoundError``. A path that is not a regular file (a directory, FIFO, device, socket or a
symbolic-link loop) is refused with ``EventFormatError`` before it is opened
(:func:`events.formats.check_regular_file`).
"""

from __future__ import annotations

import os

from events.formats import EventFileReader, check_regular_file
from events.formats.record import HEAD_BYTES
from events.formats.registry import EVENT_FORMATS, event_format
from events.formats.registry import NAMES as FORMATS
from events.types import EventFormatError, Recording

__all__ = ["FORMATS", "detect_format", "read", "reader"]


def detect_format(path: str | os.PathLike) -> str:
    """The format name of ``path`` (one of ``FORMATS``): the first registered format whose signature the file
    starts with (a family's signature names its member, or refuses the file), else the format without a
    signature whose suffix the name ends with."""
    path = check_regular_file(path)
    with open(path, "rb") as fh:
        head = fh.read(HEAD_BYTES)
    if not head:
        raise EventFormatError("empty file (0 bytes)", path, 0)
    for fmt in EVENT_FORMATS:
        signature = fmt.signature
        if signature is not None and head.startswith(signature.magic):
            return fmt.name if signature.member is None else signature.member(head, path)
    by_name = [fmt for fmt in EVENT_FORMATS if fmt.signature is None]
    for fmt in by_name:
        if path.suffix.lower() in fmt.suffixes:
            return fmt.name
    signatures = dict.fromkeys(fmt.signature.label for fmt in EVENT_FORMATS if fmt.signature is not None)
    names = " or ".join(f"{fmt.label} '{suffix}'" for fmt in by_name for suffix in fmt.suffixes)
    raise EventFormatError(
        f"unrecognised event file: no known signature ({', '.join(signatures)}) and not a name that tells the "
        f"format ({names})",
        path,
        0,
    )


def reader(path: str | os.PathLike, format: str | None = None) -> EventFileReader:
    """A streaming reader for ``path``; ``format`` overrides :func:`detect_format` (a Prophesee file's reader
    takes the EVT version from the file's header whatever ``format`` names); an unknown ``format`` is a
    ``ValueError`` listing the known ones."""
    fmt = detect_format(path) if format is None else format
    return event_format(fmt).reader(path)


def read(path: str | os.PathLike, format: str | None = None) -> Recording:
    """The whole recording at ``path``: events (``EVENT_DTYPE``, file order), sensor size, path."""
    with reader(path, format) as r:
        return r.read()
