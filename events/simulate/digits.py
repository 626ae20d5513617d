"""Handwritten digits on N-MNIST's saccades (:class:`DigitScene`) and the synthetic N-MNIST data set
(:func:`simulate_digits`).

An 8 x 8 image of scikit-learn's handwritten digits (values 0..16) is reconstructed with a cubic
B-spline and a soft threshold (smooth strokes with ~2 px edges, as the upscaled MNIST digits
shown on a monitor for N-MNIST look) over a 28 x 28 square in the middle of the 34 x 34 view,
with a small per-sample rotation, scale and offset. The view then follows N-MNIST's three
saccades, a triangle of ~3 px sides, ~100 ms each, with zero speed at the corners (the pan-tilt
unit stops between saccades).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from events.types import check_int

from .camera import EventCameraModel
from .output import FORMAT_VERSION, claim_output, remove_stale, write_meta
from .render import render_digit

NMNIST_SIZE = 34
DIGIT_SPAN = 28.0  # pixels covered by the 8 x 8 image
SACCADE_US = 100_000
# corners of the saccade triangle (image coordinates, y down): up-right, down-right, left
_SACCADE_CORNERS = np.array([[-1.5, 1.2], [0.0, -1.4], [1.5, 1.2]])


class DigitScene:
    """One digit (8 x 8 array, 0..16) seen through N-MNIST's three saccades; call with times
    in µs from 0 (the scene lasts ``duration_us``)."""

    def __init__(self, image: np.ndarray, rng: np.random.Generator, *, background: float = 0.1, gain: float = 0.5):
        self.image = np.asarray(image, dtype=np.float64) / 16.0
        angle = rng.uniform(-0.14, 0.14)  # about +-8 degrees
        scale = rng.uniform(0.92, 1.08)
        c, s = math.cos(angle), math.sin(angle)
        self._inv = np.array([[c, s], [-s, c]]) / scale
        self._centre = (NMNIST_SIZE - 1) / 2.0 + rng.uniform(-0.5, 0.5, 2)
        self._corners = _SACCADE_CORNERS * rng.uniform(0.9, 1.1, (3, 2))
        self._start = rng.uniform(0.0, 2000.0)
        self._lengths = SACCADE_US + rng.uniform(-4000.0, 4000.0, 3)
        self.duration_us = int(self._start + self._lengths.sum()) + 3000
        self.background = background
        self.gain = gain

    def offsets(self, t_us: np.ndarray) -> np.ndarray:
        """View offset (N, 2) in pixels at times ``t_us``."""
        t = np.asarray(t_us, dtype=np.float64) - self._start
        out = np.repeat(self._corners[:1], len(t), axis=0)
        edges = np.concatenate([[0.0], np.cumsum(self._lengths)])
        for j in range(3):
            a, b = self._corners[j], self._corners[(j + 1) % 3]
            u = np.clip((t - edges[j]) / self._lengths[j], 0.0, 1.0)
            ease = u - np.sin(2 * np.pi * u) / (2 * np.pi)  # zero speed at both ends
            sel = t >= edges[j]
            out[sel] = a + ease[sel, None] * (b - a)
        return out

    def __call__(self, t_us: np.ndarray) -> np.ndarray:
        centres = self._centre + self.offsets(t_us)
        frames = np.empty((len(centres), NMNIST_SIZE, NMNIST_SIZE), np.float32)
        render_digit(
            self.image, centres, self._inv, DIGIT_SPAN / self.image.shape[0], self.background, self.gain, frames
        )
        return frames


#: The simulated ATIS behind the synthetic N-MNIST (tuned to ~3-5k events a sample, as real ones).
DIGIT_CAMERA = {
    "contrast_threshold": 0.17,
    "threshold_mismatch": 0.03,
    "refractory_us": 1000,
    "background_rate_hz": 0.1,
    "shot_noise_rate_hz": 0.3,
}
DIGIT_STEP_US = 1000


def simulate_digits(
    out_dir, *, seed: int = 0, per_class: int = 10, test_per_class: int | None = None, progress: bool = True
) -> Path:
    """Write a synthetic N-MNIST to ``out_dir`` and return its path.

    Layout (N-MNIST's): ``Train/<digit>/<id>.bin`` and ``Test/<digit>/<id>.bin``, 34 x 34 ATIS
    ``.bin`` files, ``per_class`` training and ``test_per_class`` test samples per digit (default
    ``ceil(per_class / 6)``, N-MNIST's 6:1 split; 0 for none). ``<id>`` is a 5-digit running
    number within the split. Each sample is a distinct scikit-learn handwritten digit (train and
    test images never overlap; when a split needs more images than a class has, they are reused
    with fresh augmentation), seen through three ~100 ms saccades (``DigitScene``)
    by one simulated sensor (``DIGIT_CAMERA``, fixed threshold mismatch, fresh noise per sample).
    Deterministic given ``seed`` (identical bytes); every file is written atomically;
    ``README.txt`` and ``simulation.json`` record the parameters. ``out_dir`` must be empty or
    hold an earlier simulated N-MNIST (whose ``.bin`` files are replaced; any left over from a
    larger run are removed), else ``FileExistsError``.
    """
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    from events.formats.nmnist import write_nmnist

    seed = check_int("seed", seed, 0)
    per_class = check_int("per_class", per_class, 1)
    n_test = -(-per_class // 6) if test_per_class is None else check_int("test_per_class", test_per_class, 0)
    out = Path(out_dir)
    old = claim_output(out, "events.simulate.simulate_digits", ("Train/*/*.bin", "Test/*/*.bin"))
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
        "format_version": FORMAT_VERSION,
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
    remove_stale(old, written)
    write_meta(out, meta, readme)
    return out
