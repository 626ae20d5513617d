"""Writing a simulated data set: its files atomically, ``README.txt`` and ``simulation.json``, and only into
a folder that holds no real recordings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from events.errors import ExistingOutputError

FORMAT_VERSION = 1


def write_text(path: Path, text: str) -> None:
    from events.atomic import atomic_write

    with atomic_write(path) as (fh, _):
        fh.write(text.encode("utf-8"))


def write_meta(out: Path, meta: dict, readme: str) -> None:
    write_text(out / "README.txt", readme)
    write_text(out / "simulation.json", json.dumps(meta, indent=2) + "\n")  # last: marks a whole run


def claim_output(out: Path, generator: str, patterns: Sequence[str]) -> set[Path]:
    """The data files (``patterns``, globs under ``out``) a previous run left in ``out``.

    Refuses (``FileExistsError``) a folder holding such files, or another generator's
    ``simulation.json``, unless its ``simulation.json`` says this generator wrote them: real
    recordings must never be overwritten or mixed with simulated ones. The caller removes the returned files that it
    does not rewrite, so that no
    sample of an earlier, larger run lingers.
    """
    found = {p for pattern in patterns for p in out.glob(pattern) if p.is_file()}
    marker = out / "simulation.json"
    if found or marker.exists():
        try:
            ours = json.loads(marker.read_text()).get("generator") == generator
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            example = sorted(found)[0] if found else marker
            raise ExistingOutputError(
                f"{out} already holds data files not written by {generator} "
                f"(e.g. {example}); choose an empty folder or one this generator wrote"
            )
    return found


def remove_stale(old: set[Path], written: set[Path]) -> None:
    for path in sorted(old - written):
        path.unlink(missing_ok=True)
