"""Prophesee event files: RAW (EVT 2.0, EVT 2.1, EVT 3.0) and DAT, decoded and encoded here, in bounded chunks.

Layout (Prophesee's "RAW File Format", "DAT File Format", "EVT 2.0/2.1/3.0 Format" pages, docs.prophesee.ai):
an ASCII header of lines ``% <keyword> <value>`` ("%", a space, ...; a RAW header may end with the optional
``% end`` line, and "data begins as soon as a line does not start with '% '" -- so a body whose first bytes happen
to be ``%`` followed by anything but a space is data, not header), then a little-endian binary body:

| format    | header names it by                          | body                                                   |
| --------- | ------------------------------------------- | ------------------------------------------------------ |
| ``evt2``  | ``% evt 2.0`` or ``% format EVT2;...``      | 32-bit words: CD_OFF/CD_ON, EVT_TIME_HIGH, ...         |
| ``evt21`` | ``% evt 2.1`` or ``% format EVT21;...``     | 64-bit words, vectors of 32 pixels of one polarity     |
| ``evt3``  | ``% evt 3.0`` or ``% format EVT3;...``      | 16-bit words, state-based (ADDR_Y, ADDR_X, TIME_LOW..) |
| ``dat``   | ``% Version 1|2`` (no ``evt`` line)         | type byte, size byte 8, then 64-bit events             |

Header: every ``% evt`` and ``% format`` line must name the same version (the same one twice is fine). The sensor
size comes from ``% format ...;width=W;height=H``, ``% geometry WxH`` and ``% Width W`` / ``% Height H``; all
that are given must agree, and one is needed. ``% t0 N`` (``% T0`` in DAT; written by the ``faery`` package, which
stores times relative to it) is added to every time: N must be a decimal integer in 0..2^63 - 1, and t0 plus an
event's time must stay within int64 (else an error at that event). ``% format EVT21;...;endianness=legacy`` (what
IMX636 / IMX646 / Gen4.1 cameras write, OpenEB's ``get_supported_formats``) says each 64-bit word was sent as two
little-endian 32-bit halves, the high half first (the EVT 2.1 page: "0x0102030405060708 is transmitted as
0x0403020108070605 on IMX636"), so read as one little-endian word its halves are swapped; without the key (or with
``endianness=little``) the word is little-endian as a whole (GenX320). Any other value is refused; for the 16- and
32-bit words of EVT 3.0 / EVT 2.0 ``legacy`` changes nothing.

Bodies, as the format pages define them:

* EVT 2.0 word: bits 31-28 type; CD_OFF (0) / CD_ON (1): 27-22 the time's bits 5-0, 21-11 x, 10-0 y;
  EVT_TIME_HIGH (8): 27-0 the time's bits 33-6. EXT_TRIGGER, OTHERS, CONTINUED and reserved types are skipped.
* EVT 2.1 word (after the legacy swap): bits 63-60 type; EVT_NEG (0) / EVT_POS (1): 59-54 time bits 5-0, 53-43 x,
  42-32 y, 31-0 valid: bit i an event at x + i; EVT_TIME_HIGH (8): 59-32 the time's bits 33-6. Others skipped.
* EVT 3.0 word: bits 15-12 type, a decoder keeping state: EVT_ADDR_Y (0: y in 10-0; bit 11 master/slave),
  EVT_ADDR_X (2: one event, polarity bit 11, x 10-0), VECT_BASE_X (3: polarity bit 11, base x 10-0), VECT_12
  (4: valid bits 11-0, events at base + i, then base += 12), VECT_8 (5: valid bits 7-0, then base += 8),
  EVT_TIME_LOW (6: the time's bits 11-0), EVT_TIME_HIGH (8: bits 23-12). An event takes the last y, time and
  polarity sent; a TIME_HIGH that changes the value sets the time's low bits to 0 until the next TIME_LOW (as
  OpenEB's decoder does). Type 1 addresses non-CD (exposure) events, whose X words are skipped until the next
  EVT_ADDR_Y (OpenEB). EXT_TRIGGER, OTHERS, CONTINUED and reserved types are skipped.
* DAT: after the header, an event type byte (12 CD, or 0 generic 2D event: the same 8-byte layout) and a size byte
  (8); each event is 64 bits: 31-0 the time in µs, 45-32 x, 59-46 y, 63-60 polarity.

Time base (decided here from the pages, stated as the contract): EVT 2.x times are 34 bits of µs ("a rollout
after 2^34 µs"), EVT 3.0's 24 bits ("after 16777215 µs the Time High value wraps and returns to 0"), DAT's 32 bits.
The EVT 2.0 and 2.1 pages say decoding starts at the first EVT_TIME_HIGH ("decoding of the event stream should
start after receiving the first event of type EVT_TIME_HIGH"), so words before it carry no time and are skipped
(OpenEB's decoders, EVT 3.0's included, do the same); the counter starts there at period 0. TIME_HIGH ("monotonic
irrespective of the event source", EVT 3.0 page) and DAT's time never go back except at a wrap of the counter.
A decrease of at least half the counter's range is read as a wrap (one period added: what OpenEB's EVT 3.0
decoder counts as a loop, and how a sparse file whose encoder writes TIME_HIGH only at events crosses a wrap); a
smaller decrease is corrupt data, refused with an error at the word's byte offset -- the pages do not tell
decoders to tolerate it (OpenEB reports it as a protocol violation, "NonMonotonicTimeHigh"). A forward
step is always read as forward (so a gap of more than one whole period between two TIME_HIGH words is beyond what
a file can say; cameras send TIME_HIGH every 16 µs (EVT 3.0) or 64 µs, and this package's writer sends the words
that keep every wrap visible). Within one TIME_HIGH, EVT 3.0's TIME_LOW may go back (several event sources); only
the events themselves must be in time order.

The package: ``header.py`` (``read_header``, the formats' names, sensor limits and time counters), ``reader.py``
(``PropheseeReader``), ``writer.py`` (``PropheseeWriter``, ``write_prophesee``), and here the four formats'
records (``FORMATS``, one ``Signature``: a ``%`` header, whose lines name the format).
"""

