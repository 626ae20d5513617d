"""The one bridge from ``events`` to tensors: data sets -> cached frames -> torch ``Dataset``s.

``load_data(cfg.data, root, cache_dir)`` opens the data set named by the configuration (offline:
a missing folder raises ``events.DatasetNotFoundError`` naming the layout and the source), bins
every recording once into the HDF5 frame cache, and returns ``Splits``: training, validation and
test ``FrameSet``s. Each item is ``(frames, label)`` with ``frames`` a float32 tensor
``(T, P, H, W)`` of event counts (networks binarize their input themselves).

Validation holds out whole samples (a gesture or a digit recording), chosen by a seeded
permutation, so no clip of a validation gesture is ever trained on. Augmentation is a pure
function of (seed, epoch, item index): a resumed run sees exactly the augmentations an
uninterrupted one would, whatever the number of DataLoader workers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

import events
from events.errors import InputError

from .config import DataConfig
from .train_config import AugmentConfig

# Playing a DVS Gesture clip backwards turns clockwise arm circles into counter-clockwise ones.
TIME_FLIP_LABELS = {"dvsgesture": {3: 4, 4: 3, 5: 6, 6: 5}, "nmnist": {}}


def open_dataset(data: DataConfig, root, train: bool):
    """``events.DVSGesture`` or ``events.NMNIST`` over ``root`` (no frames yet)."""
    if data.dataset == "dvsgesture":
        return events.DVSGesture(root, train=train)
    return events.NMNIST(root, train=train)


def augment(
    frames: np.ndarray, label: int, aug: AugmentConfig, rng: np.random.Generator, time_flip_labels: dict[int, int]
) -> tuple[np.ndarray, int]:
    """One random augmentation of ``frames`` (T, P, H, W); see ``AugmentConfig`` for what each does."""
    if aug.time_flip and rng.random() < aug.time_flip:
        frames = frames[::-1, ::-1]  # reversed time: ON and OFF swap too
        label = time_flip_labels.get(label, label)
    if aug.polarity_flip and rng.random() < aug.polarity_flip:
        frames = frames[:, ::-1]
    if aug.scale:
        frames = zoom(frames, float(np.exp(rng.uniform(-1.0, 1.0) * np.log1p(aug.scale))))
    if aug.jitter_px:
        dy, dx = rng.integers(-aug.jitter_px, aug.jitter_px + 1, size=2)
        frames = shift(frames, int(dy), int(dx))
    return np.ascontiguousarray(frames), label


def zoom(frames: np.ndarray, factor: float) -> np.ndarray:
    """Scale the last two axes by ``factor`` about the frame's centre, nearest neighbour: output pixel (i, j) takes
    input pixel (round(c_y + (i - c_y) / factor), round(c_x + (j - c_x) / factor)), c the centre; pixels whose
    source lies outside the frame are empty (no events). ``factor`` 1 returns the frames unchanged."""
    h, w = frames.shape[-2:]
    rows = np.rint((h - 1) / 2 + (np.arange(h) - (h - 1) / 2) / factor).astype(np.int64)
    cols = np.rint((w - 1) / 2 + (np.arange(w) - (w - 1) / 2) / factor).astype(np.int64)
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    out = frames[..., np.clip(rows, 0, h - 1)[:, None], np.clip(cols, 0, w - 1)[None, :]]
    return np.where(inside, out, np.zeros((), dtype=frames.dtype))


def shift(frames: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Translate the last two axes by (dy, dx) pixels; pixels shifted in are empty (no events)."""
    out = np.zeros_like(frames)
    h, w = frames.shape[-2:]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src = frames[..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)]
    out[..., max(0, dy) : max(0, dy) + src.shape[-2], max(0, dx) : max(0, dx) + src.shape[-1]] = src
    return out


