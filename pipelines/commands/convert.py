"""``nsm convert``: copy an event file into another format, chunk by chunk (``events.convert``)."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from events.atomic import check_output
from events.convert import SUFFIXES, WRITABLE, convert, output_format
from events.formats import DEFAULT_CHUNK_EVENTS

from . import InRange

FORMATS_HELP = """formats:
  read (told by content, N-MNIST by its .bin name):
    hdf5         the project's HDF5 event files
    gesture_npy  tonic's DVS Gesture .npy (x, y, p, t ms; 128x128)
    aedat3       AEDAT 3.1 (IBM DVS Gesture)
    aedat4       AEDAT 4 (iniVation DV)
    nmnist       N-MNIST .bin (34x34)
    evt2, evt21, evt3, dat
                 Prophesee RAW EVT 2.0 / 2.1 / 3.0 and DAT (sensor size from the header)
  written (--format, else from OUT's name):
    hdf5         .h5, .hdf5
    gesture_npy  .npy (a 128x128 sensor at most)
    evt3         .raw (Prophesee EVT 3.0, through faery)
    evt2         Prophesee EVT 2.0 (give --format evt2)
    dat          .dat (Prophesee DAT)
    aedat4       .aedat4 (AEDAT 4, one LZ4 event stream, through faery)
Reading OUT back gives exactly IN's events (x, y, t in µs, polarity 0/1). What a format cannot hold exactly
(a sensor too large: AEDAT 4 at most 32767 px a side, EVT 2.0/3.0 2048, DAT 16384, HDF5 32768; times too far
apart for DAT's 32-bit or EVT 3.0's 24-bit clock) is an error, and OUT is then left as it was."""


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an event file to another format",
        description="Copy the events of IN (any readable format) to OUT in another format, a chunk at a time, so "
        "a file of any size converts in bounded memory. OUT is written atomically.",
        epilog=FORMATS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="IN", help="the event file to read")
    p.add_argument(
        "output",
        metavar="OUT",
        help="the event file to write (replaced if it exists; never IN itself, a directory, FIFO, device or socket)",
    )
    p.add_argument(
        "--format",
        choices=WRITABLE,
        help=f"output format (default: from OUT's suffix: {', '.join(f'{s} {f}' for s, f in SUFFIXES.items())})",
    )
    p.add_argument(
        "--chunk-events",
        type=int,
        default=DEFAULT_CHUNK_EVENTS,
        action=InRange,
        minimum=1,
        help=f"events read and written at a time (default {DEFAULT_CHUNK_EVENTS})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    fmt = output_format(args.output, args.format)  # a bad name is an error before the progress bar shows
    check_output(args.output, {"the input": args.input})  # so is an OUT that is IN or not a regular file
    with tqdm(desc="converting", unit="ev", unit_scale=True, disable=args.quiet) as bar:
        done = convert(args.input, args.output, fmt, args.chunk_events, progress=bar.update)
    w, h, _ = done.sensor_size
    print(f"wrote {done.n_events} events ({w}x{h}) from {done.source_format} to {done.format}: {args.output}")
    return 0
