"""DVS Gesture's classes and its labels CSVs (``userNN_<lighting>_labels.csv``): parsing them
(:func:`parse_labels`, :func:`label_rows`) and checking each interval against its recording's time span
(:func:`check_label_span`); the rules are in ``events.datasets.dvsgesture``'s docstring."""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import NamedTuple

from events.formats import check_regular_file
from events.formats.aedat3 import PacketIndex
from events.types import EventFormatError

GESTURE_CLASSES = [
    "hand_clapping",
    "right_hand_wave",
    "left_hand_wave",
    "right_arm_clockwise",
    "right_arm_counter_clockwise",
    "left_arm_clockwise",
    "left_arm_counter_clockwise",
    "arm_roll",
    "air_drums",
    "air_guitar",
    "other_gestures",
]
LABELS_HEADER = ("class", "startTime_usec", "endTime_usec")
_INT = re.compile(r"^[+-]?\d+$")
_INT64_MAX = (1 << 63) - 1


class LabelRow(NamedTuple):
    """One row of a labels CSV: class 1..11, ``[start, end)`` in µs, and where it stands in the file."""

    cls: int
    start: int
    end: int
    line: int
    offset: int


def parse_labels(path) -> list[tuple[int, int, int]]:
    """Parse a DVS Gesture ``_labels.csv`` into ``(class 1..11, start_us, end_us)`` rows in file order.

    Exact duplicate rows are dropped (first kept) with one ``UserWarning`` for the file;
    overlapping intervals are kept. Malformed content (including times beyond int64) raises
    ``EventFormatError`` with the line number in the message and the line's byte offset. The rows
    are not checked against a recording here (see :func:`check_label_span`).
    """
    return [(r.cls, r.start, r.end) for r in label_rows(path, stacklevel=3)]


LABEL_MARGIN_US = 1_000_000  # how far a gesture's interval may reach past the recording's first or last event


def check_label_span(rows: list[LabelRow], labels, index: PacketIndex, recording) -> None:
    """``EventFormatError`` naming ``labels`` and the line unless every row's interval overlaps the recording's
    time span ``[first event, last event + 1)`` (from its packet ``index``) and reaches at most
    ``LABEL_MARGIN_US`` beyond it (a sensor emits nothing while the scene is still, so a hand-made label may end
    a little after the last event; bins there are empty because no events happened, not because data is lost)."""
    if index.n_events == 0:
        first, end = None, None
    else:
        first, end = int(index.t_min.min()), int(index.t_max.max()) + 1
    for row in rows:
        if (
            first is None
            or row.start >= end
            or row.end <= first
            or row.start < first - LABEL_MARGIN_US
            or row.end > end + LABEL_MARGIN_US
        ):
            span = "has no events" if first is None else f"spans [{first}, {end}) µs"
            raise EventFormatError(
                f"line {row.line}: interval [{row.start}, {row.end}) µs does not lie inside its recording "
                f"{Path(recording).name}, which {span} (a label may reach {LABEL_MARGIN_US} µs beyond it)",
                labels,
                row.offset,
            )


def label_rows(path, stacklevel: int = 2) -> list[LabelRow]:
    """:func:`parse_labels` with each row's line number and byte offset."""
    path = check_regular_file(path, "labels file")
    raw = path.read_bytes()
    rows, seen, dups = [], set(), 0
    offset, header_seen = 0, False
    for lineno, line in enumerate(raw.splitlines(keepends=True), 1):
        at = offset
        offset += len(line)
        try:
            text = line.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
        except UnicodeDecodeError:
            raise EventFormatError(f"line {lineno}: not UTF-8 text", path, at) from None
        if not text:
            continue
        fields = [f.strip() for f in text.split(",")]
        if not header_seen:
            if tuple(fields) != LABELS_HEADER:
                raise EventFormatError(
                    f"line {lineno}: header is {text[:60]!r}, expected {','.join(LABELS_HEADER)!r}", path, at
                )
            header_seen = True
            continue
        if len(fields) != 3 or not all(_INT.match(f) for f in fields):
            raise EventFormatError(
                f"line {lineno}: expected three integers class,start,end, got {text[:60]!r}", path, at
            )
        cls, start, end = (int(f) for f in fields)
        if not 1 <= cls <= len(GESTURE_CLASSES):
            raise EventFormatError(f"line {lineno}: class {cls} outside 1..{len(GESTURE_CLASSES)}", path, at)
        if start < 0 or end <= start:
            raise EventFormatError(f"line {lineno}: interval [{start}, {end}) is empty or negative", path, at)
        if end > _INT64_MAX:
            raise EventFormatError(f"line {lineno}: end time {end} is beyond the int64 µs range", path, at)
        if (cls, start, end) in seen:
            dups += 1
            continue
        seen.add((cls, start, end))
        rows.append(LabelRow(cls, start, end, lineno, at))
    if not header_seen:
        raise EventFormatError(f"empty labels file (expected header {','.join(LABELS_HEADER)!r})", path, 0)
    if dups:
        warnings.warn(
            f"{path}: {dups} duplicate label row(s) dropped (first of each kept)", UserWarning, stacklevel=stacklevel
        )
    return rows
