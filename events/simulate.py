"""Event-camera simulator and the synthetic data sets built with it.

The camera model (:class:`EventCameraModel`)
-------------------------------------------
Each pixel of a DVS compares the log of the light falling on it with a remembered reference level:

    L(t) = log(I(t) + eps)                        (I linear intensity, nominally 0..1)
    ON  event when L(t) - ref >= C_on[pixel],   then ref <- ref + C_on    (= L at that instant)
    OFF event when ref - L(t) >= C_off[pixel],  then ref <- ref - C_off

Intensity frames are given at render times t_k; between two frames L moves linearly, so a change of
several thresholds within one step gives several events at interpolated times (integer
microseconds, rounded down). The parts of the model:

- Threshold mismatch: ``C_on`` and ``C_off`` are drawn once per pixel from
  N(contrast_threshold, threshold_mismatch**2), floored at ``min_threshold``
  (``on_thresholds`` / ``off_thresholds``, arrays of shape (height, width)).
- Refractory period: after any event a pixel is held in reset for ``refractory_us``: it fires
  nothing, and its reference follows the input, so at the end of the period ref = L(t). Two events
  of one pixel are therefore always at least ``refractory_us`` apart (also after rounding).
- Background activity: Poisson events at ``background_rate_hz`` per pixel, ON polarity (the
  junction-leak events of real sensors), whatever the scene does.
- Shot noise: Poisson events of random polarity at ``shot_noise_rate_hz * (1 - I)`` per pixel
  (I clipped to 0..1): the darker the pixel, the noisier, as photon shot noise makes real DVS
  pixels behave.
- A noise event is a real event for the pixel: it resets ref to L(t) and starts the refractory
  period. Noise candidates that fall in a refractory period are lost.

The very first frame a model sees only sets the references (ref = L); events come from the
intervals between frames. All randomness comes from ``seed`` (noise optionally from a separate
``noise_seed``): thresholds from a NumPy generator, noise from one counter-based generator
(splitmix64) per pixel inside the numba kernel. The output is bit-identical for given seeds, and
the global NumPy / numba random state is never touched. Because each pixel draws from its own
generator, the kernel simulates, per step, only the pixels whose intensity changed and catches
static pixels up lazily (their noise) with exactly the same result as stepping every pixel.

The data sets
-------------
- :func:`simulate_digits`: scikit-learn's bundled handwritten digits (real handwriting, 8 x 8),
  upsampled smoothly to ~28 x 28 in a 34 x 34 view and moved along N-MNIST's three ~100 ms
  saccades; written as N-MNIST ``.bin`` files in the N-MNIST layout.
- :func:`simulate_gestures`: eleven arm-motion classes mirroring IBM DVS Gesture at 128 x 128,
  with per-user style and per-recording lighting, written in the original release's layout
  (AEDAT 3.1 recordings, label CSVs, train/test trial lists).

Both are deterministic given ``seed`` (identical bytes), write every file atomically (temporary
file, then rename) and leave ``README.txt`` and ``simulation.json`` (the parameters used) in the
output folder.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from numba import njit
from tqdm.auto import tqdm

from events.types import EVENT_DTYPE, SensorSize, empty_events

# --------------------------------------------------------------------------------------------
# numba kernels
# --------------------------------------------------------------------------------------------

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
def _init_noise_clocks(next_noise, rng, t0, max_rate):
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
def _camera_kernel(
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


# --------------------------------------------------------------------------------------------
# the camera model
# --------------------------------------------------------------------------------------------


def _jsonable(value):
    """``value`` when JSON can hold it (ints, lists of ints, None), else its ``repr``."""
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


def _pixel_generators(gen: np.random.Generator, n: int) -> np.ndarray:
    """Initial states of ``n`` per-pixel splitmix64 generators."""
    return gen.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True)


class EventCameraModel:
    """A DVS pixel array turning intensity frames into events (see the module docstring).

    Parameters: sensor ``width`` x ``height``; ``contrast_threshold`` (log units) with per-pixel
    spread ``threshold_mismatch`` (standard deviation, log units; thresholds never go below
    ``min_threshold``); ``refractory_us`` (integer µs, 0 for none); ``background_rate_hz`` and
    ``shot_noise_rate_hz`` (per pixel; shot noise at full rate in black pixels, none in white);
    ``eps`` added to the intensity before the log; ``seed``.

    Use :meth:`simulate` for one clip (frames or a scene callable), or :meth:`feed` repeatedly for
    a stream: the model keeps each pixel's reference, refractory clock and noise clock between
    calls, so feeding frames in any number of chunks gives the same events as one call (only
    events with equal timestamps at a chunk boundary may come in another order).
    """

    def __init__(
        self,
        width: int,
        height: int,
        *,
        contrast_threshold: float = 0.2,
        threshold_mismatch: float = 0.03,
        refractory_us: int = 500,
        background_rate_hz: float = 0.1,
        shot_noise_rate_hz: float = 0.2,
        eps: float = 1e-2,
        min_threshold: float = 0.01,
        seed: int = 0,
    ):
        for name, v in (("width", width), ("height", height)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 < v <= 32767:
                raise ValueError(f"{name} must be an integer in 1..32767, got {v!r}")
        if isinstance(refractory_us, bool) or not isinstance(refractory_us, (int, np.integer)) or refractory_us < 0:
            raise ValueError(f"refractory_us must be a non-negative integer, got {refractory_us!r}")
        checks = (
            ("contrast_threshold", contrast_threshold, False),
            ("min_threshold", min_threshold, False),
            ("eps", eps, False),
            ("threshold_mismatch", threshold_mismatch, True),
            ("background_rate_hz", background_rate_hz, True),
            ("shot_noise_rate_hz", shot_noise_rate_hz, True),
        )
        for name, v, zero_ok in checks:
            if not (np.isfinite(v) and (v >= 0 if zero_ok else v > 0)):
                raise ValueError(f"{name} must be {'>= 0' if zero_ok else '> 0'} and finite, got {v!r}")
        self.width, self.height = int(width), int(height)
        self.sensor_size = SensorSize(self.width, self.height, 2)
        self.contrast_threshold = float(contrast_threshold)
        self.threshold_mismatch = float(threshold_mismatch)
        self.refractory_us = int(refractory_us)
        self.background_rate_hz = float(background_rate_hz)
        self.shot_noise_rate_hz = float(shot_noise_rate_hz)
        self.eps = float(eps)
        self.min_threshold = float(min_threshold)
        self.seed = seed
        gen = np.random.default_rng(seed)
        shape = (self.height, self.width)
        self.on_thresholds = np.maximum(self.min_threshold, gen.normal(contrast_threshold, threshold_mismatch, shape))
        self.off_thresholds = np.maximum(self.min_threshold, gen.normal(contrast_threshold, threshold_mismatch, shape))
        self._rng_seed = _pixel_generators(gen, self.width * self.height)
        self.reset()

    def params(self) -> dict:
        """The model's parameters (JSON-serialisable)."""
        return {
            "width": self.width,
            "height": self.height,
            "contrast_threshold": self.contrast_threshold,
            "threshold_mismatch": self.threshold_mismatch,
            "refractory_us": self.refractory_us,
            "background_rate_hz": self.background_rate_hz,
            "shot_noise_rate_hz": self.shot_noise_rate_hz,
            "eps": self.eps,
            "min_threshold": self.min_threshold,
            "seed": _jsonable(self.seed),
        }

    def reset(self, noise_seed=None) -> None:
        """Forget the stream: the next frame fed only sets the references. Noise restarts from
        the model's seed (so a reset model repeats its output exactly), or from ``noise_seed``
        when given: the same sensor (same thresholds) with other noise, as in a new recording."""
        n = self.width * self.height
        if noise_seed is None:
            self._rng = self._rng_seed.copy()
        else:
            self._rng = _pixel_generators(np.random.default_rng(noise_seed), n)
        self._ref = np.zeros(n)
        self._t_free = np.full(n, -np.inf)
        self._next_noise = np.full(n, np.inf)
        self._prev_lin = np.zeros(n)
        self._prev_log = np.zeros(n)
        self._t_done = np.zeros(n)
        self._clock = np.zeros(1)
        self._started = False

    def feed(self, frames: np.ndarray, times_us) -> np.ndarray:
        """Events caused by ``frames`` (N, height, width) of linear intensity at ``times_us`` (N,).

        Intensities are linear (nominally 0..1; negative values count as 0); float32 frames are
        used as they are, other types are converted to float64. Times are strictly increasing
        and later than the last frame fed before. Returns an ``EVENT_DTYPE`` array of the events
        up to the last frame's time, sorted by ``t`` and, at equal ``t``, by pixel (row-major).
        A frame with a NaN or infinite value raises ``ValueError`` and resets the model.
        """
        frames = np.asarray(frames)
        if frames.ndim == 2:
            frames = frames[None]
        if frames.dtype not in (np.float32, np.float64):
            frames = frames.astype(np.float64)
        frames = np.ascontiguousarray(frames)
        times = np.atleast_1d(np.asarray(times_us, dtype=np.float64))
        if frames.ndim != 3 or frames.shape[1:] != (self.height, self.width):
            raise ValueError(f"frames must have shape (N, {self.height}, {self.width}), got {frames.shape}")
        if times.shape != (frames.shape[0],):
            raise ValueError(f"times_us must have one entry per frame ({frames.shape[0]}), got {times.shape}")
        if len(times) == 0:
            return empty_events()
        if (
            not np.all(np.isfinite(times))
            or np.any(np.diff(times) <= 0)
            or (self._started and times[0] <= self._clock[0])
        ):
            raise ValueError("frame times must be finite and increase strictly (also across calls)")
        bg, shot = self.background_rate_hz * 1e-6, self.shot_noise_rate_hz * 1e-6
        if not self._started:
            first = frames[0].astype(np.float64).ravel()
            if not np.all(np.isfinite(first)):
                raise ValueError("frame 0 holds NaN or infinite values")
            self._prev_lin[:] = first
            self._prev_log[:] = np.log(np.maximum(first, 0.0) + self.eps)
            self._ref[:] = self._prev_log
            self._t_done[:] = times[0]
            self._clock[0] = times[0]
            _init_noise_clocks(self._next_noise, self._rng, times[0], bg + shot)
            self._started = True
            frames, times = frames[1:], times[1:]
        rows, bad = _camera_kernel(
            frames,
            times,
            self._clock,
            self._prev_lin,
            self._prev_log,
            self._t_done,
            self.on_thresholds.ravel(),
            self.off_thresholds.ravel(),
            self._ref,
            self._t_free,
            self._next_noise,
            self._rng,
            float(self.refractory_us),
            bg,
            shot,
            self.eps,
            4096,
        )
        if bad >= 0:
            self.reset()
            raise ValueError(f"frame {bad} of this call holds NaN or infinite values (the model was reset)")
        order = np.lexsort((rows[:, 1] * self.width + rows[:, 0], rows[:, 2]))
        out = np.empty(len(rows), dtype=EVENT_DTYPE)
        for j, f in enumerate(("x", "y", "t", "p")):
            out[f] = rows[order, j]
        return out

    def simulate(
        self,
        scene: np.ndarray | Callable[[np.ndarray], np.ndarray],
        times_us=None,
        *,
        duration_us: int | None = None,
        step_us: int = 1000,
        start_us: int = 0,
        chunk_frames: int = 128,
        noise_seed=None,
    ) -> np.ndarray:
        """Events of one clip, from a fresh state (the model is reset first).

        ``scene`` is either an array of frames (N, height, width) of linear intensity, at
        ``times_us`` (default: ``start_us + step_us * k``), or a callable rendering a batch:
        ``scene(t_us)`` with a 1-D int64 array of times returns frames (len(t_us), height, width).
        A callable is rendered at ``start_us, start_us + step_us, ...`` up to and including
        ``start_us + duration_us``, ``chunk_frames`` frames at a time (bounded memory).
        ``noise_seed`` is passed to :meth:`reset`. Returns ``EVENT_DTYPE`` events sorted by ``t``.
        """
        self.reset(noise_seed)
        if callable(scene):
            if duration_us is None or duration_us <= 0 or step_us <= 0:
                raise ValueError("a scene callable needs duration_us > 0 and step_us > 0")
            grid = start_us + np.arange(0, int(duration_us) + 1, int(step_us), dtype=np.int64)
            parts = []
            for a in range(0, len(grid), chunk_frames):
                tt = grid[a : a + chunk_frames]
                parts.append(self.feed(scene(tt), tt))
            return np.concatenate(parts)
        frames = np.asarray(scene)
        if times_us is None:
            times_us = start_us + step_us * np.arange(len(frames), dtype=np.int64)
        times_us = np.asarray(times_us)
        parts = [
            self.feed(frames[a : a + chunk_frames], times_us[a : a + chunk_frames])
            for a in range(0, len(frames), chunk_frames)
        ]
        return np.concatenate(parts) if parts else empty_events()


