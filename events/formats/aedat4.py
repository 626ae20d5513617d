"""AEDAT 4 files (iniVation DV), decoded by the ``aedat`` package (``aedat.Decoder``).

An AEDAT 4 file starts with ``#!AER-DAT4.0\\r\\n``, then an IOHeader (flatbuffer) describing its
streams in XML, then LZ4/zstd-compressed packets, each belonging to one stream. This reader takes
the ``events`` stream with the lowest id (as ``tonic.io.read_aedat4`` does), whose ``width`` and
``height`` give the sensor size, and converts its polarity events (``t`` uint64 µs, ``x``, ``y``
uint16, ``on`` bool) to ``EVENT_DTYPE``; packets of other streams (frames, IMU, triggers) are
skipped. Timestamps stay as recorded (absolute µs since the epoch for DV recordings).

The decoder reads packet by packet, so :meth:`Aedat4Reader.iter_chunks` yields per decoded
packet batch with bounded memory. Any error the ``aedat`` package raises (including Rust panics
on damaged input) becomes ``EventFormatError``; the package reports no byte offsets, so errors
name the packet number instead. Events off the sensor or timestamps beyond int64 are rejected.
"""

from __future__ import annotations

from collections.abc import Iterator

import aedat
import numpy as np

from events.formats import EventFileReader
from events.types import EVENT_DTYPE, EventFormatError, SensorSize

MAGIC = b"#!AER-DAT4"


def _decoder_call(fn, path, what: str):
    """Run one call into ``aedat``, turning any failure (panics derive from BaseException) into
    ``EventFormatError``."""
    try:
        return fn()
    except (KeyboardInterrupt, SystemExit, GeneratorExit, StopIteration, MemoryError):
        raise
    except BaseException as err:  # noqa: BLE001 - pyo3 PanicException is a BaseException
        raise EventFormatError(f"AEDAT 4 decoder failed {what}: {type(err).__name__}: {err}", path) from None


class Aedat4Reader(EventFileReader):
    """Streaming reader of the polarity events of one AEDAT 4 file."""

    format = "aedat4"

    def __init__(self, path):
        super().__init__(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such AEDAT 4 file: {self.path}")
        with open(self.path, "rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                raise EventFormatError("not an AEDAT 4 file (no '#!AER-DAT4' magic)", self.path, 0)
        decoder = _decoder_call(lambda: aedat.Decoder(str(self.path)), self.path, "on the file header")
        streams = _decoder_call(decoder.id_to_stream, self.path, "on the stream table")
        ids = [i for i, s in streams.items() if s.get("type") == "events"]
        if not ids:
            raise EventFormatError("AEDAT 4 file has no events stream", self.path)
        self.stream_id = min(ids)
        info = streams[self.stream_id]
        w, h = info.get("width"), info.get("height")
        if not (isinstance(w, int) and isinstance(h, int) and 0 < w <= 1 << 15 and 0 < h <= 1 << 15):
            raise EventFormatError(f"events stream {self.stream_id} has bad size {w}x{h}", self.path)
        self.sensor_size = SensorSize(w, h, 2)

    def _chunks(self, max_events: int) -> Iterator[np.ndarray]:
        path = self.path
        decoder = _decoder_call(lambda: aedat.Decoder(str(path)), path, "on the file header")
        it = iter(decoder)
        w, h, _ = self.sensor_size
        n_packet = 0
        while True:
            try:
                packet = _decoder_call(lambda: next(it), path, f"at packet {n_packet}")
            except StopIteration:
                return
            n_packet += 1
            if packet.get("stream_id") != self.stream_id or "events" not in packet:
                continue
            raw = packet["events"]
            names = raw.dtype.names or ()
            if not {"t", "x", "y", "on"} <= set(names):
                raise EventFormatError(f"packet {n_packet - 1}: unexpected event fields {names}", path)
            t = raw["t"]
            bad = (raw["x"] >= w) | (raw["y"] >= h) | (t > np.iinfo(np.int64).max)
            stop = int(np.argmax(bad)) if bad.any() else len(raw)
            out = np.empty(stop, dtype=EVENT_DTYPE)
            out["x"] = raw["x"][:stop]
            out["y"] = raw["y"][:stop]
            out["t"] = t[:stop]
            out["p"] = raw["on"][:stop]
            for start in range(0, stop, max_events):
                yield out[start : start + max_events]
            if stop < len(raw):
                e = raw[stop]
                raise EventFormatError(
                    f"packet {n_packet - 1}, event {stop}: x={int(e['x'])}, y={int(e['y'])}, t={int(e['t'])} "
                    f"outside the {w}x{h} sensor or the int64 time range",
                    path,
                )
