"""Atomic file writes: everything a user relies on (event files, frame caches, checkpoints, exports, figures,
run records) is written to a temporary file beside its destination, flushed to disk and renamed over it, so a
crash leaves either the old file or the new one, never half of one (docs/design.md section 7).

The temporary file is ``.<name>.<pid>.<random>.tmp``; ``remove_dead_temps`` recognises those of writers that
were killed mid-write. It is created with mode 0o666, so the process's umask gives it the usual permissions.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_TEMP_NAME = re.compile(r"^\.(.+)\.(\d+)\.[A-Za-z0-9_]+\.tmp$")


def _create_temp(path: Path) -> tuple[int, Path]:
    """An exclusive new ``.<name>.<pid>.<random>.tmp`` beside ``path``: (file descriptor, its path)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue


def _fsync_path(path: Path, directory: bool = False) -> None:
    """Flush a file (or a folder's entries) to disk; folders that cannot be opened are skipped."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str | None = "wb") -> Iterator[tuple]:
    """Write ``path`` through a temporary file beside it, renamed over ``path`` when the block succeeds.

    Yields ``(file_object, temp_path)``: the file opened with ``mode`` (``"wb"``, or ``"w"`` for UTF-8 text),
    or with ``mode=None`` no file object (``None``), for libraries such as h5py and nir that open the path
    themselves. Before the rename the file is fsynced, and after it the folder. On any error the temporary
    file is removed and ``path`` is left as it was. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        if mode is None:
            os.close(fd)
            yield None, tmp
            _fsync_path(tmp)
        else:
            with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
                yield fh, tmp
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """``atomic_write(path, mode=None)``: yields the temporary path for a library that opens files itself."""
    with atomic_write(path, mode=None) as (_, tmp):
        yield tmp


@contextmanager
def atomic_file(path, mode: str = "wb"):
    """``atomic_write(path, mode)``: yields the open file (``"wb"``, or ``"w"`` for UTF-8 text)."""
    with atomic_write(path, mode) as (fh, _):
        yield fh


def write_text_atomic(path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    with atomic_file(path, "w") as f:
        f.write(text)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dead_temps(folder, name: str | None = None) -> list[Path]:
    """Delete the temporary files (``.<name>.<pid>.<random>.tmp``) that writers killed mid-write left in
    ``folder`` (only those for ``name`` when given; never a running process's); return what was removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        m = _TEMP_NAME.match(tmp.name)
        if (
            m
            and (name is None or m.group(1) == name)
            and int(m.group(2)) != os.getpid()
            and not pid_alive(int(m.group(2)))
        ):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
