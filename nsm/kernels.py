"""Fused CPU kernels for drawing binary states (numba).

``sample_sign_cpu(v, seed)`` draws z = +1 with probability P = 1/2 (1 + erf(v)), else -1, for every
element of a float32 array in one pass (split over a few threads), instead of four tensor passes (uniform noise, erf,
compare, select) with PyTorch's serial CPU generator.

Randomness: counter-based SplitMix64 (Steele, Lea & Flood 2014). Element i of block b (``BLOCK``
elements a block) uses the stream seeded by mixing (seed, b), so the draws depend only on ``seed``
and the element's position, never on the number of threads. Each draw is a 53-bit uniform
u in [0, 1), and z = +1 iff u < P.

Exactness without an erf per element: with a = |v| and the tail mass Q = 1/2 erfc(a) (so P = 1 - Q
for v >= 0 and P = Q for v < 0), Abramowitz & Stegun 7.1.28 gives

    Q ~ Q~ = 1/2 t^-16,    t = 1 + a1 a + a2 a^2 + ... + a6 a^6,    |erf error| <= 3e-7, so |Q~ - Q| <= 1.5e-7.

Let w = 1 - u for v >= 0 and w = u for v < 0 (the mass on Q's side): u < P iff w > Q. Where w lies
more than ``MARGIN`` (1e-6, beyond the bound and float64 rounding) from Q~, comparing with Q~ decides
exactly; only inside that band (probability <= 2 MARGIN) is P computed with ``math.erf``. The hot loop
is polynomial arithmetic and compiles to SIMD code (no table gathers, no division, no branches); the
result equals the comparison u < 1/2 (1 + erf(v)) in double precision for every element.

bfloat16 (autocast's lower precision on CPUs): numpy has no bfloat16, so logits and states travel as ``uint16``
arrays of their bit patterns, a bfloat16 being the upper half of the float32 with the same sign, exponent and
leading 7 mantissa bits. The kernels widen a block of logits into a float32 buffer (a shift, exact) and write the
states as the patterns of +1 (0x3F80) and -1 (0xBF80). A bfloat16 logit is itself rounded (relative error up to
2^-9, which moves P by up to about 2e-3), so its sampler trades the float32 one's exactness for twice the speed:
all in 32-bit lanes, element i of block b draws the 24-bit uniform u = (h >> 8) 2^-24 of the hash
h = lowbias32(i 0x9E3779B9 + key_b) (Wellons' 32-bit integer hash, 2018; key_b the low 32 bits of the float32
sampler's stream origin of block b) and compares w t^16 with 1/2 in float32 (A&S 7.1.28 as above). Its decision
equals u < P except where |u - P| <= ``BF16_BAND`` (1e-6: the approximation's 1.5e-7 plus float32 rounding of
t^16): each state fires with probability within 1e-6 of P.

Spikes (``nsm.spikes``): from bfloat16 logits the kernels can write each state as its spike (z + 1) / 2 (1 for
+1, 0 for -1, ``uint8``) instead of its pattern, with the same draws: ``spikes=True``.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

import events.jit  # noqa: F401  (numba's target set before any kernel compiles)
from events.errors import InputError

from .spikes import SPIKE_OFF, SPIKE_ON

BLOCK = 1 << 14
MARGIN = 1e-6
# Abramowitz & Stegun (1964), 7.1.28: erf(a) ~ 1 - (1 + a1 a + ... + a6 a^6)^-16 for a >= 0.
_A1, _A2, _A3, _A4, _A5, _A6 = 0.0705230784, 0.0422820123, 0.0092705272, 0.0001520143, 0.0002765672, 0.0000430638
_A_MAX = 6.0  # Q(6) < 1e-17: clamping |v| there changes no comparison with a 53-bit u

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

# error_model="numpy": float division and the like compile without Python's error checks (branches
# that would keep the loops from being vectorized). fastmath "contract" only: a product and a sum may fuse into one
# FMA instruction (one rounding instead of two, so the rounding bounds of the margins above still hold); 512-bit
# vectors where the CPU has AVX-512 (``events.jit``). Together about 1.6 times the states per second.
_JIT = dict(nogil=True, cache=True, error_model="numpy", fastmath={"contract"})


@numba.njit(inline="always")
def _mix64(z):
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


@numba.njit(inline="always")
def _uniform(origin, i):
    """53-bit uniform in [0, 1) of element i: SplitMix64 at state origin + (i + 1) GAMMA."""
    return np.int64(_mix64(origin + np.uint64(i + 1) * _GAMMA) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@numba.njit(inline="always", error_model="numpy")
def tail_factor(a):
    """t^16 of A&S 7.1.28 for a = |v| (clamped to 6): the tail mass 1/2 erfc(a) is about 0.5 / t^16."""
    a = min(a, _A_MAX)
    t = 1.0 + a * (_A1 + a * (_A2 + a * (_A3 + a * (_A4 + a * (_A5 + a * _A6)))))
    t2 = t * t
    t4 = t2 * t2
    t8 = t4 * t4
    return t8 * t8


@numba.njit(**_JIT)
def _sample_block(v, out, origin, decided):
    """Fill ``out`` with states for ``v``, element i drawing ``_uniform(origin, i)``; ``out`` may be ``v``.

    First loop (SIMD): +1 / -1 where the approximation decides, 0 where it does not, into ``decided``.
    Then ``out`` takes those states, and the undecided ones (rare) are compared with erf itself: each
    v_i is read before out_i is written, so ``out`` may be ``v``.
    """
    n = v.size
    n_undecided = 0
    for i in range(n):
        x = np.float64(v[i])
        u = _uniform(origin, i)
        t16 = tail_factor(abs(x))
        w = 1.0 - u if x >= 0.0 else u  # exact: u is a multiple of 2^-53
        below = (w + MARGIN) * t16 < 0.5  # w < Q - MARGIN  (Q ~ 0.5 / t16)
        above = (w - MARGIN) * t16 > 0.5  # w > Q + MARGIN
        fire = above if x >= 0.0 else below  # u < P  iff  w > Q (v >= 0)  or  w < Q (v < 0)
        quiet = below if x >= 0.0 else above
        decided[i] = np.float32(fire) - np.float32(quiet)
        n_undecided += 1 - (fire | quiet)
    if n_undecided == 0:
        out[:] = decided[:n]
        return
    for i in range(n):
        if decided[i] != 0.0:
            out[i] = decided[i]
        else:  # also NaN: u < NaN is False, so -1
            out[i] = 1.0 if _uniform(origin, i) < 0.5 * (1.0 + math.erf(np.float64(v[i]))) else -1.0


@numba.njit(**_JIT)
def _sample_blocks(v, out, seed, first, last):
    """Blocks ``first .. last - 1`` of the flat arrays, each from its own stream."""
    decided = np.empty(BLOCK, np.float32)
    for b in range(first, last):
        origin = _mix64(np.uint64(seed) ^ _mix64(np.uint64(b) * _GAMMA + _GAMMA))
        _sample_block(v[b * BLOCK : (b + 1) * BLOCK], out[b * BLOCK : (b + 1) * BLOCK], origin, decided)


@numba.njit(**_JIT)
def _sign_blocks(v, out, first, last):
    for i in range(first * BLOCK, min(v.size, last * BLOCK)):
        out[i] = 1.0 if v[i] >= 0.0 else -1.0


BF16_PLUS, BF16_MINUS = np.uint16(0x3F80), np.uint16(0xBF80)  # +1.0 and -1.0 as bfloat16 bit patterns
BF16_BAND = 1e-6  # the bfloat16 sampler decides as u < P wherever |u - P| exceeds this
_F1, _F2, _F3, _F4, _F5, _F6 = (np.float32(a) for a in (_A1, _A2, _A3, _A4, _A5, _A6))
_GOLDEN32 = np.uint32(0x9E3779B9)


@numba.njit(**_JIT)
def _widen_bf16(bits, wide):
    """The float32 values of bfloat16 bit patterns ``bits`` into ``wide`` (same size): each pattern shifted into
    the upper half of a float32 (exact)."""
    as_int = wide.view(np.uint32)
    for i in range(bits.size):
        as_int[i] = np.uint32(bits[i]) << np.uint32(16)


@numba.njit(inline="always")
def _lowbias32(h):
    """Wellons' lowbias32 integer hash (xorshift-multiply, 32-bit)."""
    h = np.uint32(h ^ (h >> np.uint32(16)))
    h = np.uint32(h * np.uint32(0x7FEB352D))
    h = np.uint32(h ^ (h >> np.uint32(15)))
    h = np.uint32(h * np.uint32(0x846CA68B))
    return np.uint32(h ^ (h >> np.uint32(16)))