# --------------------------------------------------------------------------------------------
# synthetic data sets
# --------------------------------------------------------------------------------------------

#: The simulated ATIS behind the synthetic N-MNIST (tuned to ~3-5k events a sample, as real ones).
DIGIT_CAMERA = {
    "contrast_threshold": 0.17,
    "threshold_mismatch": 0.03,
    "refractory_us": 1000,
    "background_rate_hz": 0.1,
    "shot_noise_rate_hz": 0.3,
}
DIGIT_STEP_US = 1000
#: The simulated DVS128 behind the synthetic DVS Gesture (noise rates come with the lighting).
GESTURE_CAMERA = {"contrast_threshold": 0.14, "threshold_mismatch": 0.03, "refractory_us": 200}
#: Render step of the gesture scenes: hands move at most ~0.8 px a step.
GESTURE_STEP_US = 2000
GESTURE_REST_S = (0.3, 0.8)
_FORMAT_VERSION = 1


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _write_text(path: Path, text: str) -> None:
    from events.atomic import atomic_write

    with atomic_write(path) as (fh, _):
        fh.write(text.encode("utf-8"))


def _write_meta(out: Path, meta: dict, readme: str) -> None:
    _write_text(out / "README.txt", readme)
    _write_text(out / "simulation.json", json.dumps(meta, indent=2) + "\n")  # last: marks a whole run


