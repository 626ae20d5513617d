"""Atomic file writes for the jobs: everything a user relies on (checkpoints, exports, figures, run
records) is written to a temporary file beside its destination and renamed over it, so a crash
leaves either the old file or the new one, never half of one. Built on ``events.formats.atomic_write``
(temporary files ``.<name>.<pid>.<random>.tmp`` with the umask's permissions)."""

from __future__ import annotations

import os
from contextlib import contextmanager

from events.formats import atomic_write


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path`` for a library that opens files itself (h5py, nir);
    renamed over ``path`` when the block succeeds, removed (``path`` untouched) when it fails."""
    with atomic_write(path, mode=None) as (_, tmp):
        yield tmp


@contextmanager
def atomic_file(path, mode: str = "wb"):
    """Open a temporary file beside ``path`` for writing (``"wb"`` or ``"w"``, UTF-8); it is flushed,
    fsynced and renamed over ``path`` when the block succeeds. Parent folders are created."""
    with atomic_write(path, mode if "b" in mode else None) as (fh, tmp):
        if fh is not None:
            yield fh
        else:
            with open(tmp, "w", encoding="utf-8") as text:
                yield text
                text.flush()
                os.fsync(text.fileno())


def write_text_atomic(path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically."""
    with atomic_file(path, "w") as f:
        f.write(text)
