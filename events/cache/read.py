"""Reading a frame cache file: ``CachedFrames`` (one sample at a time) and ``CachedClips`` (one clip at a
time), and what the reader and the builder share: the layout checks, binning one sample of a data set, and the
marker by which a reader that met a damaged chunk asks the next ``FrameCache.get`` to repair the file."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from events.errors import InputError, UserError
from events.frames import FrameSpec, frames_from_spec
from events.h5attrs import read_attribute
from events.types import SensorSize, check_int

CACHE_FORMAT_VERSION = 3
"""Version 2 checksums offsets and labels as well as frames; version 3 stores its text as fixed-length strings, in
the attributes and datasets themselves (no global heap, ``events.h5attrs``). Earlier files are stale and rebuilt."""

log = logging.getLogger(__name__)


class CacheError(UserError, OSError):
    """A cache file that cannot be used: names the file and what is wrong with it."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def layout_problem(f: h5py.File, n: int) -> str:
    """Shape/consistency problem of an opened cache file meant to hold ``n`` samples, or ``""``."""
    missing = [name for name in ("frames", "offsets", "labels", "info") if name not in f]
    if missing:
        return f"missing dataset(s) {missing}"
    frames, offsets, labels, info = f["frames"], f["offsets"], f["labels"], f["info"]
    odd = [
        name
        for name, d in zip(("frames", "offsets", "labels", "info"), (frames, offsets, labels, info))
        if not isinstance(d, h5py.Dataset)
    ]
    if odd:
        return f"{odd} not datasets"
    if offsets.shape != (n + 1,) or labels.shape != (n,) or info.shape != (n,):
        return f"offsets/labels/info shapes {offsets.shape}/{labels.shape}/{info.shape} do not fit {n} samples"
    if info.dtype.kind != "S":
        return f"info is stored as {info.dtype}, not as fixed-length text"
    frame_shape = read_attribute(f, "frame_shape")
    want = [] if frame_shape is None else [int(v) for v in np.atleast_1d(frame_shape)]
    if frames.ndim != 4 or list(frames.shape[1:]) != want:
        return f"frames shape {frames.shape} does not match frame_shape {frame_shape}"
    off = offsets[()]
    if off[0] != 0 or off[-1] != frames.shape[0] or (np.diff(off) < 0).any():
        return f"offsets do not partition the {frames.shape[0]} stored frames"
    return ""


def _text(f: h5py.File, name: str) -> str:
    """The fixed-length text attribute ``name`` (``events.h5attrs``); ``KeyError`` when absent."""
    value = read_attribute(f, name, "text")
    if value is None:
        raise KeyError(f"no attribute {name!r}")
    return value


def damage_marker(path) -> Path:
    """The empty file ``.<name>.damaged`` beside cache file ``path``: a reader leaves it on meeting a damaged chunk,
    and the next ``FrameCache.get`` then checks every chunk and repairs the file (and removes the marker)."""
    path = Path(path)
    return path.with_name(f".{path.name}.damaged")


def bin_sample(dataset, i: int, spec: FrameSpec, dtype: np.dtype) -> tuple[np.ndarray, int, str]:
    """Sample ``i`` of ``dataset`` as the cache stores it: (frames ``(T, P, H, W)`` of ``dtype``, its integer label,
    the JSON of ``dataset.sample_info(i)``). With ``spec.span == "sample"`` it is binned over the info's
    ``[start_us, end_us)`` where both are given. ``ValueError`` names the sample when its label is not an integer,
    its info not JSON or its events cannot be binned."""
    events, label = dataset[i]
    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
        raise InputError(f"sample {i} of {dataset.name!r} has label {label!r}; labels must be integers")
    info = dataset.sample_info(i)
    try:
        info_json = json.dumps(info, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise InputError(f"sample_info({i}) of {dataset.name!r} is not JSON-serialisable: {err}") from err
    window = (info.get("start_us"), info.get("end_us")) if spec.span == "sample" else (None, None)
    start, end = (None, None) if None in window else (int(window[0]), int(window[1]))
    sensor = SensorSize(*(int(v) for v in dataset.sensor_size))
    try:
        frames = frames_from_spec(events, sensor, spec, start_us=start, end_us=end, dtype=dtype)
    except ValueError as err:
        err.add_note(f"while binning sample {i} of {dataset.name}/{dataset.split}: {info_json}")
        raise
    return frames, int(label), info_json


def _position(i, n: int, what: str) -> int:
    """Sequence index ``i`` (negative counts from the end) as a position in ``range(n)``."""
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"{what} index must be an integer, got {type(i).__name__}")
    j = int(i) + n if i < 0 else int(i)
    if not 0 <= j < n:
        raise IndexError(f"{what} index {i} out of range for {n} {what}s")
    return j


