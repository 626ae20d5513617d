"""The header of a Prophesee RAW or DAT file (``read_header``), and what the header's formats are made of: their
names, sensor limits and time counters. The rules are in the package docstring (``events.formats.prophesee``).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from events.types import EventFormatError, SensorSize

NAMES = {"evt2": "EVT 2.0", "evt21": "EVT 2.1", "evt3": "EVT 3.0", "dat": "DAT"}
MAX_HEADER_BYTES = 1 << 20
INT64_MAX = (1 << 63) - 1
_VERSIONS = {"2.0": "evt2", "2.1": "evt21", "3.0": "evt3", "EVT2": "evt2", "EVT21": "evt21", "EVT3": "evt3"}
MAX_SIDE = {"evt2": 2048, "evt21": 2048, "evt3": 2048, "dat": 16384}
DAT_TYPES = {12: "CD", 0: "2D"}  # DAT event type byte -> kind; both 8 bytes (time 32, x 14, y 14, polarity 4 bits)
DAT_EVENT_BYTES = 8
ENDIANNESS = ("little", "legacy")


class Counter(NamedTuple):
    """A time counter: ``bits`` of raw value, each unit ``2**shift`` µs; it wraps every ``2**(bits + shift)`` µs."""

    bits: int
    shift: int


COUNTERS = {"evt2": Counter(28, 6), "evt21": Counter(28, 6), "evt3": Counter(12, 12), "dat": Counter(32, 0)}


class Header(NamedTuple):
    """A Prophesee file's header: ``format`` (one of ``NAMES``), ``sensor_size``, ``body`` (byte offset of the
    first word; for DAT past the type and size bytes), ``t0`` (µs added to every time), ``legacy`` (EVT 2.1 words
    with swapped 32-bit halves)."""

    format: str
    sensor_size: SensorSize
    body: int
    t0: int = 0
    legacy: bool = False


def read_header(path) -> Header:
    """Parse the header of the Prophesee file ``path`` (the package docstring lists the rules);
    ``EventFormatError`` naming the file and the byte offset of the line at fault."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_HEADER_BYTES + 2)
    lines: dict[str, list[tuple[str, int]]] = {}
    pos = 0
    while data.startswith(b"% ", pos):
        end = data.find(b"\n", pos)
        if end < 0:
            raise EventFormatError(f"header line not ended within {MAX_HEADER_BYTES} bytes", path, pos)
        line, at, pos = data[pos + 2 : end].decode("latin-1").strip(), pos, end + 1
        if line == "end":
            break
        key, _, value = line.partition(" ")
        if key:
            lines.setdefault(key.lower(), []).append((value.strip(), at))
    fmt, at = _format(lines, path)
    items = _format_items(lines, path)
    size = _sensor_size(lines, items, fmt, path, at)
    t0 = _t0(lines, path)
    legacy = _endianness(items, fmt, path)
    if fmt != "dat":
        return Header(fmt, size, pos, t0, legacy)
    kind = data[pos : pos + 2]
    if len(kind) == 1:
        raise EventFormatError("the file ends inside the DAT event type and size bytes: truncated", path, pos)
    if len(kind) == 2 and (kind[0] not in DAT_TYPES or kind[1] != DAT_EVENT_BYTES):
        raise EventFormatError(
            f"DAT event type {kind[0]} of {kind[1]} bytes; only CD events (type 12) and generic 2D events (type 0) "
            f"of {DAT_EVENT_BYTES} bytes are read",
            path,
            pos,
        )
    return Header(fmt, size, pos + len(kind), t0, legacy)


