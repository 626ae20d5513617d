"""``nsm convert``: copy an event file into another format, chunk by chunk (``events.convert``)."""

from __future__ import annotations

import argparse

from tqdm import tqdm

from events.atomic import check_output
from events.convert import SUFFIXES, WRITABLE, convert, output_format
from events.formats import DEFAULT_CHUNK_EVENTS
from events.formats.registry import EVENT_FORMATS

from . import InRange


def formats_help() -> str:
    """The formats ``nsm convert`` reads and writes, for its ``--help``, from the registered formats' records."""
    by_name = ", ".join(f"{f.label} by its {'/'.join(f.suffixes)} name" for f in EVENT_FORMATS if f.signature is None)
    lines = ["formats:", f"  read (told by content{', ' + by_name if by_name else ''}):"]
    lines += [f"    {f.name:<12} {f.title}; sensor: {f.sensor.replace('`', '')}" for f in EVENT_FORMATS]
    lines.append("  written (--format, else from OUT's name):")
    for f in EVENT_FORMATS:
        if f.writer is not None:
            names = ", ".join(f.suffixes) or f"give --format {f.name}"
            more = f"; {f.writes}" if f.writes else ""
            lines.append(f"    {f.name:<12} {names}: {f.label}, at most {f.max_side} px a side{more}")
    lines += [
        "Reading OUT back gives exactly IN's events (x, y, t in µs, polarity 0/1). What a format cannot hold exactly",
        "(a sensor too large; times too far apart for DAT's 32-bit or EVT 3.0's 24-bit clock) is an error, and OUT",
        "is then left as it was.",
    ]
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an event file to another format",
        description="Copy the events of IN (any readable format) to OUT in another format, a chunk at a time, so "
        "a file of any size converts in bounded memory. OUT is written atomically.",
        epilog=formats_help(),
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
