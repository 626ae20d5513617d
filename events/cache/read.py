"""Reading a frame cache file: ``CachedFrames`` (one sample at a time) and ``CachedClips`` (one clip at a
time), and the layout checks both the reader and the builder use."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from events.frames import FrameSpec
from events.types import SensorSize, check_int

CACHE_FORMAT_VERSION = 1

STR = h5py.string_dtype("utf-8")


class CacheError(OSError):
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
    if offsets.shape != (n + 1,) or labels.shape != (n,) or info.shape != (n,):
        return f"offsets/labels/info shapes {offsets.shape}/{labels.shape}/{info.shape} do not fit {n} samples"
    if frames.ndim != 4 or list(frames.shape[1:]) != [int(v) for v in f.attrs.get("frame_shape", [])]:
        return f"frames shape {frames.shape} does not match frame_shape {f.attrs.get('frame_shape')}"
    off = offsets[()]
    if off[0] != 0 or off[-1] != frames.shape[0] or (np.diff(off) < 0).any():
        return f"offsets do not partition the {frames.shape[0]} stored frames"
    return ""


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
    DataLoader workers. A damaged chunk raises :class:`CacheError` naming the file.
    """

    def __init__(self, path):
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        try:
            with h5py.File(self.path, "r") as f:
                if int(f.attrs.get("format_version", -1)) != CACHE_FORMAT_VERSION:
                    raise CacheError(
                        self.path,
                        f"cache format version {f.attrs.get('format_version')}, expected {CACHE_FORMAT_VERSION}",
                    )
                if not bool(f.attrs.get("complete", False)):
                    raise CacheError(self.path, "not marked complete")
                self.spec = FrameSpec.from_dict(json.loads(f.attrs["spec"]))
                self.sensor_size = SensorSize(*(int(v) for v in f.attrs["sensor_size"]))
                self.classes = list(json.loads(f.attrs["classes"]))
                self.dataset_name = str(f.attrs["dataset"])
                self.split = str(f.attrs["split"])
                n = int(f.attrs["n_samples"])
                problem = layout_problem(f, n)
                if problem:
                    raise CacheError(self.path, problem)
                self._offsets = f["offsets"][()].astype(np.int64)
                self.labels = f["labels"][()].astype(np.int64)
        except CacheError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as err:
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

    def _read_frames(self, a: int, b: int) -> np.ndarray:
        try:
            return self._h5()["frames"][a:b]
        except (OSError, KeyError, ValueError) as err:
            raise CacheError(
                self.path, f"cannot read frames {a}:{b} ({err}); delete the file so that FrameCache.get rebuilds it"
            ) from err

    def __getitem__(self, i) -> tuple[np.ndarray, int]:
        j = self._index(i)
        return self._read_frames(int(self._offsets[j]), int(self._offsets[j + 1])), int(self.labels[j])

    @property
    def lengths(self) -> np.ndarray:
        """Number of frames ``T`` of every sample."""
        return np.diff(self._offsets)

    def info(self, i) -> dict:
        """``sample_info(i)`` of the data set the cache was built from."""
        j = self._index(i)
        try:
            raw = self._h5()["info"][j]
        except (OSError, KeyError, ValueError) as err:
            raise CacheError(self.path, f"cannot read info of sample {j} ({err})") from err
        return json.loads(raw.decode() if isinstance(raw, bytes) else raw)

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
            raise ValueError("frames_per_clip is not set in the frame spec; pass it explicitly")
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
        a = int(self.source._offsets[i]) + int(self.start_frame[k])
        return self.source._read_frames(a, a + self.frames_per_clip), int(self.labels[k])