def _format(lines: dict, path) -> tuple[str, int]:
    """(format, byte offset of the line that names it) from every ``% evt`` and ``% format`` line, else DAT from a
    ``% Version`` line or the file name."""
    named = [("evt", value, at) for value, at in lines.get("evt", [])]
    named += [("format", value.split(";")[0].strip(), at) for value, at in lines.get("format", [])]
    versions: dict[str, int] = {}
    for key, value, at in named:
        version = _VERSIONS.get(value.upper() if key == "format" else value)
        if version is None:
            raise EventFormatError(f"'% {key} {value}': not an EVT version this reader knows (2.0, 2.1, 3.0)", path, at)
        versions.setdefault(version, at)
    if len(versions) > 1:
        names = " and ".join(NAMES[v] for v in versions)
        raise EventFormatError(f"header names two EVT versions: {names}", path, max(versions.values()))
    if versions:
        return next(iter(versions.items()))
    if "version" in lines or str(path).lower().endswith(".dat"):
        return "dat", lines.get("version", [("", 0)])[0][1]
    raise EventFormatError("Prophesee header names no format ('% evt', '% format' or DAT '% Version' line)", path, 0)


def _format_items(lines: dict, path) -> dict[str, list[tuple[str, int]]]:
    """The ``key=value`` items of every ``% format`` line after its first (the version), by lower-case key."""
    items: dict[str, list[tuple[str, int]]] = {}
    for value, at in lines.get("format", []):
        for item in value.split(";")[1:]:
            key, _, v = item.partition("=")
            if key.strip():
                items.setdefault(key.strip().lower(), []).append((v.strip(), at))
    return items


def _sensor_size(lines: dict, items: dict, fmt: str, path, at: int) -> SensorSize:
    """The one sensor size that every source in the header gives (``EventFormatError`` if they disagree)."""
    given = {"width": list(items.get("width", [])), "height": list(items.get("height", []))}
    for value, line_at in lines.get("geometry", []):
        m = re.fullmatch(r"(\d+)\s*x\s*(\d+)", value)
        if not m:
            raise EventFormatError(f"'% geometry {value}': not a sensor size WxH", path, line_at)
        given["width"].append((m.group(1), line_at))
        given["height"].append((m.group(2), line_at))
    for key in ("width", "height"):
        given[key] += lines.get(key, [])
    top, sides = MAX_SIDE[fmt], {}
    for key, values in given.items():
        found = {}
        for value, line_at in values:
            if not (value.isascii() and value.isdigit() and 0 < int(value) <= top):
                raise EventFormatError(f"header gives no sensor size in 1..{top}: {key}={value!r}", path, line_at)
            found.setdefault(int(value), line_at)
        if len(found) > 1:
            raise EventFormatError(
                f"header gives two sensor {key}s: {' and '.join(map(str, found))}", path, max(found.values())
            )
        sides[key] = next(iter(found), None)
    if sides["width"] is None or sides["height"] is None:
        raise EventFormatError(
            f"header gives no sensor size in 1..{top} ('% geometry WxH', '% format ...;width=W;height=H' or "
            f"'% Width'/'% Height'): width={sides['width']}, height={sides['height']}",
            path,
            at,
        )
    return SensorSize(sides["width"], sides["height"], 2)


def _t0(lines: dict, path) -> int:
    """The ``% t0`` offset (0 without one): a decimal integer in 0..2^63 - 1, the same on every such line."""
    found = {}
    for value, at in lines.get("t0", []):
        if not (value.isascii() and value.isdigit() and int(value) <= INT64_MAX):
            raise EventFormatError(
                f"'% t0 {value}': the time offset must be a whole number of µs in 0..2^63 - 1", path, at
            )
        found.setdefault(int(value), at)
    if len(found) > 1:
        raise EventFormatError(
            f"header gives two time offsets t0: {' and '.join(map(str, found))}", path, max(found.values())
        )
    return next(iter(found), 0)


def _endianness(items: dict, fmt: str, path) -> bool:
    """Whether the body's 64-bit words have their 32-bit halves swapped (EVT 2.1 ``endianness=legacy``)."""
    values = {v.lower(): at for v, at in items.get("endianness", [])}
    for value, at in values.items():
        if value not in ENDIANNESS:
            raise EventFormatError(
                f"'endianness={value}' in '% format': not one this reader knows ({', '.join(ENDIANNESS)})", path, at
            )
    if len(values) > 1:
        raise EventFormatError("'% format' lines give two endiannesses", path, max(values.values()))
    return fmt == "evt21" and "legacy" in values
