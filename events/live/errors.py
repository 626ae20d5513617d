"""The errors of live sources (``events.live``): every message names the source."""

from __future__ import annotations

from events.errors import UserError


class LiveSourceError(UserError, OSError):
    """A live source that cannot be used: ``str(err)`` reads ``"<source>: <problem>"``."""

    def __init__(self, problem: str, source: str):
        self.problem, self.source = problem, source
        super().__init__(f"{source}: {problem}")


class SourceLost(LiveSourceError):
    """A live source that went away mid-stream: it stalled, or did not come back in time to ``reconnect_s``."""
