"""Atomic file writes: everything a user relies on (event files, frame caches, checkpoints, exports, figures,
run records) is written to a temporary file beside its destination, flushed to disk and renamed over it, so a
crash leaves either the old file or the new one, never half of one (docs/design.md section 7).

The temporary file is ``.<name>.<pid>.<random>.tmp`` (``<pid>``: the writing process); it is created with mode
0o666, so the process's umask gives it the usual permissions. A writer killed mid-write leaves it behind:
:func:`remove_dead_temps` recognises those stale files, whose process no longer runs on this machine or which were
not modified for ``STALE_TEMP_S`` (a day: a dead writer whose process number was reused since, or one on another
machine sharing the folder), never one of this process's. The writers of a command's one output (``nsm convert``,
``nsm export``, the frame cache, a run folder) call it before they write (it lists the folder, which is too slow to
do before each of the thousands of files of a simulated data set).

Before anything is written, :func:`check_output` refuses a destination that exists and is not a regular file (a
folder, a FIFO, a device, a socket: the rename would replace it by a regular file, or fail after all the work) and,
when the caller names its inputs, one that is the same file as an input (through symbolic or hard links too), which
the write would replace; ``atomic_write`` runs the first check on every path it writes, and commands run both at
their start, before a long job.

A write that the system refuses (no permission, a read-only or full disk, a file where a folder should be) raises
``OutputError``, which names the destination and says what to do, whether the refusal reached the writer as an
``OSError`` or as another library's error (``torch.save`` reports a full disk as ``RuntimeError: ... unexpected
pos``).
A library that reads back what it wrote and cannot recover from a failed write (HDF5 left in that state prints
errors when its objects are freed and can crash the process) writes through ``atomic_write(path, "r+b")``: from
the first refused write on it writes to memory, so it can finish and close cleanly before ``OutputError`` is raised.
"""

from __future__ import annotations

import errno
import glob
import io
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from events.errors import UserError

_TEMP_NAME = re.compile(r"^\.(.+)\.(\d+)\.[A-Za-z0-9_]+\.tmp$")
STALE_TEMP_S = 24 * 3600.0  # a temporary file not modified for this long belongs to a dead writer

_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space or write elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
    errno.EFBIG: "the file outgrew what the file system or a limit allows: write elsewhere",
    errno.EACCES: "check the permissions of the file and its folders, or use another path",
    errno.EPERM: "check the permissions of the file and its folders, or use another path",
    errno.EROFS: "the file system is read-only: write elsewhere",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EEXIST: "a file is there where a folder is expected: choose another path",
    errno.EISDIR: "a folder is there where a file is expected: choose another path",
    errno.ENAMETOOLONG: "a name in that path is longer than the file system allows: choose a shorter one",
}
"""What to do about each way the system refuses to open, create or write a file, by ``errno``."""


def os_refusal(err: BaseException) -> str | None:
    """One line naming the file and what to do for an ``OSError`` by which the system refused a file (one of
    ``_ADVICE``'s error numbers: permission denied, a read-only or full disk, a file where a folder should be,
    ...): an ``OutputError``'s own message, else ``<file>: <reason> (<what to do>)``; ``None`` for any other
    error."""
    if isinstance(err, OutputError):
        return str(err)
    if not isinstance(err, OSError) or err.errno not in _ADVICE:
        return None
    where = f"{err.filename}: " if err.filename is not None else ""
    return f"{where}{err.strerror or os.strerror(err.errno)} ({_ADVICE[err.errno]})"


class OutputError(UserError, OSError):
    """A file that could not be written: ``str(err)`` reads ``could not write <path>: <why> (<what to do>)``, with
    the folder at fault before ``<why>`` when creating one of ``path``'s folders failed; ``errno`` is the
    refusal's, ``path`` the destination. ``advice``: what to do, when the refusal's ``errno`` has no entry in
    ``_ADVICE`` (a refusal of this project's own, :func:`check_output`'s)."""

    def __init__(self, path, cause: OSError, advice: str | None = None):
        path = Path(path)
        in_folder = cause.filename is not None and Path(os.fsdecode(cause.filename)) in path.parents
        why = (f"{cause.filename}: " if in_folder else "") + (cause.strerror or str(cause))
        advice = advice or _ADVICE.get(cause.errno)
        super().__init__(f"could not write {path}: {why}{f' ({advice})' if advice else ''}")
        self.errno, self.path = cause.errno, path


