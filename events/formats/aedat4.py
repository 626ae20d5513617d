"""AEDAT 4 files (iniVation DV), decoded by the ``aedat`` package (``aedat.Decoder``).

An AEDAT 4 file starts with ``#!AER-DAT4.0\\r\\n``, then an IOHeader (flatbuffer) describing its
streams in XML, then LZ4/zstd-compressed packets, each belonging to one stream. This reader takes
the ``events`` stream with the lowest id (as ``tonic.io.read_aedat4`` does), whose ``width`` and
``height`` give the sensor size, and converts its polarity events (``t`` uint64 µs, ``x``, ``y``
uint16, ``on`` bool) to ``EVENT_DTYPE``; packets of other streams (frames, IMU, triggers) are
skipped. Timestamps stay as recorded (absolute µs since the epoch for DV recordings).

The decoder reads packet by packet, so :meth:`Aedat4Reader.iter_chunks` yields per decoded
packet batch with bounded memory. The decoder trusts the file's length fields (it allocates a
uint32 length before reading it, so 0xFFFFFFFF asks for 4 GiB, and under a memory limit the
process aborts where Python cannot catch it) and reads the IOHeader FlatBuffer unverified. So this
module checks the framing itself before handing anything over: the magic line, the IOHeader
length (at most ``MAX_IOHEADER_BYTES`` and within the file), the IOHeader's FlatBuffer offsets,
compression and data table position, and, just before the decoder reads each packet, that
packet's declared length against the bytes left in the file (and that it does not run into the
data table) and how far it can decompress: the decoder inflates each packet whole, so a packet whose
LZ4 or Zstd frame headers (a declared content size, the block headers and the largest block each
allows) let it grow beyond ``MAX_PACKET_BYTES`` is refused unread, as is one whose frames those
headers do not describe. A bad field is an ``EventFormatError`` with its byte offset, after the events of
every good packet before it. Any error the ``aedat`` package raises (including Rust panics on
damaged input) becomes ``EventFormatError``; the package reports no byte offsets, so those errors
name the packet number instead. Events off the sensor or timestamps beyond int64 are rejected.
What is not checked: the compressed bytes themselves (AEDAT 4 has no checksum, so a flipped bit may
decode to different events).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import aedat
import numpy as np

from events.errors import InputError
from events.formats import EventFileReader, native_call
from events.formats.aedat4_writer import MAX_SIDE, Aedat4Writer
from events.formats.aedat_magic import SIGNATURE
from events.formats.record import EventFormat
from events.types import EVENT_DTYPE, EventFormatError, SensorSize

MAGIC = b"#!AER-DAT4"
MAGIC_LINE = b"#!AER-DAT4.0\r\n"
MAX_IOHEADER_BYTES = 16 << 20  # the real IOHeaders are a few kB of XML
COMPRESSIONS = {0: "none", 1: "LZ4", 2: "LZ4 high", 3: "Zstd", 4: "Zstd high"}
_PACKET_HEADER = struct.Struct("<II")  # stream id, byte length
MAX_PACKET_BYTES = 256 << 20
"""The most one packet may decompress to (the real ones hold a few thousand events of 16 bytes)."""
_SKIPPABLE = range(0x184D2A50, 0x184D2A60)  # magic numbers of skippable frames (LZ4 and Zstd)
_LZ4_MAGIC, _ZSTD_MAGIC = 0x184D2204, 0xFD2FB528
_LZ4_BLOCK = {4: 64 << 10, 5: 256 << 10, 6: 1 << 20, 7: 4 << 20}  # largest block, by the BD byte's size id
_ZSTD_BLOCK = 128 << 10  # a Zstd block decompresses to at most 128 KiB


class Aedat4Reader(EventFileReader):
    """Streaming reader of the polarity events of one AEDAT 4 file."""

    format = "aedat4"

    def __init__(self, path):
        super().__init__(path)
        with open(self.path, "rb") as fh:
            if fh.read(len(MAGIC)) != MAGIC:
                raise EventFormatError("not an AEDAT 4 file (no '#!AER-DAT4' magic)", self.path, 0)
            fh.seek(0)
            PacketFraming(fh, self.path)  # the IOHeader, checked before the decoder reads it
        decoder = native_call(
            lambda: aedat.Decoder(str(self.path)), self.path, "AEDAT 4 decoder failed on the file header"
        )
        streams = native_call(decoder.id_to_stream, self.path, "AEDAT 4 decoder failed on the stream table")
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
        with open(self.path, "rb") as fh:
            framing = PacketFraming(fh, self.path)
            yield from self._decode(framing, max_events)

    def _decode(self, framing: PacketFraming, max_events: int) -> Iterator[np.ndarray]:
        path = self.path
        decoder = native_call(lambda: aedat.Decoder(str(path)), path, "AEDAT 4 decoder failed on the file header")
        it = iter(decoder)
        w, h, _ = self.sensor_size
        n_packet = 0
        while framing.next_packet():  # the packet the decoder reads next has a sane length
            try:
                packet = native_call(lambda: next(it), path, f"AEDAT 4 decoder failed at packet {n_packet}")
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


class PacketFraming:
    """The framing of an AEDAT 4 file, checked ahead of the ``aedat`` decoder.

    Made on a file opened at byte 0, it reads and checks the magic line, the IOHeader length and the
    IOHeader (see :func:`check_ioheader`). Then :meth:`next_packet`, called just before the decoder
    reads each packet, checks that packet's header where the decoder will find it: it returns False
    where the decoder stops (at the file data table, or at the end of a file without one) and
    raises ``EventFormatError`` (with the byte offset) for a header cut short, a length running past
    the end of the file, or a packet running into the data table.
    """

    def __init__(self, fh, path):
        self.fh, self.path = fh, path
        self.size = os.fstat(fh.fileno()).st_size
        head = fh.read(len(MAGIC_LINE))
        if head != MAGIC_LINE:
            raise EventFormatError(f"first line is {head[:20]!r}, expected '#!AER-DAT4.0\\r\\n'", path, 0)
        raw = fh.read(4)
        if len(raw) < 4:
            raise EventFormatError("file ends inside the IOHeader length", path, len(MAGIC_LINE))
        (length,) = struct.unpack("<I", raw)
        start = len(MAGIC_LINE) + 4
        left = self.size - start
        if length > min(left, MAX_IOHEADER_BYTES):
            why = f"only {left} are left in the file" if length > left else f"the limit is {MAX_IOHEADER_BYTES}"
            raise EventFormatError(f"IOHeader length field says {length} bytes, but {why}", path, len(MAGIC_LINE))
        self.compression, self.data_table = check_ioheader(fh.read(length), path, start)
        self.offset = start + length  # of the next packet
        if self.data_table != -1 and not self.offset <= self.data_table <= self.size:
            raise EventFormatError(
                f"IOHeader puts the file data table at byte {self.data_table}, outside the packets "
                f"(bytes {self.offset}..{self.size})",
                path,
                start,
            )
        self.packets = 0

    def next_packet(self) -> bool:
        off, table = self.offset, self.data_table
        if off == table or (table == -1 and off == self.size):
            return False
        left = self.size - off
        if left < _PACKET_HEADER.size:
            before = "" if table == -1 else f" before the file data table at byte {table}"
            raise EventFormatError(
                f"packet {self.packets}: the file ends{before} inside a packet header "
                f"({left} of {_PACKET_HEADER.size} bytes)",
                self.path,
                off,
            )
        self.fh.seek(off)
        stream, length = _PACKET_HEADER.unpack(self.fh.read(_PACKET_HEADER.size))
        self._check_packet(off, stream, length)
        self.offset = off + _PACKET_HEADER.size + length
        self.packets += 1
        return True

    def _check_packet(self, off: int, stream: int, length: int) -> None:
        """The packet at ``off`` (header read) ends in the file before the data table and cannot decompress
        beyond ``MAX_PACKET_BYTES``."""
        left = self.size - off
        end = off + _PACKET_HEADER.size + length
        if end > self.size:
            raise EventFormatError(
                f"packet {self.packets} (stream {stream}) declares {length} bytes, but only "
                f"{left - _PACKET_HEADER.size} are left in the file",
                self.path,
                off,
            )
        if off < self.data_table < end:
            raise EventFormatError(
                f"packet {self.packets} (stream {stream}, {length} bytes) runs into the file data table "
                f"at byte {self.data_table}",
                self.path,
                off,
            )
        start = off + _PACKET_HEADER.size

        def read(pos: int, n: int) -> bytes:
            if pos + n > length:
                raise InputError(f"its frames run past its {length} bytes")
            self.fh.seek(start + pos)
            return self.fh.read(n)

        try:
            bound = decompressed_bound(read, length, self.compression)
        except ValueError as err:
            name = COMPRESSIONS[self.compression]
            raise EventFormatError(
                f"packet {self.packets} (stream {stream}) is no {name} data the decoder can read: {err}", self.path, off
            ) from None
        if bound > MAX_PACKET_BYTES:
            raise EventFormatError(
                f"packet {self.packets} (stream {stream}, {length} bytes) may decompress to {bound} bytes, more than "
                f"the {MAX_PACKET_BYTES} allowed a packet",
                self.path,
                off,
            )


def decompressed_bound(read, length: int, compression: int) -> int:
    """The most a packet of ``length`` bytes compressed as IOHeader ``compression`` says can decompress to, read
    from its frame and block headers (``read(pos, n)``: ``n`` bytes at packet byte ``pos``; a ``ValueError`` past
    its end): the larger of each frame's declared content size and the sum of its blocks' largest sizes.
    ``ValueError`` for anything but a sequence of LZ4 (compression 1, 2) or Zstd (3, 4) frames and skippable frames.
    """
    if compression == 0:
        return length
    lz4 = compression in (1, 2)
    total = pos = 0
    while pos < length:
        (magic,) = struct.unpack("<I", read(pos, 4))
        if magic in _SKIPPABLE:
            pos += 8 + struct.unpack("<I", read(pos + 4, 4))[0]
            continue
        if magic != (_LZ4_MAGIC if lz4 else _ZSTD_MAGIC):
            raise InputError(f"magic number {magic:#010x} at byte {pos} starts no {'LZ4' if lz4 else 'Zstd'} frame")
        pos, size = (_lz4_frame if lz4 else _zstd_frame)(read, pos + 4)
        total += size
    if pos > length:
        raise InputError(f"its frames run past its {length} bytes")
    return total


def _lz4_frame(read, pos: int) -> tuple[int, int]:
    """(end, decompressed size bound) of the LZ4 frame whose descriptor starts at ``pos``."""
    flags, bd = read(pos, 2)
    if flags >> 6 != 1 or (bd >> 4) & 7 not in _LZ4_BLOCK:
        raise InputError(f"LZ4 frame descriptor {flags:#04x} {bd:#04x} at byte {pos}")
    block_max = _LZ4_BLOCK[(bd >> 4) & 7]
    declared = struct.unpack("<Q", read(pos + 2, 8))[0] if flags & 0x08 else 0
    pos += 3 + (8 if flags & 0x08 else 0) + (4 if flags & 0x01 else 0)  # FLG, BD, size, dictionary id, checksum
    blocks = 0
    while True:
        (size,) = struct.unpack("<I", read(pos, 4))
        pos += 4
        if size == 0:
            break
        stored = size & 0x7FFFFFFF
        blocks += stored if size >> 31 else block_max  # an uncompressed block, or at most the largest block
        pos += stored + (4 if flags & 0x10 else 0)
    return pos + (4 if flags & 0x04 else 0), max(declared, blocks)


def _zstd_frame(read, pos: int) -> tuple[int, int]:
    """(end, decompressed size bound) of the Zstd frame whose header descriptor is at ``pos``."""
    (fhd,) = read(pos, 1)
    if fhd & 0x08:
        raise InputError(f"Zstd frame header descriptor {fhd:#04x} at byte {pos} sets the reserved bit")
    single = bool(fhd & 0x20)
    pos += 1 + (0 if single else 1) + (0, 1, 2, 4)[fhd & 3]  # descriptor, window, dictionary id
    fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
    declared = int.from_bytes(read(pos, fcs), "little") + (256 if fcs == 2 else 0)
    pos += fcs
    blocks = 0
    while True:
        header = int.from_bytes(read(pos, 3), "little")
        kind, size = (header >> 1) & 3, header >> 3
        if kind == 3:
            raise InputError(f"Zstd block of the reserved type at byte {pos}")
        blocks += _ZSTD_BLOCK if kind == 2 else size  # compressed: at most a full block; raw or RLE: its size
        pos += 3 + (1 if kind == 1 else size)
        if header & 1:
            break
    return pos + (4 if fhd & 0x04 else 0), max(declared, blocks)


def check_ioheader(buf: bytes, path, at: int) -> tuple[int, int]:
    """Verify the IOHeader FlatBuffer ``buf`` (found at byte ``at``) as far as the decoder reads it
    unverified; returns (compression, file data table position, -1 when absent)."""
    n = len(buf)

    def bad(problem: str) -> EventFormatError:
        return EventFormatError(f"bad IOHeader: {problem}", path, at)

    def scalar(fmt: str, pos: int, what: str):
        if not 0 <= pos <= n - struct.calcsize(fmt):
            raise bad(f"{what} at IOHeader byte {pos} lies outside its {n} bytes")
        return struct.unpack_from(fmt, buf, pos)[0]

    root = scalar("<I", 0, "root table offset")
    vtable = root - scalar("<i", root, "root table")
    vt_size, table_size = scalar("<H", vtable, "vtable"), scalar("<H", vtable + 2, "vtable")
    if vt_size < 4 or vt_size % 2 or vtable + vt_size > n or table_size < 4 or root + table_size > n:
        raise bad(f"vtable of {vt_size} bytes at byte {vtable}, table of {table_size} bytes at byte {root}")

    def field(i: int, size: int) -> int | None:
        """Byte position of field ``i`` (``size`` bytes), None when absent (its default applies)."""
        slot = 4 + 2 * i
        off = scalar("<H", vtable + slot, "vtable entry") if slot + 2 <= vt_size else 0
        if off and root + off + size > n:
            raise bad(f"field {i} at IOHeader byte {root + off} lies outside its {n} bytes")
        return root + off if off else None

    at_compression, at_table, at_description = field(0, 4), field(1, 8), field(2, 4)
    compression = 0 if at_compression is None else scalar("<i", at_compression, "compression")
    data_table = -1 if at_table is None else scalar("<q", at_table, "data table position")
    if at_description is None:
        raise bad("no description")
    pos = at_description + scalar("<I", at_description, "description offset")
    length = scalar("<I", pos, "description")
    if pos + 4 + length > n:
        raise bad(f"description of {length} bytes runs past its end")
    try:
        buf[pos + 4 : pos + 4 + length].decode("utf-8")
    except UnicodeDecodeError:
        raise bad("description is not UTF-8") from None
    if compression not in COMPRESSIONS:
        known = ", ".join(f"{k} {v}" for k, v in COMPRESSIONS.items())
        raise bad(f"unknown compression {compression} (known: {known})")
    if data_table < -1:
        raise bad(f"file data table position {data_table}")
    return compression, data_table


FORMAT = EventFormat(
    name="aedat4",
    label="AEDAT 4",
    title="AEDAT 4 (iniVation DV)",
    reader=Aedat4Reader,
    signature=SIGNATURE,
    header="version 4.x",
    suffixes=(".aedat4",),
    sensor="its lowest-id event stream's size",
    writer=Aedat4Writer,
    max_side=MAX_SIDE,
    writes="one LZ4 event stream, through faery",
)