@numba.njit(**_JIT)
def _sample_block_bf16(v, out, key, plus, minus):
    """States of float32 logits ``v`` (widened bfloat16) into ``out``, ``plus`` for +1 and ``minus`` for -1 (bfloat16
    patterns or spikes), element i drawing u = (lowbias32(i 0x9E3779B9 + key) >> 8) 2^-24; branch-free, so the
    loop runs in 16 float32 lanes. NaN: -1."""
    for i in range(v.size):
        u = np.float32(_lowbias32(np.uint32(np.uint32(i) * _GOLDEN32 + key)) >> np.uint32(8)) * np.float32(2.0**-24)
        x = v[i]
        a = min(abs(x), np.float32(_A_MAX))
        t = np.float32(1.0) + a * (_F1 + a * (_F2 + a * (_F3 + a * (_F4 + a * (_F5 + a * _F6)))))
        t2 = t * t
        t4 = t2 * t2
        t8 = t4 * t4
        positive = x >= np.float32(0.0)
        w = np.float32(1.0) - u if positive else u  # exact: u is a multiple of 2^-24
        above = w * (t8 * t8) > np.float32(0.5)  # w > Q ~ 0.5 / t^16
        fire = (above == positive) & (x == x)  # u < P iff w > Q (v >= 0) or w < Q (v < 0)
        out[i] = plus if fire else minus


