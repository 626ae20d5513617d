"""Gaps in a live stream's event clock: data a server or a network may have dropped (the rule: ``events.live``)."""

from __future__ import annotations

import numpy as np

GAP_MIN_US = 100_000  # the shortest pause in the event clock reported as a gap (module docstring)
GAP_HISTORY = 1000  # a gap is a pause longer than the time this many events before it took


class ClockGaps:
    """Gaps in a stream's event clock, by the rule of the module docstring; fed each packet's times in order
    (:meth:`add`). ``count``, ``total_us``; ``largest``: ``(t_us of the event before it, length_us, events/s before
    it)`` or None; :meth:`summary`: them for a stream's summary. Memory: ``GAP_HISTORY`` times."""

    def __init__(self):
        self._recent = np.empty(0, dtype=np.int64)  # the last GAP_HISTORY times seen
        self.count = self.total_us = 0
        self.first_us: int | None = None
        self.largest: tuple[int, int, float] | None = None

    def add(self, t: np.ndarray) -> None:
        if not len(t):
            return
        times = np.concatenate([self._recent, np.asarray(t, dtype=np.int64)])
        self.first_us = int(times[0]) if self.first_us is None else self.first_us
        after = np.arange(max(GAP_HISTORY, len(self._recent)), len(times))  # each new event with enough before it
        pause = times[after] - times[after - 1]
        span = times[after - 1] - times[after - GAP_HISTORY]  # the time the GAP_HISTORY events before it took
        for i in np.flatnonzero((pause > GAP_MIN_US) & (pause > span)):
            length = int(pause[i])
            self.count, self.total_us = self.count + 1, self.total_us + length
            if self.largest is None or length > self.largest[1]:
                rate = (GAP_HISTORY - 1) / max(int(span[i]), 1) * 1e6
                self.largest = (int(times[after[i] - 1]), length, rate)
        self._recent = times[-GAP_HISTORY:].copy()

    def summary(self) -> dict:
        """``clock_gaps`` (count), ``clock_gap_s`` (their total) and ``largest_clock_gap`` (``at_s``: seconds from
        the first event to the gap, ``length_s``, ``events_per_s`` before it; None without a gap)."""
        largest = None
        if self.largest is not None:
            t, length, rate = self.largest
            largest = {"at_s": (t - self.first_us) * 1e-6, "length_s": length * 1e-6, "events_per_s": rate}
        return {"clock_gaps": self.count, "clock_gap_s": self.total_us * 1e-6, "largest_clock_gap": largest}