_SPECIAL = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What an ``os.stat`` ``st_mode`` is, for messages: "a regular file", "a directory", "a FIFO (named pipe)",
    "a character device", "a block device", "a socket", else "not a regular file"."""
    if stat.S_ISREG(mode):
        return "a regular file"
    return next((name for test, name in _SPECIAL if test(mode)), "not a regular file")


def _same_file(a, b) -> bool:
    """Whether ``a`` and ``b`` are one file (``os.path.samefile``: links followed, hard links too); False when
    either cannot be reached."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def check_output(
    path: str | os.PathLike,
    inputs: Mapping[str, str | os.PathLike | None] | Iterable[tuple[str, str | os.PathLike | None]] = (),
    *,
    regular: bool = True,
) -> Path:
    """``path`` as a :class:`~pathlib.Path`, once it is safe to write: raises ``OutputError`` naming it, before
    anything is written, when it exists (``os.stat``, links followed) and

    - is not a regular file (with ``regular``, the default): a directory (the ``EISDIR`` refusal), a FIFO, a
      device or a socket, which an atomic write's rename would replace by a regular file (as root,
      ``/dev/null`` itself);
    - is the same file as one of ``inputs`` (``os.path.samefile``: also through symbolic and hard links), which
      the write would destroy; ``inputs`` maps each input's role (``"--checkpoint"``, ``"the input"``, ...) to its
      path (``None``: no such input), or is a sequence of such pairs.

    ``regular=False`` is for an output meant to be followed as it is written (``nsm stream --out``, opened rather
    than written atomically), which may be a FIFO or a device. A path that does not exist (or cannot be reached,
    which writing it will report) passes."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return path
    if regular and stat.S_ISDIR(mode):
        raise OutputError(path, IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR)))
    if regular and not stat.S_ISREG(mode):
        raise OutputError(
            path,
            OSError(None, f"it is {file_kind(mode)}, not a regular file"),
            "writing would replace it by a regular file: choose another path",
        )
    for role, source in inputs.items() if isinstance(inputs, Mapping) else inputs:
        if source is not None and _same_file(path, source):
            raise OutputError(
                path,
                OSError(None, f"it is the same file as {role} {source}"),
                "writing it would overwrite the input: choose another output path",
            )
    return path


class _WatchedFile(io.FileIO):
    """A file that remembers its first failed write (``failure``): a library that writes through it may raise an
    error of its own in its place, as ``torch.save`` does on a full disk."""

    failure: OSError | None = None

    def write(self, data):
        try:
            return super().write(data)
        except OSError as err:
            self.failure = self.failure or err
            raise


class _ShieldedFile(io.RawIOBase):
    """A read-write file on which a write the system refuses never fails: the refusal is kept (``failure``, raised
    again by :meth:`check`), and that write and every later one go to pages held in memory, which reads see, so a
    library writing through the file (h5py's file-object driver) sees a consistent file and can close it. The memory
    grows with what is written after the refusal: the writer calls :meth:`check` often enough to bound it."""

    PAGE = 1 << 16

    def __init__(self, fd: int):
        super().__init__()
        self._fd, self._pos = fd, 0
        self.failure: OSError | None = None
        self._pages: dict[int, bytearray] = {}  # page number -> its bytes, once writes go to memory
        self._size = 0  # the file's size as the library sees it, once writes go to memory

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        end = os.fstat(self._fd).st_size if self.failure is None else self._size
        self._pos = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: end}[whence] + pos
        return self._pos

    def check(self) -> None:
        """Raise the first refused write's ``OSError``, if there was one."""
        if self.failure is not None:
            raise self.failure

    def _page(self, k: int) -> bytearray:
        """Page ``k`` as the library sees it (from memory, else from disk, zero-padded)."""
        page = self._pages.get(k)
        if page is None:
            page = bytearray(os.pread(self._fd, self.PAGE, k * self.PAGE).ljust(self.PAGE, b"\0"))
        return page

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        if self.failure is None:
            try:
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:], self._pos + done)
            except OSError as err:
                self.failure, self._size = err, max(os.fstat(self._fd).st_size, self._pos + done)
        pos = self._pos + done
        while done < len(view):
            k, at = divmod(pos, self.PAGE)
            n = min(self.PAGE - at, len(view) - done)
            page = self._pages[k] = self._page(k)
            page[at : at + n] = view[done : done + n]
            done, pos = done + n, pos + n
        self._pos = pos
        self._size = max(self._size, pos)
        return done

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        if self.failure is None:
            n = os.preadv(self._fd, [view], self._pos)
        else:
            n = max(0, min(len(view), self._size - self._pos))
            done = 0
            while done < n:
                k, at = divmod(self._pos + done, self.PAGE)
                m = min(self.PAGE - at, n - done)
                view[done : done + m] = self._page(k)[at : at + m]
                done += m
        self._pos += n
        return n

    def truncate(self, size: int | None = None) -> int:
        size = self._pos if size is None else size
        if self.failure is None:
            try:
                os.ftruncate(self._fd, size)
                return size
            except OSError as err:
                self.failure = err
        self._size = size
        return size

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()


