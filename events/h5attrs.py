"""HDF5 attributes read without touching the file's global heap.

A variable-length string or sequence keeps its data in the file's global heap, and libhdf5 (2.0.0) loops forever
on a damaged heap collection (a free-space object of size 0: found by mutation fuzzing, docs/design.md section 5).
The project's files therefore store text as fixed-length strings, and its readers ask for an attribute by the kind
they expect: ``read_attribute`` looks at the attribute's stored type first (metadata only) and reads it only when
it is held in the attribute itself as that kind, else raises ``NotInline`` without reading it. What must read the
heap (an old event file's marker, a NIR graph's strings) does so first in a child interpreter with a time limit
(``read_in_child``), so that a damaged heap is an error, not a hang.
"""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np

from events.errors import InputError

HEAP_READ_TIMEOUT_S = 20.0
"""How long a child interpreter may take to read what lives in a file's global heap (``read_in_child``)."""

NUMBER_CLASSES = (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.ENUM)  # ENUM: h5py stores a bool as one
HEAP_STRING = "a variable-length string"  # ``stored_kind`` of a string kept in the global heap


class NotInline(InputError):
    """An attribute is not stored as the kind asked for (``kind``: its stored type, in words)."""

    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind
        super().__init__(f"attribute {name!r} is stored as {kind}")


def stored_kind(obj, name: str) -> str | None:
    """``"text"`` (a fixed-length string), ``"number"`` (integers, floats or h5py's bools, scalar or array), or
    another word for what the attribute ``name`` of ``obj`` holds (None when absent), from its type alone."""
    if name not in obj.attrs:
        return None
    stored = obj.attrs.get_id(name).get_type()
    kind = stored.get_class()
    if kind == h5py.h5t.STRING:
        return HEAP_STRING if stored.is_variable_str() else "text"
    if kind in NUMBER_CLASSES:
        return "number"
    return {h5py.h5t.VLEN: "a variable-length sequence", h5py.h5t.COMPOUND: "a compound"}.get(kind, "another type")


def read_attribute(obj, name: str, kind: str = "number"):
    """The attribute ``name`` of ``obj`` when stored as ``kind`` (``"number"``: its value, a scalar or an array;
    ``"text"``: a fixed-length string decoded as UTF-8, undecodable bytes replaced); None when absent; ``NotInline``
    (nothing read) when stored otherwise, a variable-length string among them."""
    stored = stored_kind(obj, name)
    if stored is None:
        return None
    if stored != kind:
        raise NotInline(name, stored)
    value = obj.attrs[name]
    if kind != "text":
        return value
    if np.ndim(value):
        raise NotInline(name, "an array of strings")
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def fixed_text(text: str) -> np.bytes_:
    """``text`` as a fixed-length string attribute value (UTF-8 bytes, stored in the attribute itself)."""
    return np.bytes_(text.encode("utf-8"))


_PARENT_VARIABLE = "NSM_HEAP_READER_PARENT"
_DIE_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGKILL)\n"  # PR_SET_PDEATHSIG: the kernel kills this child with its parent
    f"    if os.getppid() != int(os.environ['{_PARENT_VARIABLE}']):\n"
    "        os._exit(3)\n"  # the parent died before the line above
)


def read_in_child(code: str, path, *args: str) -> subprocess.CompletedProcess | None:
    """Run ``code`` in a child interpreter (``sys.argv[1:]`` = ``path``, ``args``) within ``HEAP_READ_TIMEOUT_S``:
    its result (text output, undecodable bytes replaced), or None when it ran out of time and was killed. A child
    looping in libhdf5 answers no signal but SIGKILL: it is killed when it runs out of time, when the caller is
    interrupted (``subprocess.run``) and, on Linux, when the caller dies (PR_SET_PDEATHSIG)."""
    try:
        return subprocess.run(
            [sys.executable, "-c", _DIE_WITH_PARENT + code, os.fspath(path), *args],
            capture_output=True,
            text=True,
            errors="replace",  # a child's message is reported, whatever bytes it holds
            timeout=HEAP_READ_TIMEOUT_S,
            env={**os.environ, _PARENT_VARIABLE: str(os.getpid())},
        )
    except subprocess.TimeoutExpired:
        return None
