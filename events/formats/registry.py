"""The event formats the project knows: one registration line per format module, in the order detection tries
them (``events.io.detect_format``: the first signature a file starts with decides; the formats without one are
tried by name after all signatures).

Adding a format takes its module in ``events/formats/`` (reader, writer if any, and its ``FORMAT`` record,
:class:`~events.formats.record.EventFormat`), its tests, and one line in ``EVENT_FORMATS``. Detection,
``events.read``/``events.reader``, what ``nsm convert`` writes, the output names it knows and its help, and the
table of formats in docs/design.md (:func:`formats_table`, which a test compares with the document) follow from
the records.
"""

from __future__ import annotations

from events.errors import InputError
from events.formats import aedat3, aedat4, gesture_npy, hdf5, nmnist, prophesee
from events.formats.record import EventFormat

EVENT_FORMATS: tuple[EventFormat, ...] = (
    hdf5.FORMAT,
    gesture_npy.FORMAT,
    aedat4.FORMAT,
    aedat3.FORMAT,
    *prophesee.FORMATS,
    nmnist.FORMAT,
)
NAMES = tuple(f.name for f in EVENT_FORMATS)


def event_format(name: str) -> EventFormat:
    """The record of the format ``name``; ``ValueError`` listing the known names when there is none."""
    for fmt in EVENT_FORMATS:
        if fmt.name == name:
            return fmt
    raise InputError(f"unknown event format {name!r}; known: {', '.join(NAMES)}")


def formats_table() -> str:
    """The table of formats in docs/design.md, section 5 (Markdown, one row per record in detection order)."""
    rows = [
        "| format | files | recognized by | sensor size | `nsm convert` writes it |",
        "| --- | --- | --- | --- | --- |",
    ]
    for fmt in EVENT_FORMATS:
        if fmt.writer is None:
            written = "no"
        else:
            names = ", ".join(f"`{s}`" for s in fmt.suffixes) or f"`--format {fmt.name}`"
            written = f"{names}; at most {fmt.max_side} px a side" + (f"; {fmt.writes}" if fmt.writes else "")
        rows.append(f"| `{fmt.name}` | {fmt.title} | {fmt.recognized_by()} | {fmt.sensor} | {written} |")
    return "\n".join(rows)