from __future__ import annotations

from events.formats.prophesee.header import MAX_SIDE, NAMES, read_header
from events.formats.prophesee.reader import PropheseeReader
from events.formats.prophesee.writer import WRITABLE, PropheseeWriter, write_prophesee
from events.formats.record import EventFormat, Signature

__all__ = ["FORMATS", "PropheseeReader", "PropheseeWriter", "read_header", "write_prophesee"]

SIGNATURE = Signature(b"%", "a Prophesee '%' header", lambda head, path: read_header(path).format)
_HEADERS = {
    "evt2": "`% evt 2.0` or `% format EVT2;...`",
    "evt21": "`% evt 2.1` or `% format EVT21;...`",
    "evt3": "`% evt 3.0` or `% format EVT3;...`",
    "dat": "no `evt` or `format` line, and a `% Version` line or a `.dat` name",
}
_SUFFIXES = {"evt3": (".raw",), "dat": (".dat",)}


def _writer(fmt: str):
    """``writer(path, sensor_size)`` for the record of ``fmt``."""
    return lambda path, sensor_size: PropheseeWriter(path, fmt, sensor_size)


FORMATS = tuple(
    EventFormat(
        name=fmt,
        label=NAMES[fmt],
        title=f"Prophesee {'DAT' if fmt == 'dat' else 'RAW ' + NAMES[fmt]}",
        reader=PropheseeReader,
        signature=SIGNATURE,
        header=_HEADERS[fmt],
        suffixes=_SUFFIXES.get(fmt, ()),
        sensor=f"the header's, 1..{MAX_SIDE[fmt]} a side",
        writer=_writer(fmt) if fmt in WRITABLE else None,
        max_side=MAX_SIDE[fmt] if fmt in WRITABLE else None,
    )
    for fmt in NAMES
)
"""EVT 2.0, EVT 2.1, EVT 3.0 and DAT: each read by :class:`PropheseeReader`, which takes the format from the
header; all but EVT 2.1 written by :class:`PropheseeWriter`."""
