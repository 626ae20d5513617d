"""What the writers that go through faery's encoders share (``formats/aedat4_writer.py``: AEDAT 4; the Prophesee
writer, ``formats/prophesee/writer.py``, encodes EVT 2.0, EVT 3.0 and DAT itself): the encoder opened on a
temporary file renamed over the target when the block ends without error (``events.atomic``), the chunk checks of
:class:`~events.formats.CheckedChunks`, and every call into faery turned into ``EventFormatError`` naming the
file."""

from __future__ import annotations

from contextlib import ExitStack

import numpy as np

from events.atomic import atomic_path
from events.errors import InputError
from events.formats import CheckedChunks, native_call

FAERY_EVENTS = np.dtype([("t", "<u8"), ("x", "<u2"), ("y", "<u2"), ("on", "?")])
"""faery's event packets: t in µs, x, y, on = polarity 1."""


def faery_call(fn, path, where: str):
    """One call into faery (``native_call``), its failures ``EventFormatError`` naming ``path``."""
    return native_call(fn, path, f"faery failed {where}")


class FaeryWriter(CheckedChunks):
    """A streaming writer over one faery encoder: a context manager whose ``write(events)`` checks the chunk, lets
    :meth:`_checked` refuse what the format cannot hold, and hands :meth:`_packet`'s result to the encoder.
    Subclasses give :meth:`_encoder_for` (the encoder on the temporary file) and :meth:`_packet`, and check in
    their constructor what the format's header can hold (the sensor size); should faery still refuse to open
    the encoder, that is an ``EventFormatError`` naming the file, and the target is left as it was."""

    def __init__(self, path, sensor_size):
        super().__init__(path, sensor_size)
        self._stack: ExitStack | None = None
        self._encoder = None

    def _encoder_for(self, tmp: str):
        raise NotImplementedError

    def _checked(self, ev: np.ndarray, last_t: int | None) -> None:
        """Refuse (``ValueError`` naming the file) a chunk this format cannot hold exactly; ``last_t``: the time of
        the event before it. Accepts everything unless a subclass says otherwise."""

    def _packet(self, ev: np.ndarray):
        raise NotImplementedError

    def __enter__(self):
        with ExitStack() as stack:
            tmp = str(stack.enter_context(atomic_path(self.path)))
            self._encoder = faery_call(
                lambda: stack.enter_context(self._encoder_for(tmp)), self.path, "opening its encoder"
            )
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc) -> bool:
        stack, self._stack, self._encoder = self._stack, None, None
        return bool(stack.__exit__(*exc)) if stack is not None else False

    def write(self, events) -> None:
        """Append ``events`` (fields x, y, t, p; after every event written before)."""
        if self._encoder is None:
            raise InputError(f"{self.path}: writer is not open (use it as a context manager)")
        last_t = self.last_t
        ev = self.check(events)
        if not len(ev):
            return
        self._checked(ev, last_t)
        packet = self._packet(ev)
        faery_call(lambda: self._encoder.write(*packet), self.path, "writing")