def _claim_output(out: Path, generator: str, patterns: Sequence[str]) -> set[Path]:
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
            raise FileExistsError(
                f"{out} already holds data files not written by {generator} "
                f"(e.g. {example}); choose an empty folder or one this generator wrote"
            )
    return found


def _remove_stale(old: set[Path], written: set[Path]) -> None:
    for path in sorted(old - written):
        path.unlink(missing_ok=True)


def simulate_digits(
    out_dir, *, seed: int = 0, per_class: int = 10, test_per_class: int | None = None, progress: bool = True
) -> Path:
    """Write a synthetic N-MNIST to ``out_dir`` and return its path.

    Layout (N-MNIST's): ``Train/<digit>/<id>.bin`` and ``Test/<digit>/<id>.bin``, 34 x 34 ATIS
    ``.bin`` files, ``per_class`` training and ``test_per_class`` test samples per digit (default
    ``ceil(per_class / 6)``, N-MNIST's 6:1 split; 0 for none). ``<id>`` is a 5-digit running
    number within the split. Each sample is a distinct scikit-learn handwritten digit (train and
    test images never overlap; when a split needs more images than a class has, they are reused
    with fresh augmentation), seen through three ~100 ms saccades (see :mod:`events.sim_scenes`)
    by one simulated sensor (``DIGIT_CAMERA``, fixed threshold mismatch, fresh noise per sample).
    Deterministic given ``seed`` (identical bytes); every file is written atomically;
    ``README.txt`` and ``simulation.json`` record the parameters. ``out_dir`` must be empty or
    hold an earlier simulated N-MNIST (whose ``.bin`` files are replaced; any left over from a
    larger run are removed), else ``FileExistsError``.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    from events.formats.nmnist import write_nmnist
    from events.sim_scenes import DigitScene

    seed = _check_int("seed", seed, 0)
    per_class = _check_int("per_class", per_class, 1)
    n_test = -(-per_class // 6) if test_per_class is None else _check_int("test_per_class", test_per_class, 0)
    out = Path(out_dir)
    old = _claim_output(out, "events.simulate.simulate_digits", ("Train/*/*.bin", "Test/*/*.bin"))
    digits = load_digits()
    images, targets = digits.images, digits.target
    # per digit: a seeded order of its images; train takes the front, test the back
    pools = {}
    for d in range(10):
        idx = np.flatnonzero(targets == d)
        order = np.random.default_rng([seed, 0, d]).permutation(idx)
        n_train_imgs = max(1, min(len(order) - 1, round(len(order) * per_class / max(1, per_class + n_test))))
        pools["Train", d] = order[:n_train_imgs] if n_test else order
        pools["Test", d] = order[n_train_imgs:]
    camera = EventCameraModel(34, 34, seed=[seed, 1], **DIGIT_CAMERA)
    counts = {"Train": per_class, "Test": n_test}
    total = 10 * (per_class + n_test)
    n_events, written = [], set()
    with tqdm(total=total, desc="simulating digits", unit="sample", disable=not progress) as bar:
        for s_idx, split in enumerate(("Train", "Test")):
            for d in range(10):
                (out / split / str(d)).mkdir(parents=True, exist_ok=True)
            sample_id = 0
            for i in range(counts[split]):
                for d in range(10):
                    pool = pools[split, d]
                    image = images[pool[i % len(pool)]]
                    rng = np.random.default_rng([seed, 2, s_idx, d, i])
                    scene = DigitScene(image, rng)
                    events = camera.simulate(
                        scene, duration_us=scene.duration_us, step_us=DIGIT_STEP_US, noise_seed=[seed, 3, s_idx, d, i]
                    )
                    path = out / split / str(d) / f"{sample_id:05d}.bin"
                    write_nmnist(path, events)
                    written.add(path)
                    n_events.append(len(events))
                    sample_id += 1
                    bar.update(1)
    meta = {
        "generator": "events.simulate.simulate_digits",
        "format_version": _FORMAT_VERSION,
        "layout": "N-MNIST: Train/<digit>/<id>.bin, Test/<digit>/<id>.bin (34x34, 5-byte events)",
        "seed": seed,
        "per_class": per_class,
        "test_per_class": n_test,
        "samples": {"train": 10 * per_class, "test": 10 * n_test},
        "source_images": "sklearn.datasets.load_digits (8x8 handwritten digits, bundled)",
        "saccades": "3 x ~100 ms, triangle of ~3 px sides",
        "render_step_us": DIGIT_STEP_US,
        "camera": camera.params(),
        "events_per_sample": {
            "mean": float(np.mean(n_events)),
            "min": int(np.min(n_events)),
            "max": int(np.max(n_events)),
        },
    }
    readme = (
        "Synthetic N-MNIST, made by events.simulate.simulate_digits (not real sensor data).\n\n"
        "Handwritten digits from scikit-learn's bundled 8x8 digit images, upsampled smoothly to\n"
        "about 28x28 inside a 34x34 view and moved along N-MNIST's three ~100 ms saccades in front\n"
        "of a simulated event camera (log-intensity pixels with threshold mismatch, refractory\n"
        "period, background and shot noise).\n\n"
        "Layout: Train/<digit>/<id>.bin and Test/<digit>/<id>.bin in N-MNIST's binary format\n"
        "(5 bytes an event). Load with events.NMNIST(root, train=True/False).\n"
        f"Samples: {10 * per_class} train, {10 * n_test} test; seed {seed}.\n"
        "All parameters: simulation.json.\n"
    )
    _remove_stale(old, written)
    _write_meta(out, meta, readme)
    return out


def _split_users(users: int) -> int:
    """Test users: roughly the last fifth (DVS Gesture: users 24-29 of 29), none for one user."""
    return 0 if users < 2 else max(1, round(users / 5))


def simulate_gestures(
    out_dir,
    *,
    seed: int = 0,
    users: int = 6,
    per_class: int = 2,
    lightings: Sequence[str] | None = None,
    gesture_s: tuple[float, float] = (1.5, 2.5),
    progress: bool = True,
) -> Path:
    """Write a synthetic DVS Gesture in IBM's original layout to ``out_dir`` and return its path.

    Users ``user01 .. userNN`` each perform every one of the 11 classes ``per_class`` times.
    ``lightings`` (default: all five of the original, ``LIGHTINGS`` in :mod:`events.sim_scenes`)
    are the conditions to record under: a user makes ``min(per_class, len(lightings))``
    recordings, each under a different lighting (rotating over the list from user to user), and
    repetition r of every class goes to the user's recording ``r % that number``; the gestures
    of a recording come in a shuffled order, ``gesture_s`` (min, max) seconds each, with rest
    periods of 0.3-0.8 s (arms hanging) before, between and after them. Files:

    - ``userNN_<lighting>.aedat``: AEDAT 3.1, 128 x 128, timestamps in µs from an arbitrary
      camera-clock origin (0.5-3 s), as the original recordings;
    - ``userNN_<lighting>_labels.csv``: ``class,startTime_usec,endTime_usec``, class 1..11;
    - ``trials_to_train.txt`` / ``trials_to_test.txt``: the ``.aedat`` names of each split, the
      last ``round(users / 5)`` users (at least one when ``users >= 2``) being the test users;
    - ``README.txt`` and ``simulation.json`` (parameters, per-recording summary).

    One simulated sensor (``GESTURE_CAMERA``, fixed threshold mismatch) records everything, with
    the noise rates of each lighting and fresh noise per recording. Deterministic given ``seed``
    (identical bytes); every file is written atomically. ``out_dir`` must be empty or hold an
    earlier simulated DVS Gesture (its recordings, labels and trial lists are replaced, left-over
    ones removed), else ``FileExistsError``: real recordings are never overwritten.
    """
    from events.formats.aedat3 import write_aedat3
    from events.sim_scenes import (
        GESTURE_CLASSES,
        LIGHTINGS,
        RAMP_S,
        GestureRecordingScene,
        GestureSegment,
        gesture_params,
        user_style,
    )

    seed = _check_int("seed", seed, 0)
    users = _check_int("users", users, 1)
    per_class = _check_int("per_class", per_class, 1)
    lightings = list(LIGHTINGS) if lightings is None else [str(name) for name in lightings]
    unknown = [name for name in lightings if name not in LIGHTINGS]
    if not lightings or unknown or len(set(lightings)) != len(lightings):
        raise ValueError(f"lightings must be distinct names out of {sorted(LIGHTINGS)}, got {lightings!r}")
    g_min, g_max = (float(v) for v in gesture_s)
    if not (2 * RAMP_S < g_min <= g_max < 600):  # room to ease in and out; a sanity bound
        raise ValueError(
            f"gesture_s must be (min, max) seconds with {2 * RAMP_S} < min <= max < 600, got {gesture_s!r}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = _claim_output(
        out, "events.simulate.simulate_gestures", ("user*.aedat", "user*_labels.csv", "trials_to_*.txt")
    )
    written = set()
    n_classes = len(GESTURE_CLASSES)
    n_rec = min(per_class, len(lightings))
    n_test_users = _split_users(users)
    trials = {"train": [], "test": []}
    summary = []
    cameras = {}
    with tqdm(
        total=users * per_class * n_classes, desc="simulating gestures", unit="gesture", disable=not progress
    ) as bar:
        for user in range(1, users + 1):
            style = user_style(np.random.default_rng([seed, 10, user]))
            plan = [[] for _ in range(n_rec)]
            for r in range(per_class):
                plan[r % n_rec].extend(range(1, n_classes + 1))
            for j, classes in enumerate(plan):
                lighting = lightings[(user - 1 + j) % len(lightings)]
                rng = np.random.default_rng([seed, 11, user, j])
                rng.shuffle(classes)
                origin = int(rng.integers(500_000, 3_000_000))
                t = origin + int(rng.uniform(*GESTURE_REST_S) * 1e6)
                segments = []
                for cls in classes:
                    duration = rng.uniform(g_min, g_max)
                    end = t + int(duration * 1e6)
                    segments.append(GestureSegment(int(cls), t, end, gesture_params(int(cls), rng, style, duration)))
                    t = end + int(rng.uniform(*GESTURE_REST_S) * 1e6)
                scene = GestureRecordingScene(style, segments, LIGHTINGS[lighting])
                if lighting not in cameras:
                    noise = {k: LIGHTINGS[lighting][k] for k in ("background_rate_hz", "shot_noise_rate_hz")}
                    cameras[lighting] = EventCameraModel(128, 128, seed=[seed, 12], **GESTURE_CAMERA, **noise)
                events = cameras[lighting].simulate(
                    scene,
                    duration_us=t - origin,
                    step_us=GESTURE_STEP_US,
                    start_us=origin,
                    noise_seed=[seed, 13, user, j],
                )
                name = f"user{user:02d}_{lighting}"
                write_aedat3(out / f"{name}.aedat", events, sensor_size=SensorSize(128, 128, 2))
                rows = "".join(f"{s.cls},{s.start_us},{s.end_us}\n" for s in segments)
                _write_text(out / f"{name}_labels.csv", "class,startTime_usec,endTime_usec\n" + rows)
                written |= {out / f"{name}.aedat", out / f"{name}_labels.csv"}
                split = "test" if user > users - n_test_users else "train"
                trials[split].append(f"{name}.aedat")
                summary.append(
                    {
                        "file": f"{name}.aedat",
                        "user": user,
                        "lighting": lighting,
                        "split": split,
                        "gestures": len(segments),
                        "events": int(len(events)),
                        "duration_s": round((t - origin) * 1e-6, 3),
                    }
                )
                bar.update(len(segments))
    for split in ("train", "test"):
        _write_text(out / f"trials_to_{split}.txt", "".join(f"{n}\n" for n in trials[split]))
        written.add(out / f"trials_to_{split}.txt")
    _remove_stale(old, written)
    meta = {
        "generator": "events.simulate.simulate_gestures",
        "format_version": _FORMAT_VERSION,
        "layout": "IBM DVS Gesture original release: userNN_<lighting>.aedat (AEDAT 3.1), "
        "userNN_<lighting>_labels.csv, trials_to_train.txt, trials_to_test.txt",
        "seed": seed,
        "users": users,
        "per_class": per_class,
        "lightings": lightings,
        "gesture_s": [g_min, g_max],
        "rest_s": list(GESTURE_REST_S),
        "render_step_us": GESTURE_STEP_US,
        "classes": list(GESTURE_CLASSES),
        "test_users": list(range(users - n_test_users + 1, users + 1)),
        "lighting_params": {name: LIGHTINGS[name] for name in lightings},
        "camera": {name: cam.params() for name, cam in sorted(cameras.items())},
        "recordings": summary,
    }
    readme = (
        "Synthetic DVS Gesture, made by events.simulate.simulate_gestures (not real sensor data).\n\n"
        "A simulated person (head, torso, two-link arms) performs DVS Gesture's 11 classes in front\n"
        "of a simulated 128x128 event camera (log-intensity pixels with threshold mismatch,\n"
        "refractory period, background and shot noise); users differ in position, size, tempo,\n"
        "amplitude, clothing and background, recordings in lighting.\n\n"
        "Layout (IBM's original release): userNN_<lighting>.aedat (AEDAT 3.1),\n"
        "userNN_<lighting>_labels.csv (class,startTime_usec,endTime_usec; class 1..11),\n"
        "trials_to_train.txt / trials_to_test.txt. Load with events.DVSGesture(root, train=True/False).\n"
        f"Classes: {', '.join(f'{i + 1} {c}' for i, c in enumerate(GESTURE_CLASSES))}.\n"
        f"Users: {users} ({users - n_test_users} train, {n_test_users} test); {per_class} repetition(s) of each\n"
        f"class per user; seed {seed}. All parameters: simulation.json.\n"
    )
    _write_meta(out, meta, readme)
    return out
