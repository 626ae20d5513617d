"""The first line every AEDAT file starts with, ``#!AER-DAT<major>.<minor>``: the signature that AEDAT 3.1
(``formats/aedat3.py``) and AEDAT 4 (``formats/aedat4.py``) share, and which of the two a file is; other versions
are refused."""

from __future__ import annotations

from pathlib import Path

from events.formats.record import Signature
from events.types import EventFormatError

MAGIC = b"#!AER-DAT"
_MAJORS = {b"3": "aedat3", b"4": "aedat4"}


def _member(head: bytes, path: Path) -> str:
    """``aedat3`` or ``aedat4`` from the major version after ``MAGIC``; ``EventFormatError`` for any other."""
    version = head[len(MAGIC) :]
    name = _MAJORS.get(version[:1])
    if name is None:
        text = version.split(b"\r")[0].split(b"\n")[0].decode("latin-1")
        raise EventFormatError(f"AEDAT version {text!r} is not supported (3.x and 4.x are)", path, 0)
    return name


SIGNATURE = Signature(MAGIC, "AEDAT 3/4", _member)
