"""Fused CPU kernels for drawing binary states (numba).

``sample_sign_cpu(v, seed)`` draws z = +1 with probability P = 1/2 (1 + erf(v)), else -1, for every
element of a float32 array in one pass (split over a few threads), instead of four tensor passes (uniform noise, erf,
compare, select) with PyTorch's serial CPU generator.

Randomness: counter-based SplitMix64 (Steele, Lea & Flood 2014). Element i of block b (``BLOCK``
elements a block) uses the stream seeded by mixing (seed, b), so the draws depend only on ``seed``
and the element's position, never on the number of threads. Each draw is a 53-bit uniform
u in [0, 1), and z = +1 iff u < P.

Exactness without an erf per element: P is monotone in v, so with a table of P at grid points
v_k = -V + k h, P(v_k) <= P(v) <= P(v_{k+1}) for v in [v_k, v_{k+1}]. When u lies outside that
bracket the table decides the comparison exactly; only inside it (probability <= h max P' ~ 0.2 %)
is P(v) computed with ``math.erf``. The result equals the comparison u < 1/2 (1 + erf(v)) in double
precision for every element.
"""
from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

BLOCK = 1 << 14
_V_MAX = 6.0                   # P(+-6) differs from 0 / 1 by < 1e-17: the table covers all that matters
_STEPS_PER_UNIT = 256
_GRID = np.arange(-_V_MAX * _STEPS_PER_UNIT, _V_MAX * _STEPS_PER_UNIT + 1) / _STEPS_PER_UNIT
# P at the grid points, between the sentinels P(-inf) = 0 and P(+inf) = 1: the bracket of any v,
# including v outside the grid, is [table[k], table[k + 1]] with k = clamp(floor(pos) + 1, 0, size - 2)
# and pos = (v + V) * steps.
_P_TABLE = np.array([0.0] + [0.5 * (1.0 + math.erf(v)) for v in _GRID] + [1.0])

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


@numba.njit(inline="always")
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always")
def _uniform(state):
    """53-bit uniform in [0, 1) from the SplitMix64 state."""
    return np.int64(_mix64(state) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(nogil=True, cache=True)
def _sample_block(v, out, origin, table, v_max, steps):
    """Fill ``out`` with states for ``v``, drawing u_i from the stream ``origin + (i + 1) * GAMMA``.

    ``out`` may be ``v`` itself: each v_i is read before out_i is written, and the logits of the
    draws left undecided by the table are kept aside for the second loop.
    """
    top = table.size - 2
    pending_i = np.empty(v.size, np.int32)          # 64 KiB each: heap memory, reused, no page faults
    pending_v = np.empty(v.size, np.float32)
    n_pending = 0
    # Hot loop, branch-free: +1 if u < P(v_k), -1 if u >= P(v_k+1), else keep (i, v_i) for later.
    # (It holds no erf, so the compiler cannot evaluate erf for every element.)
    for i in range(v.size):
        u = _uniform(origin + np.uint64(i + 1) * _GAMMA)
        x = np.float64(v[i])
        pos = (x + v_max) * steps + 1.0
        k = np.int64(min(pos, top)) if pos > 0.0 else 0   # NaN -> 0: bracket [0, P(-V)], never fires
        fire, quiet = u < table[k], u >= table[k + 1]
        out[i] = np.float32(fire) - np.float32(quiet)
        pending_i[n_pending], pending_v[n_pending] = i, x    # x: read before out[i] was written
        n_pending += 1 - (fire | quiet)
    # Rare loop: redraw the same u from the counter and compare with P(v) itself.
    for j in range(n_pending):
        i = pending_i[j]
        u = _uniform(origin + np.uint64(i + 1) * _GAMMA)
        out[i] = 1.0 if u < 0.5 * (1.0 + math.erf(np.float64(pending_v[j]))) else -1.0


@numba.njit(nogil=True, cache=True)
def _sample_blocks(v, out, seed, table, v_max, steps, first, last):
    """Blocks ``first .. last - 1`` of the flat arrays, each from its own stream."""
    for b in range(first, last):
        origin = _mix64(np.uint64(seed) ^ _mix64(np.uint64(b) * _GAMMA + _GAMMA))
        _sample_block(v[b * BLOCK:(b + 1) * BLOCK], out[b * BLOCK:(b + 1) * BLOCK], origin, table, v_max, steps)


@numba.njit(nogil=True, cache=True)
def _sign_blocks(v, out, first, last):
    for i in range(first * BLOCK, min(v.size, last * BLOCK)):
        out[i] = 1.0 if v[i] >= 0.0 else -1.0


# Work is split over a few plain threads running the nogil kernels: unlike numba's OpenMP pool, idle
# threads sleep (they do not spin against torch's own OpenMP threads) and the pool is safe across
# fork (DataLoader workers get a fresh one).
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_lock = threading.Lock()


def _reset_pool() -> None:
    global _pool, _pool_size, _pool_lock
    _pool, _pool_size, _pool_lock = None, 0, threading.Lock()


os.register_at_fork(after_in_child=_reset_pool)


def _run_split(fn, n_units: int, threads: int, *args) -> None:
    """Call fn(*args, first, last) over ``n_units`` units cut into up to ``threads`` contiguous ranges."""
    global _pool, _pool_size
    parts = max(1, min(threads, n_units // 2))
    if parts == 1:
        fn(*args, 0, n_units)
        return
    with _pool_lock:
        if _pool is None or _pool_size < parts:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="nsm-kernel"), parts
        pool = _pool
    edges = [n_units * k // parts for k in range(parts + 1)]
    futures = [pool.submit(fn, *args, edges[k], edges[k + 1]) for k in range(1, parts)]
    fn(*args, edges[0], edges[1])
    for f in futures:
        f.result()


def sample_sign_cpu(v: np.ndarray, seed: int, out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """z = +1 with probability 1/2 (1 + erf(v)) else -1, elementwise; float32 in and out, any shape.

    The states depend on ``seed`` and the element positions only, not on ``threads``.
    """
    flat = np.ascontiguousarray(v, dtype=np.float32).reshape(-1)
    res = np.empty_like(flat) if out is None else out.reshape(-1)
    n_blocks = (flat.size + BLOCK - 1) // BLOCK
    _run_split(_sample_blocks, n_blocks, threads, flat, res, np.uint64(seed & 0xFFFFFFFFFFFFFFFF), _P_TABLE,
               _V_MAX, float(_STEPS_PER_UNIT))
    return res.reshape(np.shape(v))


def sign_cpu(v: np.ndarray, out: np.ndarray | None = None, threads: int = 1) -> np.ndarray:
    """z = sgn(v) with sgn(0) = +1, elementwise; float32 in and out."""
    flat = np.ascontiguousarray(v, dtype=np.float32).reshape(-1)
    res = np.empty_like(flat) if out is None else out.reshape(-1)
    _run_split(_sign_blocks, (flat.size + BLOCK - 1) // BLOCK, threads, flat, res)
    return res.reshape(np.shape(v))
