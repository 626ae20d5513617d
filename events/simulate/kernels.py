"""The numba kernels of the event-camera model: per-pixel counter-based noise and the pixel update between
two rendered frames (``camera.EventCameraModel``)."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

import events.jit  # noqa: F401  (numba's target set before any kernel compiles)

_SM_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_SM_M1 = np.uint64(0xBF58476D1CE4E5B9)
_SM_M2 = np.uint64(0x94D049BB133111EB)
_U30 = np.uint64(30)
_U27 = np.uint64(27)
_U31 = np.uint64(31)
_U11 = np.uint64(11)
_INV_2_53 = 1.0 / 9007199254740992.0


@njit(cache=True, nogil=True)
def _uniform(state, i):
    """splitmix64 step of the generator ``state[i]``: a float in the open interval (0, 1)."""
    s = state[i] + _SM_GAMMA
    state[i] = s
    z = (s ^ (s >> _U30)) * _SM_M1
    z = (z ^ (z >> _U27)) * _SM_M2
    z = z ^ (z >> _U31)
    return ((z >> _U11) + 0.5) * _INV_2_53


@njit(cache=True, nogil=True)
def init_noise_clocks(next_noise, rng, t0, max_rate):
    """First noise candidate of every pixel after ``t0`` (µs); ``inf`` when there is no noise."""
    for i in range(next_noise.shape[0]):
        if max_rate > 0.0:
            next_noise[i] = t0 - math.log(_uniform(rng, i)) / max_rate
        else:
            next_noise[i] = np.inf


@njit(cache=True, nogil=True)
def _pixel_interval(
    i,
    xx,
    yy,
    t0,
    t1,
    tstart,
    l0,
    l1,
    c_on,
    c_off,
    ref,
    t_free,
    next_noise,
    rng,
    refractory,
    bg_rate,
    shot_rate,
    eps,
    buf,
    n,
):
    """Events of pixel ``i`` from ``tstart`` while its log intensity moves linearly from ``l0``
    at ``t0`` to ``l1`` at ``t1``; written to rows ``n, n+1, ...`` of ``buf`` (x, y, t, p).

    Returns ``(n, t)``: the rows used so far and ``t = inf`` when the interval is done, or the
    time to resume from (call again with ``tstart = t``) when ``buf`` ran full first; the pixel's
    state is consistent at that point. Splitting a constant stretch into several calls gives
    exactly the events of one call (each pixel draws from its own generator), which is what
    lets static pixels be caught up lazily.
    """
    max_rate = bg_rate + shot_rate
    slope = (l1 - l0) / (t1 - t0) if t1 > t0 else 0.0
    tcur = tstart
    while True:
        if n == buf.shape[0]:
            return n, tcur
        if t_free[i] > tcur:  # held in reset: ref follows the input, noise candidates are lost
            if t_free[i] >= t1:
                ref[i] = l1
                while next_noise[i] < t1:
                    next_noise[i] -= math.log(_uniform(rng, i)) / max_rate
                return n, np.inf
            tcur = t_free[i]
            ref[i] = l0 + slope * (tcur - t0)
            while next_noise[i] < tcur:
                next_noise[i] -= math.log(_uniform(rng, i)) / max_rate
        # next threshold crossing after tcur (|L(tcur) - ref| < C holds here)
        ts = np.inf
        pol = 0
        if l1 - ref[i] >= c_on[i]:
            pol = 1
            ts = t0 + (ref[i] + c_on[i] - l0) / slope if slope != 0.0 else tcur
        elif ref[i] - l1 >= c_off[i]:
            ts = t0 + (ref[i] - c_off[i] - l0) / slope if slope != 0.0 else tcur
        if ts < np.inf:  # keep rounding from leaving [tcur, t1]
            ts = min(max(ts, tcur), t1)
        tn = next_noise[i]
        if tn < t1 and tn < ts:
            next_noise[i] = tn - math.log(_uniform(rng, i)) / max_rate
            lt = l0 + slope * (tn - t0)
            tcur = tn
            dark = 1.0 - min(1.0, max(0.0, math.exp(lt) - eps))
            u = _uniform(rng, i) * max_rate
            if u < bg_rate:
                pol = 1
            elif u < bg_rate + shot_rate * dark:
                pol = 1 if _uniform(rng, i) < 0.5 else 0
            else:
                continue  # thinned candidate: no event
            ref[i] = lt
            tev = tn
        elif ts < np.inf:
            ref[i] = ref[i] + c_on[i] if pol == 1 else ref[i] - c_off[i]
            tev = ts
            tcur = ts
        else:
            return n, np.inf
        buf[n, 0] = xx
        buf[n, 1] = yy
        buf[n, 2] = math.floor(tev)
        buf[n, 3] = pol
        n += 1
        t_free[i] = tev + refractory


@njit(cache=True, nogil=True)
def _grow(buf, n):
    grown = np.empty((2 * buf.shape[0], 4), np.int64)
    grown[:n] = buf[:n]
    return grown


@njit(cache=True, nogil=True)
def camera_kernel(
    frames,
    times,
    clock,
    prev_lin,
    prev_log,
    t_done,
    c_on,
    c_off,
    ref,
    t_free,
    next_noise,
    rng,
    refractory,
    bg_rate,
    shot_rate,
    eps,
    capacity,
):
    """Events of ``frames`` (N, H, W) at ``times`` (N,) µs, after the frame held in the state.

    State (flat per-pixel arrays, updated in place): previous linear value and log intensity,
    ``t_done`` (time up to which the pixel has been simulated), reference, end of reset, next
    noise candidate, generator; ``clock[0]`` is the time of the previous frame. Per step only the
    changed pixels (within each row's span of changes) are simulated; a constant pixel is caught
    up (noise, the end of a reset) when it next changes and at the end. Returns (rows x, y, t, p;
    unsorted) and -1, or the index of the first frame holding a non-finite value (the state is
    then unusable).
    """
    n_frames = frames.shape[0]
    height = frames.shape[1]
    width = frames.shape[2]
    buf = np.empty((max(capacity, 1), 4), np.int64)
    n = 0
    lo = np.empty(height, np.int64)  # per row: first and last column to simulate this step
    hi = np.empty(height, np.int64)
    for k in range(n_frames + 1):
        last = k == n_frames
        t0 = clock[0]
        if last:  # the end: catch every pixel up to the last frame
            lo[:] = 0
            hi[:] = width - 1
        else:  # this step: the changed pixels of each row
            t1 = times[k]
            for yy in range(height):
                base = yy * width
                not_finite = 0  # v - v is 0 for finite v, NaN otherwise (branch-free)
                changed = 0
                for xx in range(width):
                    v = frames[k, yy, xx]
                    not_finite += (v - v) != 0.0
                    changed += v != prev_lin[base + xx]
                if not_finite:
                    return buf[:n], k
                lo[yy] = 0
                hi[yy] = -1
                if changed:
                    while frames[k, yy, lo[yy]] == prev_lin[base + lo[yy]]:
                        lo[yy] += 1
                    hi[yy] = width - 1
                    while frames[k, yy, hi[yy]] == prev_lin[base + hi[yy]]:
                        hi[yy] -= 1
        for yy in range(height):
            for xx in range(lo[yy], hi[yy] + 1):
                i = yy * width + xx
                if not last and frames[k, yy, xx] == prev_lin[i]:
                    continue  # constant in this step: left to the lazy catch-up
                td = t_done[i]
                # catch up a constant stretch: only noise candidates and a reset ending matter
                if td < t0 and (next_noise[i] < t0 or t_free[i] > td):
                    tc = td
                    while tc < np.inf:
                        n, tc = _pixel_interval(
                            i,
                            xx,
                            yy,
                            td,
                            t0,
                            tc,
                            prev_log[i],
                            prev_log[i],
                            c_on,
                            c_off,
                            ref,
                            t_free,
                            next_noise,
                            rng,
                            refractory,
                            bg_rate,
                            shot_rate,
                            eps,
                            buf,
                            n,
                        )
                        if tc < np.inf:
                            buf = _grow(buf, n)
                t_done[i] = t0
                if last:
                    continue
                v = frames[k, yy, xx]
                l0 = prev_log[i]
                l1 = math.log(max(v, 0.0) + eps)
                # call out only when something happens: a crossing, a noise candidate, a reset
                if l1 - ref[i] >= c_on[i] or ref[i] - l1 >= c_off[i] or next_noise[i] < t1 or t_free[i] > t0:
                    tc = t0
                    while tc < np.inf:
                        n, tc = _pixel_interval(
                            i,
                            xx,
                            yy,
                            t0,
                            t1,
                            tc,
                            l0,
                            l1,
                            c_on,
                            c_off,
                            ref,
                            t_free,
                            next_noise,
                            rng,
                            refractory,
                            bg_rate,
                            shot_rate,
                            eps,
                            buf,
                            n,
                        )
                        if tc < np.inf:
                            buf = _grow(buf, n)
                prev_lin[i] = v
                prev_log[i] = l1
                t_done[i] = t1
        if not last:
            clock[0] = t1
    return buf[:n], -1
