"""The record of one event format (:class:`EventFormat`) and how its files are recognized (:class:`Signature`).

Each format module declares its record beside its reader and writer (``FORMAT``; ``FORMATS`` where one module
reads a family of formats), and ``events.formats.registry`` lists the records, one line per module. Everything
else is derived from that list: detection (``events.io``), the formats ``nsm convert`` writes, picks by name and
lists in its help (``events.convert``, ``pipelines/commands/convert.py``), and the table of formats in
docs/design.md (``events.formats.registry.formats_table``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HEAD_BYTES = 16
"""How many of a file's first bytes detection reads: enough for every ``Signature.magic`` and ``member`` rule."""


@dataclass(frozen=True)
class Signature:
    """The first bytes of every file of one format, or of a family of formats read by one module.

    ``magic``: the bytes such a file starts with. ``label``: how the error for an unrecognised file names this
    signature ("HDF5", "AEDAT 3/4"). ``member(head, path)``: for a family, the name of the format of the file at
    ``path`` (``head``: its first ``HEAD_BYTES`` bytes), or an ``EventFormatError`` naming the file when it is
    none of them; ``None`` for a signature of one format.
    """

    magic: bytes
    label: str
    member: Callable[[bytes, Path], str] | None = None


@dataclass(frozen=True)
class EventFormat:
    """What the project knows of one event format.

    ``name``: what ``events.io.detect_format`` returns, a reader's ``format`` and a choice of
    ``nsm convert --format``. ``label``: its short name in messages and help ("EVT 3.0"). ``title``: what its
    files are, in one line. ``reader``: the :class:`~events.formats.EventFileReader` subclass, made with the
    path. ``signature``: how its files are recognized by their first bytes; ``None`` when only their name tells
    (``suffixes``). ``header``: for a member of a family, what in the file makes it this member. ``suffixes``:
    the name endings (lower case, with the dot) that stand for this format: how ``nsm convert`` picks a
    writable format from the output's name, and the only way a format without a signature is recognized.
    ``sensor``: where a file's sensor size comes from. ``writer``: ``writer(path, sensor_size)`` gives a
    streaming writer (a :class:`~events.formats.CheckedChunks` context manager whose ``write(events)``
    appends, the file appearing at ``path`` when the block ends without error); ``None`` for a format only
    read. ``max_side``: the widest and tallest sensor that writer takes. ``writes``: what the writer writes,
    where more is to say than the format.
    """

    name: str
    label: str
    title: str
    reader: type
    signature: Signature | None = None
    header: str = ""
    suffixes: tuple[str, ...] = ()
    sensor: str = ""
    writer: Callable | None = None
    max_side: int | None = None
    writes: str = ""

    def recognized_by(self) -> str:
        """How detection tells this format, in words (the table of formats and the help)."""
        if self.signature is None:
            return "its name: " + ", ".join(f"`{s}`" for s in self.suffixes)
        magic = self.signature.magic.decode("latin-1").encode("unicode_escape").decode("ascii")
        return f"starts with `{magic}`" + (f", then {self.header}" if self.header else "")
