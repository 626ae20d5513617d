"""Writing AEDAT 4 files (iniVation DV) through faery's encoder (``faery.extension.aedat.Encoder``).

The file holds one ``events`` stream (type identifier ``EVTS``, stream id 0) of the recording's width and height,
LZ4-compressed, its events as given: ``t`` in absolute µs (uint64 in the file), ``x``, ``y``, ``on`` = polarity 1.
It is read back by ``formats/aedat4.py`` (the ``aedat`` package's decoder, a second implementation), which gives
exactly the events written. AEDAT 4 packets carry no time base beyond the event's own, so times need no offset.
"""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np

from events.atomic import atomic_path
from events.formats import CheckedChunks
from events.formats.prophesee import faery_call

MAX_SIDE = 1 << 16  # the stream's sizeX / sizeY are ints, events' x and y uint16
_FAERY_EVENTS = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")])


def _description(width: int, height: int) -> list:
    """The IOHeader description of one LZ4-compressed event stream of ``width`` x ``height``, as DV writes it."""
    from faery.extension import aedat

    def text(value: str):
        return aedat.DescriptionAttribute(attribute_type="string", value=value)

    def integer(value: int):
        return aedat.DescriptionAttribute(attribute_type="int", value=value)

    root = "/mainloop/Recorder/outInfo/"
    info = aedat.DescriptionNode(
        name="info",
        path=f"{root}0/info/",
        attributes={"sizeX": integer(width), "sizeY": integer(height), "source": text("nsm-events")},
        nodes=[],
    )
    stream = aedat.DescriptionNode(
        name="0",
        path=f"{root}0/",
        attributes={
            "compression": text("LZ4"),
            "originalOutputName": text("events"),
            "typeIdentifier": text("EVTS"),
        },
        nodes=[info],
    )
    return [aedat.DescriptionNode(name="outInfo", path=root, attributes={}, nodes=[stream])]


class Aedat4Writer(CheckedChunks):
    """Streaming writer of an AEDAT 4 file: ``with Aedat4Writer(path, (346, 260)) as w: w.write(events)`` (any
    number of calls, in time order); the file appears at ``path`` when the block ends without error, else ``path``
    is left as it was. Events are checked as :class:`~events.formats.CheckedChunks` checks them."""

    def __init__(self, path, sensor_size):
        w, h, *_ = (int(v) for v in sensor_size)
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            raise ValueError(f"{path}: sensor size {w}x{h} does not fit AEDAT 4 (each side 1..{MAX_SIDE})")
        super().__init__(path, (w, h, 2))
        self._stack: ExitStack | None = None
        self._encoder = None

    def __enter__(self) -> Aedat4Writer:
        from faery.extension import aedat

        with ExitStack() as stack:
            tmp = str(stack.enter_context(atomic_path(self.path)))
            size = self.sensor_size
            encoder = aedat.Encoder(tmp, _description(size.width, size.height), ("lz4", 1))
            self._encoder = stack.enter_context(encoder)
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> bool:
        stack, self._stack, self._encoder = self._stack, None, None
        return bool(stack.__exit__(*exc)) if stack is not None else False

    def write(self, events) -> None:
        """Append ``events`` (fields x, y, t, p; after every event written before)."""
        if self._encoder is None:
            raise ValueError(f"{self.path}: writer is not open (use it as a context manager)")
        ev = self.check(events)
        if not len(ev):
            return
        out = np.empty(len(ev), dtype=_FAERY_EVENTS)
        out["t"], out["x"], out["y"], out["on"] = ev["t"], ev["x"], ev["y"], ev["p"]
        faery_call(lambda: self._encoder.write(0, out), self.path, "writing")