class CachedFrames(Sequence):
    """Read-only view of one cache file: ``cf[i] -> (frames (T, P, H, W), label)``.

    Offsets and labels (a few bytes per sample) are held in memory; frames and sample info are read
    from the file per index. The HDF5 handle is opened lazily in each process (a fork is detected by
    the process id, and pickling drops the handle), so the object can be handed to multiprocessing
    DataLoader workers. Offsets, labels and frames are read through their checksums: damaged offsets or labels
    raise :class:`CacheError` naming the file. A sample whose frames fail their checksum is binned again from
    ``source``, the data set the file was built from (``FrameCache.get`` passes it), and kept in memory, with one
    warning naming the file and the sample, and the file is marked (:func:`damage_marker`) so that the next
    ``FrameCache.get`` repairs it; without ``source`` it raises :class:`CacheError` naming the file.
    """

    def __init__(self, path, source=None):
        self.path = Path(path)
        self.source = source
        self._rebuilt: dict[int, np.ndarray] = {}  # samples binned again from the source, in this process
        self._file: h5py.File | None = None
        self._pid: int | None = None
        try:
            with h5py.File(self.path, "r") as f:
                version = read_attribute(f, "format_version")
                if version is None or int(version) != CACHE_FORMAT_VERSION:
                    raise CacheError(self.path, f"cache format version {version}, expected {CACHE_FORMAT_VERSION}")
                if not bool(read_attribute(f, "complete")):
                    raise CacheError(self.path, "not marked complete")
                self.spec = FrameSpec.from_dict(json.loads(_text(f, "spec")))
                self.sensor_size = SensorSize(*(int(v) for v in read_attribute(f, "sensor_size")))
                self.classes = list(json.loads(_text(f, "classes")))
                self.dataset_name = _text(f, "dataset")
                self.split = _text(f, "split")
                n = int(read_attribute(f, "n_samples"))
                problem = layout_problem(f, n)
                if problem:
                    raise CacheError(self.path, problem)
                self._offsets = f["offsets"][()].astype(np.int64)
                self.labels = f["labels"][()].astype(np.int64)
        except CacheError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:  # RuntimeError: h5py's, on damage
            raise CacheError(self.path, f"not a usable frame cache ({type(err).__name__}: {err})") from err
        self.labels.flags.writeable = False
        self._offsets.flags.writeable = False

    # -- handle management
    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")  # an inherited handle from the parent is left alone
            self._pid = os.getpid()
        return self._file

    def close(self) -> None:
        """Close this process's handle (it reopens on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    # -- Sequence
    def __len__(self) -> int:
        return len(self.labels)

    def _index(self, i) -> int:
        return _position(i, len(self), "sample")

    def _read_frames(self, j: int, a: int, b: int) -> np.ndarray:
        """Frames ``a:b`` (counted from sample ``j``'s first) of sample ``j``."""
        if j in self._rebuilt:
            return self._rebuilt[j][a:b]
        first = int(self._offsets[j])
        try:
            return self._h5()["frames"][first + a : first + b]
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            if self.source is None:
                raise CacheError(
                    self.path,
                    f"cannot read frames {first + a}:{first + b} ({err}); "
                    "delete the file so that FrameCache.get rebuilds it",
                ) from err
        frames, label, _ = bin_sample(self.source, j, self.spec, self._h5()["frames"].dtype)
        if label != self.labels[j] or len(frames) != self._offsets[j + 1] - first:
            raise CacheError(self.path, f"sample {j} no longer matches its source; delete the file to rebuild it")
        self._rebuilt[j] = frames
        try:
            damage_marker(self.path).touch()
        except OSError:
            pass  # a read-only cache folder: the next FrameCache.get(..., verify=True) still finds the damage
        log.warning("%s: frames of sample %d failed their checksum; binned again from its source", self.path, j)
        return frames[a:b]

    def __getitem__(self, i) -> tuple[np.ndarray, int]:
        j = self._index(i)
        return self._read_frames(j, 0, int(self._offsets[j + 1] - self._offsets[j])), int(self.labels[j])

    @property
    def lengths(self) -> np.ndarray:
        """Number of frames ``T`` of every sample."""
        return np.diff(self._offsets)

    def info(self, i) -> dict:
        """``sample_info(i)`` of the data set the cache was built from."""
        j = self._index(i)
        try:
            return json.loads(bytes(self._h5()["info"][j]).decode("utf-8"))
        except (OSError, KeyError, ValueError, RuntimeError) as err:
            raise CacheError(self.path, f"cannot read info of sample {j} ({err})") from err

    def clips(self, frames_per_clip: int | None = None, stride: int | None = None) -> CachedClips:
        """Fixed-length clips of every sample (``split_clips`` semantics), read lazily per clip.

        ``frames_per_clip`` defaults to ``spec.frames_per_clip``; ``stride`` to ``frames_per_clip``.
        """
        return CachedClips(self, frames_per_clip, stride)

    def __repr__(self) -> str:
        return (
            f"CachedFrames({str(self.path)!r}, samples={len(self)}, frame_shape="
            f"{self.spec.output_shape(self.sensor_size)})"
        )


class CachedClips(Sequence):
    """``clips[j] -> (frames (frames_per_clip, P, H, W), label)`` over every sample of a :class:`CachedFrames`.

    Clip ``j`` is frames ``[start_frame[j], start_frame[j] + frames_per_clip)`` of sample
    ``sample_index[j]``; a sample contributes ``(T - frames_per_clip) // stride + 1`` clips (none when
    shorter than a clip), in sample order.
    """

    def __init__(self, frames: CachedFrames, frames_per_clip: int | None = None, stride: int | None = None):
        fpc = frames.spec.frames_per_clip if frames_per_clip is None else frames_per_clip
        if fpc is None:
            raise InputError("frames_per_clip is not set in the frame spec; pass it explicitly")
        stride = fpc if stride is None else stride
        for name, v in (("frames_per_clip", fpc), ("stride", stride)):
            check_int(name, v, 1)
        self.source = frames
        self.frames_per_clip = int(fpc)
        self.stride = int(stride)
        lengths = frames.lengths
        counts = np.where(lengths >= fpc, (lengths - fpc) // stride + 1, 0)
        self.sample_index = np.repeat(np.arange(len(lengths)), counts)
        first = np.cumsum(counts) - counts
        self.start_frame = (np.arange(int(counts.sum())) - np.repeat(first, counts)) * self.stride
        self.labels = frames.labels[self.sample_index]

    def __len__(self) -> int:
        return len(self.sample_index)

    def __getitem__(self, j) -> tuple[np.ndarray, int]:
        k = _position(j, len(self), "clip")
        i = int(self.sample_index[k])
        a = int(self.start_frame[k])
        return self.source._read_frames(i, a, a + self.frames_per_clip), int(self.labels[k])
