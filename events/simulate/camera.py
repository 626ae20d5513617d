"""The event-camera model (:class:`EventCameraModel`).

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
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np

from events.errors import InputError
from events.types import EVENT_DTYPE, SensorSize, check_int, empty_events

from .kernels import camera_kernel, init_noise_clocks


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
            check_int(name, v, 1, 32767)
        check_int("refractory_us", refractory_us, 0)
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
                raise InputError(f"{name} must be {'>= 0' if zero_ok else '> 0'} and finite, got {v!r}")
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
            raise InputError(f"frames must have shape (N, {self.height}, {self.width}), got {frames.shape}")
        if times.shape != (frames.shape[0],):
            raise InputError(f"times_us must have one entry per frame ({frames.shape[0]}), got {times.shape}")
        if len(times) == 0:
            return empty_events()
        if (
            not np.all(np.isfinite(times))
            or np.any(np.diff(times) <= 0)
            or (self._started and times[0] <= self._clock[0])
        ):
            raise InputError("frame times must be finite and increase strictly (also across calls)")
        bg, shot = self.background_rate_hz * 1e-6, self.shot_noise_rate_hz * 1e-6
        if not self._started:
            first = frames[0].astype(np.float64).ravel()
            if not np.all(np.isfinite(first)):
                raise InputError("frame 0 holds NaN or infinite values")
            self._prev_lin[:] = first
            self._prev_log[:] = np.log(np.maximum(first, 0.0) + self.eps)
            self._ref[:] = self._prev_log
            self._t_done[:] = times[0]
            self._clock[0] = times[0]
            init_noise_clocks(self._next_noise, self._rng, times[0], bg + shot)
            self._started = True
            frames, times = frames[1:], times[1:]
        rows, bad = camera_kernel(
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
            raise InputError(f"frame {bad} of this call holds NaN or infinite values (the model was reset)")
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
                raise InputError("a scene callable needs duration_us > 0 and step_us > 0")
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
