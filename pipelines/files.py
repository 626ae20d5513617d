"""Atomic file writes: everything a user relies on (checkpoints, exports, figures, run records) is
written to a temporary file beside its destination and renamed over it, so a crash leaves either
the old file or the new one, never half of one."""
from __future__ import annotations

import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path):
    """Yield a fresh temporary path beside ``path``; when the block succeeds it is renamed over ``path``.

    The temporary name is ``.<name>.<pid>.<random>.tmp`` in the same folder (so the rename is atomic);
    on any error it is removed and ``path`` is left as it was. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_TEMP = re.compile(r"^\.(.+)\.(\d+)\.[0-9a-f]{8}\.tmp$")


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temporary files ``atomic_path`` left in ``folder`` when its process was killed mid-write
    (those whose process id no longer runs); return what was removed."""
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        m = _TEMP.match(path.name)
        if m and not _alive(int(m.group(2))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def atomic_file(path, mode: str = "wb"):
    """Open a temporary file (``atomic_path``) for writing, created exclusively with the umask's
    permissions; it is flushed, fsynced and renamed over ``path`` when the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text_atomic(path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    with atomic_file(path, "w") as f:
        f.write(text)
