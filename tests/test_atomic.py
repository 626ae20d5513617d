"""Atomic writes (``events.atomic``): the old file survives a failed write, the new one gets the umask's
permissions and text is UTF-8."""

from __future__ import annotations

import os

import pytest

from events.atomic import atomic_file, atomic_path, write_text_atomic


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
