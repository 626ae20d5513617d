"""Atomic writes (``events.atomic``): the old file survives a failed write, the new one gets the umask's
permissions and text is UTF-8; a destination that is not a regular file, or that is one of the inputs, is refused
before anything is written (``check_output``)."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from events.atomic import OutputError, atomic_file, atomic_path, atomic_write, check_output, write_text_atomic


def test_atomic_file_keeps_the_old_file_on_error_and_follows_umask(tmp_path):
    target = tmp_path / "sub" / "f.png"
    with atomic_file(target) as f:
        f.write(b"first")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as f:
            f.write(b"half")
            raise RuntimeError("crash while writing")
    assert target.read_bytes() == b"first"
    assert [p.name for p in target.parent.iterdir()] == ["f.png"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_text_is_utf8_and_atomic_path_hands_over_a_fresh_temporary_file(tmp_path):
    target = tmp_path / "notes.txt"
    write_text_atomic(target, "µs ± 1\n")
    assert target.read_bytes() == "µs ± 1\n".encode()
    with atomic_path(tmp_path / "graph.h5") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".graph.h5.") and tmp.suffix == ".tmp"
        tmp.write_bytes(b"written by a library")
    assert (tmp_path / "graph.h5").read_bytes() == b"written by a library"


@pytest.fixture
def specials(tmp_path):
    """Paths of a FIFO, a folder, a UNIX socket and a character device (/dev/null), each with its kind."""
    fifo, folder = tmp_path / "fifo", tmp_path / "folder"
    os.mkfifo(fifo)
    folder.mkdir()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    yield [
        (fifo, "a FIFO (named pipe), not a regular file", stat.S_ISFIFO),
        (folder, "Is a directory (a folder is there where a file is expected", stat.S_ISDIR),
        (tmp_path / "sock", "a socket, not a regular file", stat.S_ISSOCK),
        ("/dev/null", "a character device, not a regular file", stat.S_ISCHR),
    ]
    sock.close()


@pytest.mark.parametrize(
    "write",
    [
        lambda path: write_text_atomic(path, "text"),
        lambda path: atomic_file(path).__enter__(),
        lambda path: atomic_path(path).__enter__(),
        lambda path: atomic_write(path, "r+b").__enter__(),
    ],
    ids=["write_text_atomic", "atomic_file", "atomic_path", "atomic_write r+b"],
)
def test_every_atomic_writer_refuses_a_destination_that_is_not_a_regular_file(specials, write):
    """A rename over a FIFO, socket or device would replace it by a regular file (as root, /dev/null itself), and
    over a folder would fail once all the work is done: refused first, naming the path, nothing written."""
    for path, why, still in specials:
        before = sorted(os.listdir(os.path.dirname(path)))
        with pytest.raises(OutputError) as err:
            write(path)
        assert str(err.value).startswith(f"could not write {path}: ") and why in str(err.value)
        assert still(os.stat(path).st_mode)  # still a FIFO, a folder, a socket, a device
        assert sorted(os.listdir(os.path.dirname(path))) == before  # no temporary file left


def test_a_link_to_a_special_file_is_refused_and_a_missing_or_dangling_path_passes(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "to-fifo").symlink_to(fifo)
    with pytest.raises(OutputError, match="a FIFO"):
        write_text_atomic(tmp_path / "to-fifo", "x")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and (tmp_path / "to-fifo").is_symlink()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for path in (tmp_path / "new.txt", tmp_path / "dangling", tmp_path / "sub" / "new.txt"):
        assert check_output(path) == path
        write_text_atomic(path, "written")
        assert path.read_text() == "written"


def test_an_output_that_is_an_input_is_refused_through_links(tmp_path):
    """The same file as an input (the path itself, a symbolic link, a hard link, another spelling of the path)
    is refused naming the input's role and path; the input is left as it was."""
    source = tmp_path / "in.pt"
    source.write_bytes(b"precious")
    (tmp_path / "soft.pt").symlink_to(source)
    os.link(source, tmp_path / "hard.pt")
    (tmp_path / "sub").mkdir()
    for out in (source, tmp_path / "soft.pt", tmp_path / "hard.pt", tmp_path / "sub" / ".." / "in.pt"):
        with pytest.raises(OutputError) as err:
            check_output(out, {"--checkpoint": source, "--labels": None})
        assert str(err.value) == (
            f"could not write {out}: it is the same file as --checkpoint {source} "
            "(writing it would overwrite the input: choose another output path)"
        )
    assert source.read_bytes() == b"precious"
    other = tmp_path / "other.pt"
    other.write_bytes(b"old output")
    assert check_output(other, [("--checkpoint", source), ("--events", tmp_path / "missing")]) == other


def test_a_followed_output_may_be_a_fifo_or_device_but_never_an_input(tmp_path):
    """``regular=False`` (an output opened and followed as it is written, ``nsm stream --out``)."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert check_output(fifo, regular=False) == fifo
    assert str(check_output("/dev/null", {"--events": tmp_path / "rec.bin"}, regular=False)) == "/dev/null"
    with pytest.raises(OutputError, match="same file as --events"):
        check_output(fifo, {"--events": fifo}, regular=False)