@numba.njit(**_JIT)
def _sample_blocks_bf16(v, out, seed, plus, minus, first, last):
    """Blocks ``first .. last - 1`` of flat bfloat16 patterns, each widened into a buffer and sampled from its own
    key (the low half of the float32 sampler's block origin) into ``out`` as ``plus`` / ``minus``."""
    wide = np.empty(BLOCK, np.float32)
    for b in range(first, last):
        lo, hi = b * BLOCK, min(v.size, (b + 1) * BLOCK)
        origin = _mix64(np.uint64(seed) ^ _mix64(np.uint64(b) * _GAMMA + _GAMMA))
        _widen_bf16(v[lo:hi], wide[: hi - lo])
        _sample_block_bf16(wide[: hi - lo], out[lo:hi], np.uint32(origin & np.uint64(0xFFFFFFFF)), plus, minus)


@numba.njit(**_JIT)
def _sign_blocks_bf16(v, out, plus, minus, first, last):
    wide = np.empty(BLOCK, np.float32)
    for b in range(first, last):
        lo, hi = b * BLOCK, min(v.size, (b + 1) * BLOCK)
        _widen_bf16(v[lo:hi], wide[: hi - lo])
        for i in range(hi - lo):
            out[lo + i] = plus if wide[i] >= 0.0 else minus


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


def _flat_in_out(v: np.ndarray, out: np.ndarray | None, spikes: bool) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(flat input, flat output, the extra arguments of the bfloat16 kernels or () for float32): ``uint16`` arrays are
    bfloat16 patterns, anything else is read as float32; the output is like the input, or ``uint8`` spikes when
    ``spikes`` (bfloat16 input only)."""
    bf16 = np.asarray(v).dtype == np.uint16
    if spikes and not bf16:
        raise InputError("spikes are written from bfloat16 logits (uint16 patterns)")
    flat = np.ascontiguousarray(v, dtype=np.uint16 if bf16 else np.float32).reshape(-1)
    dtype = np.uint8 if spikes else flat.dtype
    res = np.empty(flat.size, dtype) if out is None else out.reshape(-1)
    if res.dtype != dtype:
        raise InputError(f"out must be {np.dtype(dtype)}, got {res.dtype}")
    values = (SPIKE_ON, SPIKE_OFF) if spikes else (BF16_PLUS, BF16_MINUS) if bf16 else ()
    return flat, res, values


def sample_sign_cpu(
    v: np.ndarray, seed: int, out: np.ndarray | None = None, threads: int = 1, spikes: bool = False
) -> np.ndarray:
    """z = +1 with probability 1/2 (1 + erf(v)) else -1, elementwise, any shape; float32 in and out, or bfloat16
    bit patterns (``uint16``) in and out, or in and spikes out (``spikes``: 1 for +1, 0 for -1, ``uint8``).

    The states depend on ``seed`` and the element positions only, not on ``threads`` or ``spikes``. float32: exactly
    u < P for a 53-bit u; bfloat16: the 32-bit sampler (the module docstring), within ``BF16_BAND`` of that.
    """
    flat, res, values = _flat_in_out(v, out, spikes)
    n_blocks = (flat.size + BLOCK - 1) // BLOCK
    kernel = _sample_blocks_bf16 if values else _sample_blocks
    seed = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    _run_split(kernel, n_blocks, threads, flat, res, seed, *values)
    return res.reshape(np.shape(v))


def sign_cpu(v: np.ndarray, out: np.ndarray | None = None, threads: int = 1, spikes: bool = False) -> np.ndarray:
    """z = sgn(v) with sgn(0) = +1 (NaN: -1), elementwise; float32 in and out, or bfloat16 patterns (``uint16``) in and
    out, or in and spikes out (``spikes``)."""
    flat, res, values = _flat_in_out(v, out, spikes)
    blocks = (flat.size + BLOCK - 1) // BLOCK
    _run_split(_sign_blocks_bf16 if values else _sign_blocks, blocks, threads, flat, res, *values)
    return res.reshape(np.shape(v))
