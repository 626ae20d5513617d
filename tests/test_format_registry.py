"""The registry of event formats is the one list of them: detection recognizes every registered format, the records
agree with their readers and writers, and docs/design.md and ``nsm convert --help`` show what the records say."""

from __future__ import annotations

from pathlib import Path

import pytest

import events
from events.convert import SUFFIXES, WRITABLE
from events.formats.aedat3 import write_aedat3
from events.formats.nmnist import write_nmnist
from events.formats.registry import EVENT_FORMATS, NAMES, event_format, formats_table
from events.io import FORMATS, detect_format
from events.types import make_events
from pipelines.cli import main

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design.md"
EVENTS = make_events([1, 2, 3], [1, 0, 2], [10, 20, 30], [0, 1, 1])
READ_ONLY = {  # a file of each registered format that no registered writer writes
    "aedat3": lambda path: write_aedat3(path, EVENTS),
    "evt21": lambda path: path.write_bytes(b"% evt 2.1\n% geometry 4x4\n% end\n"),  # header, no events
    "nmnist": lambda path: write_nmnist(path, EVENTS),
}
WRITERS = [f for f in EVENT_FORMATS if f.writer is not None]


def sample(fmt, folder: Path) -> Path:
    """A small file of ``fmt``, named so that only its content can tell the format (its suffix when it has no
    signature)."""
    path = folder / (f"sample-{fmt.name}" + (fmt.suffixes[0] if fmt.signature is None else ".data"))
    if fmt.writer is None:
        READ_ONLY[fmt.name](path)
    else:
        with fmt.writer(path, (4, 4)) as out:
            out.write(EVENTS)
    return path


@pytest.mark.parametrize("fmt", EVENT_FORMATS, ids=NAMES)
def test_detection_recognizes_every_registered_format(tmp_path, fmt):
    path = sample(fmt, tmp_path)
    assert detect_format(path) == fmt.name
    with events.reader(path) as r:
        assert r.format == fmt.name and isinstance(r, fmt.reader)
        assert len(r.read().events) == (0 if fmt.name == "evt21" else len(EVENTS))


def test_the_records_agree_with_each_other_and_with_io_and_convert():
    assert len(set(NAMES)) == len(NAMES) and FORMATS == NAMES
    suffixes = [s for f in EVENT_FORMATS for s in f.suffixes]
    assert len(set(suffixes)) == len(suffixes), "a name ending stands for one format"
    for fmt in EVENT_FORMATS:
        assert fmt.signature is not None or fmt.suffixes, f"{fmt.name}: nothing recognizes it"
        assert all(s.startswith(".") and s == s.lower() for s in fmt.suffixes)
        assert (fmt.writer is None) == (fmt.max_side is None)
        assert event_format(fmt.name) is fmt
    assert WRITABLE == tuple(f.name for f in WRITERS)
    assert SUFFIXES == {s: f.name for f in WRITERS for s in f.suffixes}
    with pytest.raises(ValueError, match="known: " + ", ".join(NAMES)):
        event_format("evt4")


@pytest.mark.parametrize("fmt", WRITERS, ids=[f.name for f in WRITERS])
def test_each_writer_takes_its_largest_side_and_refuses_one_more(tmp_path, fmt):
    top = fmt.max_side
    with fmt.writer(tmp_path / "largest", (top, top)) as out:
        out.write(make_events([top - 1], [top - 1], [5], [1]))
    assert events.read(tmp_path / "largest", fmt.name).events["x"].tolist() == [top - 1]
    with pytest.raises(ValueError, match=str(top)):
        with fmt.writer(tmp_path / "too-wide", (top + 1, 1)):
            pass
    assert not (tmp_path / "too-wide").exists()


def test_design_doc_tables_exactly_the_registered_formats():
    table = formats_table()
    text = DESIGN.read_text(encoding="utf-8")
    assert text.count(table.splitlines()[0]) == 1, "docs/design.md: no table of formats, or two"
    lines = []
    for line in text[text.index(table.splitlines()[0]) :].splitlines():
        if not line.startswith("|"):
            break
        lines.append(line)
    assert [line.split("|")[1].strip(" `") for line in lines[2:]] == list(NAMES)
    assert "\n".join(lines) == table, (
        "docs/design.md's table of formats differs from the records; print the table with "
        "python -c 'from events.formats.registry import formats_table; print(formats_table())'"
    )


def test_convert_help_lists_every_registered_format(capsys):
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    for fmt in EVENT_FORMATS:
        assert f"    {fmt.name:<12} {fmt.title}; sensor: " in out
    for fmt in WRITERS:
        assert f"    {fmt.name:<12} {', '.join(fmt.suffixes) or 'give --format ' + fmt.name}: {fmt.label}" in out
    assert "{" + ",".join(WRITABLE) + "}" in out
