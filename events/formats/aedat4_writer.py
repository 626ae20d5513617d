"""Writing AEDAT 4 files (iniVation DV) through faery's encoder (``faery.extension.aedat.Encoder``).

The file holds one ``events`` stream (type identifier ``EVTS``, stream id 0) of the recording's width and height,
LZ4-compressed, its events as given: ``t`` in absolute µs (uint64 in the file), ``x``, ``y``, ``on`` = polarity 1.
It is read back by ``formats/aedat4.py`` (the ``aedat`` package's decoder, a second implementation), which gives
exactly the events written. AEDAT 4 packets carry no time base beyond the event's own, so times need no offset.
"""

from __future__ import annotations

import numpy as np

from events.errors import InputError
from events.formats.faery_writer import FAERY_EVENTS, FaeryWriter

MAX_SIDE = (1 << 15) - 1
"""The widest and tallest sensor an AEDAT 4 file holds: the format's event x and y are int16, and faery's encoder
refuses a side of 32768 or more (checked here, before anything is written, so that is never faery's error)."""


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


class Aedat4Writer(FaeryWriter):
    """Streaming writer of an AEDAT 4 file: ``with Aedat4Writer(path, (346, 260)) as w: w.write(events)`` (any
    number of calls, in time order); the file appears at ``path`` when the block ends without error, else ``path``
    is left as it was. Events are checked as :class:`~events.formats.CheckedChunks` checks them."""

    def __init__(self, path, sensor_size):
        w, h, *_ = (int(v) for v in sensor_size)
        if not (0 < w <= MAX_SIDE and 0 < h <= MAX_SIDE):
            raise InputError(f"{path}: sensor size {w}x{h} does not fit AEDAT 4 (each side 1..{MAX_SIDE})")
        super().__init__(path, (w, h, 2))

    def _encoder_for(self, tmp: str):
        from faery.extension import aedat

        return aedat.Encoder(tmp, _description(self.sensor_size.width, self.sensor_size.height), ("lz4", 1))

    def _packet(self, ev: np.ndarray) -> tuple:
        out = np.empty(len(ev), dtype=FAERY_EVENTS)
        out["t"], out["x"], out["y"], out["on"] = ev["t"], ev["x"], ev["y"], ev["p"]
        return (0, out)  # stream id 0, the description's only stream
