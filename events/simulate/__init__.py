"""Event-camera simulator and the synthetic data sets built with it (``nsm simulate``).

- :func:`simulate_digits`: scikit-learn's bundled handwritten digits (real handwriting, 8 x 8),
  upsampled smoothly to ~28 x 28 in a 34 x 34 view and moved along N-MNIST's three ~100 ms
  saccades; written as N-MNIST ``.bin`` files in the N-MNIST layout.
- :func:`simulate_gestures`: eleven arm-motion classes mirroring IBM DVS Gesture at 128 x 128,
  with per-user style and per-recording lighting, written in the original release's layout
  (AEDAT 3.1 recordings, label CSVs, train/test trial lists).

Both are deterministic given ``seed`` (identical bytes), write every file atomically (temporary
file, then rename) and leave ``README.txt`` and ``simulation.json`` (the parameters used) in the
output folder.

Modules: ``camera`` (the pixel model) and its ``kernels``; ``render`` (scene kernels); ``digits`` and
``gestures`` (with ``body``: the person) build the scenes and data sets; ``output`` writes them.
"""

from .camera import EventCameraModel
from .digits import simulate_digits
from .gestures import simulate_gestures

__all__ = ["EventCameraModel", "simulate_digits", "simulate_gestures"]