def _create_temp(path: Path) -> tuple[int, Path]:
    """An exclusive new ``.<name>.<pid>.<random>.tmp`` beside ``path``: (file descriptor, its path)."""
    while True:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666), tmp
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

    Yields ``(file_object, temp_path)``: the file opened with ``mode`` (``"wb"``, or ``"w"`` for UTF-8 text; or
    ``"r+b"``, an unbuffered read-write file for a library such as h5py that cannot recover from a failed write:
    from the first write the system refuses on, writes go to memory, and the block should call the file's
    ``check()`` regularly, which raises the refusal, to bound that memory), or with ``mode=None`` no file object
    (``None``), for libraries that open the path themselves.
    Before the rename the file is fsynced, and after it the folder. On any error the temporary file is removed
    and ``path`` is left as it was. Parent folders are created.

    Raises ``OutputError`` (naming ``path``) before anything is written when ``path`` exists and is not a regular
    file (:func:`check_output`: a directory, FIFO, device or socket is never replaced); and when creating the
    folders or the temporary file, writing the file object (whatever exception the block then raised, or none),
    flushing, syncing or renaming fails with an ``OSError``; an error the block raises otherwise (with
    ``mode=None``: any) passes unchanged.
    """
    path = check_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temp(path)
    except OSError as err:
        raise OutputError(path, err) from err
    raw = None if mode is None else _ShieldedFile(fd) if mode == "r+b" else _WatchedFile(fd, "w")
    in_block = False
    try:
        if raw is None:
            os.close(fd)
            in_block = True
            yield None, tmp
            in_block = False
            _fsync_path(tmp)
        else:
            opened = raw if mode == "r+b" else io.BufferedWriter(raw)
            with opened if "b" in mode else io.TextIOWrapper(opened, encoding="utf-8") as fh:
                in_block = True
                yield fh, tmp
                in_block = False
                if raw.failure is not None:
                    raise raw.failure
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_path(path.parent, directory=True)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, Exception) and raw is not None and raw.failure is not None:
            raise OutputError(path, raw.failure) from err
        if isinstance(err, OSError) and not in_block:
            raise OutputError(path, err) from err
        raise


@contextmanager
def atomic_path(path) -> Iterator[Path]:
    """``atomic_write(path, mode=None)``: yields the temporary path for a library that opens files itself."""
    with atomic_write(path, mode=None) as (_, tmp):
        yield tmp


@contextmanager
def atomic_file(path, mode: str = "wb"):
    """``atomic_write(path, mode)``: yields the open file (``"wb"``, ``"r+b"``, or ``"w"`` for UTF-8 text)."""
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


def _stale(tmp: Path, pid: int) -> bool:
    """Whether temporary file ``tmp`` of process ``pid`` was left by a dead writer (module docstring)."""
    if pid == os.getpid():
        return False
    if not pid_alive(pid):
        return True
    try:
        return time.time() - tmp.lstat().st_mtime > STALE_TEMP_S
    except OSError:
        return False


def remove_dead_temps(folder, name: str | None = None) -> list[Path]:
    """Delete the temporary files (``.<name>.<pid>.<random>.tmp``) that writers killed mid-write left in
    ``folder`` (only those for ``name`` when given): those whose process no longer runs, or that were not modified
    for ``STALE_TEMP_S``; never one of this process's. Return what was removed (a folder that cannot be listed:
    nothing)."""
    pattern = f".{glob.escape(name)}.*.tmp" if name is not None else ".*.tmp"
    removed = []
    try:
        candidates = list(Path(folder).glob(pattern))
    except OSError:
        return removed
    for tmp in candidates:
        m = _TEMP_NAME.match(tmp.name)
        if m and (name is None or m.group(1) == name) and _stale(tmp, int(m.group(2))):
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # not ours to remove (permissions): left in place
                continue
            removed.append(tmp)
    return removed
