"""The numba kernels of the binning: event checks, the slice search and the scatter of events into frames."""

from __future__ import annotations

import numpy as np
from numba import njit

import events.jit  # noqa: F401  (numba's target set before any kernel compiles)

_CHUNK = 4096  # events decoded per batch before they are scattered (fits in L1 as int64)
EXCLUDED = -(1 << 40)  # lookup-table entry of a dropped column/row/polarity: any sum with it stays < 0


@njit(cache=True, nogil=True)
def check_range(ev, j0, j1, width, height):  # pragma: no cover - compiled
    """Index of the first event in ``[j0, j1)`` off the sensor, with polarity not 0/1, or earlier than its
    predecessor; -1 when all are good."""
    for j in range(j0, j1):
        e = ev[j]
        if e.x < 0 or e.x >= width or e.y < 0 or e.y >= height or e.p < 0 or e.p > 1:
            return j
        if j > 0 and e.t < ev[j - 1].t:
            return j
    return -1


@njit(cache=True, nogil=True)
def searchsorted_left(ev, values, out):  # pragma: no cover - compiled
    """``out[k] = np.searchsorted(ev["t"], values[k], side="left")`` without copying the strided column."""
    n = len(ev)
    for k in range(len(values)):
        v = values[k]
        lo = 0
        hi = n
        while lo < hi:
            mid = (lo + hi) >> 1
            if ev[mid].t < v:
                lo = mid + 1
            else:
                hi = mid
        out[k] = lo


@njit(cache=True, nogil=True)
def bin_events(
    ev, width, height, starts, ends, xmap, ymap, pmap, out, binary, maxval, check_lo, check_hi
):  # pragma: no cover - compiled
    """Fill ``out[i]`` (``out`` is ``(len(starts), frame_size)``) with events ``[starts[i], ends[i])``.

    Checks as :func:`check_range` does every event it bins and every other event of
    ``[check_lo, check_hi)``, so that threads given a partition of ``[0, len(ev))`` check every event
    once; returns the index of a bad event it met (-1 when none). Slice events are checked while they
    are binned, so they are read once. ``xmap[x] + ymap[y] + pmap[p]`` is the event's offset within a
    frame, negative when cropped away or of a dropped polarity. Each output frame is zeroed just before
    its events are added, so that it sits in cache while they are; counts saturate at ``maxval``.
    """
    buf = np.empty(_CHUNK, np.int64)
    w = np.uint16(width)
    h = np.uint16(height)
    one = np.uint8(1)
    checked = check_lo  # invariant: events [check_lo, min(checked, check_hi)) are known good
    for i in range(len(starts)):
        j0 = starts[i]
        j1 = ends[i]
        stop = min(j0, check_hi)
        if stop > checked:
            bad = check_range(ev, checked, stop, width, height)
            if bad >= 0:
                return bad
        frame = out[i]
        frame[:] = 0
        prev = ev[j0 - 1].t if j0 > 0 else ev[0].t
        c0 = j0
        while c0 < j1:
            c1 = min(c0 + _CHUNK, j1)
            m = 0
            for j in range(c0, c1):
                e = ev[j]
                ux = np.uint16(e.x)  # negative coordinates wrap to >= 32768, beyond any sensor
                uy = np.uint16(e.y)
                up = np.uint8(e.p)
                tj = e.t
                if (ux >= w) | (uy >= h) | (up > one) | (tj < prev):
                    return j
                prev = tj
                buf[m] = xmap[ux] + ymap[uy] + pmap[up]
                m += 1
            for q in range(m):
                k = buf[q]
                if k < 0:
                    continue
                if binary:
                    frame[k] = 1
                else:
                    v = frame[k]
                    if v < maxval:
                        frame[k] = v + 1
            c0 = c1
        if j1 > checked:
            checked = j1
    if check_hi > checked:
        return check_range(ev, checked, check_hi, width, height)
    return -1
