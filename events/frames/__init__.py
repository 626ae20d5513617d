"""Binning event streams into frames: numba kernels behind :func:`to_frames` and a frozen :class:`FrameSpec`.

A frame stack is a NumPy array of shape ``(T, P, H, W)``: ``T`` time slices, ``P`` polarity channels,
``H`` rows and ``W`` columns; ``frames[i, c, y, x]`` counts the events of slice ``i`` that fell on pixel
``(x, y)`` in channel ``c``.

Slicing follows ``tonic.transforms.ToFrame`` (tonic 1.7) exactly where the parameters overlap, so that a
frame stack made here equals tonic's element by element. The conventions taken over from tonic are:

* Every slice is a half-open interval; events are assigned with a left ``searchsorted`` on ``t``, so an
  event exactly on a slice's end belongs to the next slice, not to this one. Slices may overlap
  (``overlap > 0``); an event then counts in every slice that contains it.
* ``time_window_us=w`` with ``overlap=o`` (µs): the stride is ``s = w - o``; the origin ``t0`` is
  ``start_us`` or the first event's time and the end ``t1`` is ``end_us`` or the last event's time.
  ``T = floor((t1 - t0 - w) / s) + 1`` slices, or ``ceil(...) + 1`` with ``include_incomplete=True``, and at
  least one. Slice ``i`` covers ``[t0 + i*s, t0 + i*s + w)``. Consequently events after the last complete
  window are dropped (also the last event itself when ``t1 - t0`` is a multiple of ``w``), and with
  ``include_incomplete`` the last window keeps its full width and may reach past ``end_us``.
  ``T`` is computed with exact integer arithmetic (tonic uses float64; the two agree for any timestamps
  below 2**53 µs).
* ``event_count=n`` with ``overlap=o`` (events): stride ``s = n - o``; with ``m`` events and
  ``n' = min(n, m)``, ``T = floor((m - n') / s) + 1`` (``ceil`` with ``include_incomplete``); slice ``i`` holds
  events ``[i*s, i*s + n')``. A sample with fewer than ``n`` events gives one slice holding all of them.
* ``n_time_bins=n`` with ``overlap=o`` (a fraction of a bin, ``0 <= o < 1``): the bin width is
  ``w = ((t_last - t_first) // n) * (1 + o)`` (floor division first, as tonic does), the stride
  ``w * (1 - o)``; bin ``i`` covers ``[t_first + i*stride, t_first + i*stride + w)``. Because of the floor
  division the last event (and any event at or after ``t_first + n*w``) falls outside every bin, and a
  sample whose events span less than ``n`` µs gives ``n`` empty frames. ``include_incomplete`` does not
  apply to this mode (tonic ignores it; here it is rejected).

Where this module extends or departs from tonic (tonic has no such parameters, or behaves otherwise):

* Empty input gives zero frames of the right ``(P, H, W)``: ``n_time_bins`` zero frames for
  ``n_time_bins``; for ``time_window_us`` with both ``start_us`` and ``end_us`` given, the window's ``T``
  from the formula above; otherwise ``T = 0``. (tonic returns one float frame with width and height
  swapped.)
* ``polarity``: ``"both"`` gives ``P = 2`` (channel = polarity, OFF then ON), ``"on"`` keeps ON events only
  (``P = 1``), ``"off"`` OFF events only (``P = 1``), ``"merge"`` sums both polarities into one channel
  (``P = 1``). ``P`` depends only on this setting, never on ``sensor_size``'s polarity count; use
  ``"merge"`` for single-polarity sensors.
* ``crop=(cw, ch)``: a centre crop of the sensor, columns ``[(W - cw)//2, (W - cw)//2 + cw)`` and rows
  ``[(H - ch)//2, (H - ch)//2 + ch)``; events outside are dropped. Applied before downsampling.
* ``downsample=f``: event ``(x, y)`` (crop-relative) goes to pixel ``(x // f, y // f)`` (f x f sum pooling
  of events); the frame is ``ceil(ch / f)`` x ``ceil(cw / f)``, so a partial cell at the border is kept.
* Slicing is always decided on the whole stream; the polarity and crop filters apply afterwards to the
  events of each slice. ``T`` and the slice boundaries therefore do not depend on ``polarity``, ``crop`` or
  ``downsample`` (``"merge"`` equals ``"both"`` summed over channels, ``"on"`` equals its channel 1 and
  ``"off"`` its channel 0).
* ``max_frames=N``: only the first ``N`` slices are made, so the result is exactly the first ``N`` frames of
  the uncapped one (all of it when it has fewer); the later slices are never binned.
* Counts saturate at the output dtype's maximum (65535 for the default ``uint16``) instead of wrapping;
  ``binary=True`` writes 1 where the count would be positive.
* Input is checked: coordinates must lie on the sensor, polarities be 0 or 1 and timestamps be
  non-decreasing (the slicing relies on it); otherwise :class:`events.types.EventFormatError` names the
  first offending event.

Fixed-duration clips (the paper's DVS Gesture input is six 16 ms frames of one polarity, 128 -> 64 by
2 x 2 pooling, and the original NSM code kept the first 108 frames of each gesture, 18 clips:
``max_frames=108``): bin a window ``[start_us, end_us)`` with ``time_window_us`` so that quiet periods still
give zero frames. ``T`` is the floor count, complete windows only (``[0, 96 ms)`` in 16 ms windows gives
exactly 6 frames; ``[0, 100 ms)`` also 6, the last 4 ms dropped); ``include_incomplete=True`` takes the
ceiling instead (7 frames, the last one reaching to 112 ms). Then cut the stack into clips with
:func:`split_clips`, e.g. ``to_frames(ev, (128, 128), time_window_us=16_000, start_us=s, end_us=e,
polarity="on", downsample=2)`` followed by ``split_clips(frames, 6)``.

Input: an ``EVENT_DTYPE`` array is binned in place (strided views too); other structured arrays with
integer fields ``x, y, t, p`` are converted once their values are known to fit. Output: ``uint16`` by
default (tonic gives ``int16``; values are equal). The numba kernel reads every event once: it checks
it and, when it falls in a slice, adds it to that slice's frame, which is zeroed just before its events
are added so that it stays in cache meanwhile; the kernels are compiled on first use and cached on disk
(``cache=True``) and release the GIL (``nogil=True``): callers may bin from several threads, and an
input of 500 000 events or more is split by frames over up to four threads of its own (``threads=`` sets
the number; results never depend on it). No OpenMP/TBB pool is used, so binning stays safe in forked DataLoader workers.
"""

from .binning import frames_from_spec, split_clips, to_frames
from .spec import FrameSpec

__all__ = ["FrameSpec", "to_frames", "frames_from_spec", "split_clips"]