class FrameSet(Dataset):
    """Items ``(frames float32 (T, P, H, W), label)`` of cached samples or clips, optionally a subset.

    ``groups[i]``: the sample (recording or gesture) item ``i`` was cut from, so clip predictions can
    be combined per gesture. ``set_epoch(e)`` selects the augmentations of epoch ``e``.
    """

    def __init__(
        self,
        items,
        groups: np.ndarray,
        labels: np.ndarray,
        *,
        index: np.ndarray | None = None,
        augmentation: AugmentConfig | None = None,
        seed: int = 0,
        time_flip_labels=None,
    ):
        self.items = items
        self.index = np.arange(len(items)) if index is None else np.asarray(index)
        self.groups = np.asarray(groups)[self.index]
        self.labels = np.asarray(labels)[self.index]
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self.time_flip_labels = time_flip_labels or {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def without_augmentation(self) -> FrameSet:
        """The same items as they are stored."""
        plain = copy.copy(self)
        plain.augmentation = None
        return plain

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        frames, label = self.items[int(self.index[i])]
        if self.augmentation is not None:
            rng = np.random.default_rng((self.seed, self.epoch, int(i)))
            frames, label = augment(frames, label, self.augmentation, rng, self.time_flip_labels)
        return torch.from_numpy(frames.astype(np.float32, copy=False)), int(label)


@dataclass
class Splits:
    """What training and evaluation need: the three sets and the shapes the model is built for."""

    train: FrameSet
    val: FrameSet | None
    test: FrameSet | None
    classes: list[str]
    frame_spec: events.FrameSpec
    in_channels: int
    input_size: tuple[int, int]


def _cached_items(cached, spec: events.FrameSpec):
    """(items, groups, labels): clips when the spec cuts clips, else whole samples."""
    if spec.frames_per_clip is not None:
        clips = cached.clips()
        return clips, clips.sample_index, np.asarray(clips.labels)
    return cached, np.arange(len(cached)), np.asarray(cached.labels)


def item_shape(data: DataConfig, dataset) -> tuple[int, tuple[int, int]]:
    """(input channels, (height, width)) of the items ``dataset`` (open, ``open_dataset``) gives with ``data``'s
    frame settings: what a network built for them takes (frames x polarity channels are its channels), known
    before anything is binned."""
    spec = data.frame_spec()
    p, h, w = spec.output_shape(dataset.sensor_size)
    t = spec.frames_per_clip or spec.frames_per_sample
    if t is None:
        raise InputError("the frame spec must fix the number of frames per item (frames_per_clip or n_time_bins)")
    return t * p, (h, w)


def test_set(data: DataConfig, root, cache_dir, *, progress: bool = True, dataset=None) -> FrameSet:
    """The data set's test split as a ``FrameSet`` (no augmentation); ``dataset``: that split, already open
    (``open_dataset(data, root, train=False)``)."""
    dataset = open_dataset(data, root, train=False) if dataset is None else dataset
    cached = events.FrameCache(Path(cache_dir)).get(dataset, data.frame_spec(), progress=progress)
    return FrameSet(*_cached_items(cached, data.frame_spec()))


def validation_samples(n_samples: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted indices of the ``round(fraction * n)`` samples held out for validation (at least 1 if fraction > 0)."""
    if fraction <= 0 or n_samples < 2:
        return np.zeros(0, dtype=np.int64)
    k = min(n_samples - 1, max(1, round(fraction * n_samples)))
    return np.sort(np.random.default_rng(seed).permutation(n_samples)[:k])


def load_data(
    data: DataConfig,
    root,
    cache_dir,
    *,
    augmentation: AugmentConfig | None = None,
    seed: int = 0,
    with_test: bool = True,
    progress: bool = True,
) -> Splits:
    """Open, bin (through the cache) and split the data set named by ``data`` under ``root``."""
    spec = data.frame_spec()
    cache = events.FrameCache(Path(cache_dir))
    train_ds = open_dataset(data, root, train=True)
    cached = cache.get(train_ds, spec, progress=progress)
    items, groups, labels = _cached_items(cached, spec)
    if len(items) == 0:
        raise InputError(
            f"{root}: the training set yields no {'clips' if spec.frames_per_clip else 'samples'} "
            f"with {spec} (recordings shorter than a clip?)"
        )
    held = validation_samples(len(cached), data.val_fraction, seed)
    is_val = np.isin(groups, held)
    flips = TIME_FLIP_LABELS[data.dataset]
    train = FrameSet(
        items,
        groups,
        labels,
        index=np.flatnonzero(~is_val),
        augmentation=augmentation,
        seed=seed,
        time_flip_labels=flips,
    )
    val = FrameSet(items, groups, labels, index=np.flatnonzero(is_val)) if is_val.any() else None
    test = test_set(data, root, cache_dir, progress=progress) if with_test else None
    in_channels, input_size = item_shape(data, train_ds)
    return Splits(train, val, test, list(train_ds.classes), spec, in_channels=in_channels, input_size=input_size)
