"""HDF5 cache of binned samples: bin a data set once, then read frames lazily, one sample at a time.

``FrameCache(cache_dir).get(dataset, spec)`` returns :class:`CachedFrames`, building the cache file when
it is missing, stale or corrupt. ``dataset`` follows the project's data-set contract: ``len(ds)``,
``ds[i] -> (events, label)``, ``ds.sensor_size``, ``ds.name``, ``ds.split``, ``ds.classes``,
``ds.source_files() -> list[Path]`` and ``ds.sample_info(i) -> dict`` (JSON-serialisable). The cache bins
raw events, so a data set with a ``transform`` is refused (the transform is not part of the key).

One file per (data set name, split, frame spec): ``<cache_dir>/<name>-<split>-<spec.key()>.h5``. Layout:

* root attributes: ``format_version`` (int, :data:`CACHE_FORMAT_VERSION`), ``key`` (sha256 hex of the
  fingerprint below), ``spec`` (JSON of ``FrameSpec.to_dict()``), ``dataset``, ``split``,
  ``sensor_size`` (``[width, height, polarities]``), ``classes`` (JSON list), ``n_samples``,
  ``frame_shape`` (``[P, H, W]``) and ``complete`` (True, written last).
* ``frames``: ``(total_frames, P, H, W)``, every sample's frames one after the other; chunked by whole
  frames (at most 64 frames a chunk), lzf-compressed with byte shuffling and fletcher32 checksums, so
  that a damaged chunk is an error on reading, never wrong frames.
* ``offsets``: int64 ``(n_samples + 1,)``; sample ``i`` is ``frames[offsets[i]:offsets[i + 1]]``.
* ``labels``: int64 ``(n_samples,)``.
* ``info``: ``(n_samples,)`` UTF-8 strings, the JSON of ``ds.sample_info(i)``.
* ``fingerprint``: one UTF-8 string, the JSON the key hashes: the cache format version, data set name,
  split, sample count, classes, sensor size, the full frame spec and every source file as
  ``[resolved path, size, mtime_ns]``. Kept so that a rebuild message can say what changed.

With ``spec.span == "sample"`` each sample is binned over ``[info["start_us"], info["end_us"])`` from
``ds.sample_info(i)`` (a labelled gesture), falling back to its events' span where the data set gives
none (``None`` or absent). With ``spec.max_frames`` only the first frames of each sample are binned and
stored (``frames_from_spec`` never bins the rest); like every field it is part of the key and the file name,
so caches built with different caps, or none, are separate files.

Building writes a temporary file beside the target (``.<name>.<pid>.<token>.tmp``), bins the samples one
at a time (frames are flushed to disk every ~16 MiB), flushes and fsyncs, then ``os.replace()``s it
into place; an exception removes the temporary file, so an interrupted build never leaves a file that
is taken as a cache (a killed process leaves its temporary file, which a later build removes once
that process is gone). Messages go through :mod:`logging` (logger ``events.cache``): a missing or
stale cache is reported at INFO, a corrupt one at WARNING, each naming the file and the reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from events.atomic import atomic_path, remove_dead_temps
from events.frames import FrameSpec, frames_from_spec
from events.types import SensorSize

__all__ = ["CACHE_FORMAT_VERSION", "CacheError", "CachedClips", "CachedFrames", "FrameCache"]

CACHE_FORMAT_VERSION = 1
_CHUNK_BYTES = 1 << 17  # target size of one HDF5 chunk of frames
_FLUSH_BYTES = 16 << 20  # frames buffered in memory before they are written
_STR = h5py.string_dtype("utf-8")

log = logging.getLogger(__name__)


class CacheError(OSError):
    """A cache file that cannot be used: names the file and what is wrong with it."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


# --------------------------------------------------------------------------------------------
# fingerprint and inspection
# --------------------------------------------------------------------------------------------


def _fingerprint(dataset, spec: FrameSpec) -> dict:
    sources = []
    for p in dataset.source_files():
        p = Path(p).resolve()
        try:
            st = p.stat()
        except OSError as err:
            raise FileNotFoundError(
                f"{p}: source file of data set {dataset.name!r} cannot be read ({err.strerror or err})"
            ) from err
        sources.append([str(p), st.st_size, st.st_mtime_ns])
    sources.sort()
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "dataset": str(dataset.name),
        "split": str(dataset.split),
        "n_samples": len(dataset),
        "classes": [str(c) for c in dataset.classes],
        "sensor_size": [int(v) for v in dataset.sensor_size],
        "spec": spec.to_dict(),
        "sources": sources,
    }


def _key(fingerprint: dict) -> str:
    blob = json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _what_changed(old: dict, new: dict) -> str:
    """A short human-readable difference between two fingerprints."""
    for field in ("format_version", "dataset", "split", "spec", "sensor_size", "classes", "n_samples"):
        if old.get(field) != new.get(field):
            return f"{field} changed from {old.get(field)!r} to {new.get(field)!r}"
    before = {s[0]: s[1:] for s in old.get("sources", [])}
    after = {s[0]: s[1:] for s in new.get("sources", [])}
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    parts = []
    for label, names in (("added", added), ("removed", removed), ("changed (size or mtime)", changed)):
        if names:
            more = f" and {len(names) - 1} more" if len(names) > 1 else ""
            parts.append(f"source file {names[0]}{more} {label}")
    return "; ".join(parts) or "fingerprint differs"


def _inspect(path: Path, key: str, fingerprint: dict, verify: bool) -> tuple[str, str]:
    """Classify a cache file as ``("ok"|"missing"|"stale"|"corrupt", reason)``."""
    if not path.exists():
        return "missing", "no cache file yet"
    try:
        with h5py.File(path, "r") as f:
            version = f.attrs.get("format_version")
            if version is None:
                return "corrupt", "no format_version attribute"
            if int(version) != CACHE_FORMAT_VERSION:
                return "corrupt", f"cache format version {int(version)}, expected {CACHE_FORMAT_VERSION}"
            if not bool(f.attrs.get("complete", False)):
                return "corrupt", "not marked complete"
            missing = [n for n in ("frames", "offsets", "labels", "info", "fingerprint") if n not in f]
            if missing:
                return "corrupt", f"missing dataset(s) {missing}"
            if f.attrs.get("key") != key:
                try:
                    old = json.loads(f["fingerprint"][()].decode())
                except (ValueError, AttributeError):
                    old = {}
                return "stale", _what_changed(old, fingerprint)
            problem = _layout_problem(f, int(fingerprint["n_samples"]))
            if problem:
                return "corrupt", problem
            frames = f["frames"]
            if verify:
                for a in range(0, frames.shape[0], frames.chunks[0]):
                    frames[a : a + frames.chunks[0]]
            elif frames.shape[0]:
                frames[0]
                frames[-1]
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
        return "corrupt", f"cannot be read as a frame cache ({type(err).__name__}: {err})"
    return "ok", ""


def _layout_problem(f: h5py.File, n: int) -> str:
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


# --------------------------------------------------------------------------------------------
# building
# --------------------------------------------------------------------------------------------


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "_"


def _sample_window(info: dict) -> tuple[int | None, int | None]:
    start, end = info.get("start_us"), info.get("end_us")
    if start is None or end is None:
        return None, None
    return int(start), int(end)


def _position(i, n: int, what: str) -> int:
    """Sequence index ``i`` (negative counts from the end) as a position in ``range(n)``."""
    if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
        raise TypeError(f"{what} index must be an integer, got {type(i).__name__}")
    j = int(i) + n if i < 0 else int(i)
    if not 0 <= j < n:
        raise IndexError(f"{what} index {i} out of range for {n} {what}s")
    return j


class _Writer:
    """Appends samples to an open cache file, buffering up to ``_FLUSH_BYTES`` of frames."""

    def __init__(self, f: h5py.File, n: int, frame_shape: tuple[int, int, int], dtype: np.dtype):
        frame_bytes = int(np.prod(frame_shape)) * dtype.itemsize
        chunk_frames = int(min(64, max(1, _CHUNK_BYTES // frame_bytes)))
        self.frames = f.create_dataset(
            "frames",
            shape=(0, *frame_shape),
            maxshape=(None, *frame_shape),
            dtype=dtype,
            chunks=(chunk_frames, *frame_shape),
            compression="lzf",
            shuffle=True,
            fletcher32=True,
        )
        self.info = f.create_dataset("info", shape=(n,), dtype=_STR)
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        self.labels = np.zeros(n, dtype=np.int64)
        self._frames: list[np.ndarray] = []
        self._info: list[str] = []
        self._first = 0  # first sample index held in the buffer
        self._buffered = 0  # bytes of frames in the buffer
        self._written = 0  # frames already on disk

    def add(self, i: int, frames: np.ndarray, label: int, info_json: str) -> None:
        self._frames.append(frames)
        self._info.append(info_json)
        self.labels[i] = label
        self.offsets[i + 1] = self.offsets[i] + frames.shape[0]
        self._buffered += frames.nbytes
        if self._buffered >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._info:
            block = np.concatenate(self._frames) if self._frames else None
            if block is not None and len(block):
                end = self._written + len(block)
                self.frames.resize(end, axis=0)
                self.frames[self._written : end] = block
                self._written = end
            self.info[self._first : self._first + len(self._info)] = self._info
            self._first += len(self._info)
        self._frames, self._info, self._buffered = [], [], 0


# --------------------------------------------------------------------------------------------
# public classes
# --------------------------------------------------------------------------------------------


class FrameCache:
    """A folder of HDF5 frame caches, one per (data set name, split, frame spec); see the module docstring."""

    def __init__(self, cache_dir):
        self.cache_dir = Path(cache_dir)

    def path_for(self, dataset, spec: FrameSpec) -> Path:
        """The cache file of ``dataset`` binned with ``spec``."""
        return self.cache_dir / f"{_safe_name(str(dataset.name))}-{_safe_name(str(dataset.split))}-{spec.key()}.h5"

    def get(self, dataset, spec: FrameSpec, *, progress: bool = True, verify: bool = False) -> CachedFrames:
        """The cached frames of ``dataset`` under ``spec``, building them first when needed.

        The file is used as it is when its key matches (same format version, spec, data set
        description and source files, by path, size and mtime_ns) and its layout checks out
        (attributes, datasets, shapes, offsets, and the first and last frame read back through their
        checksums; ``verify=True`` reads back every chunk). Otherwise it is rebuilt, with a log
        message naming the file and the reason. ``progress`` shows a tqdm bar while building.
        """
        if not isinstance(spec, FrameSpec):
            raise TypeError(f"spec must be a FrameSpec, got {type(spec).__name__}")
        if getattr(dataset, "transform", None) is not None:
            raise ValueError(
                "the frame cache bins raw events and cannot key a transform: pass the data set "
                "without transform (the FrameSpec covers binning)"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.path_for(dataset, spec)
        fingerprint = _fingerprint(dataset, spec)
        key = _key(fingerprint)
        status, reason = _inspect(path, key, fingerprint, verify)
        if status == "ok":
            return CachedFrames(path)
        if status == "corrupt":
            log.warning("%s: corrupt frame cache (%s); rebuilding it", path, reason)
        elif status == "stale":
            log.info("%s: stale frame cache (%s); rebuilding it", path, reason)
        else:
            log.info("%s: no frame cache yet; building it", path)
        self._build(dataset, spec, path, fingerprint, key, progress)
        return CachedFrames(path)

    def _build(self, dataset, spec: FrameSpec, path: Path, fingerprint: dict, key: str, progress: bool) -> None:
        remove_dead_temps(path.parent, path.name)
        n = len(dataset)
        sensor = SensorSize(*(int(v) for v in dataset.sensor_size))
        frame_shape = spec.output_shape(sensor)
        dtype = np.dtype(np.uint8 if spec.binary else np.uint16)
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            writer = _Writer(f, n, frame_shape, dtype)
            with tqdm(
                total=n,
                desc=f"binning {dataset.name}/{dataset.split}",
                unit="sample",
                disable=not progress,
                leave=False,
            ) as bar:
                for i in range(n):
                    events, label = dataset[i]
                    if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
                        raise ValueError(f"sample {i} of {dataset.name!r} has label {label!r}; labels must be integers")
                    info = dataset.sample_info(i)
                    try:
                        info_json = json.dumps(info, sort_keys=True)
                    except (TypeError, ValueError) as err:
                        raise ValueError(
                            f"sample_info({i}) of {dataset.name!r} is not JSON-serialisable: {err}"
                        ) from err
                    start, end = _sample_window(info) if spec.span == "sample" else (None, None)
                    try:
                        frames = frames_from_spec(events, sensor, spec, start_us=start, end_us=end, dtype=dtype)
                    except ValueError as err:
                        err.add_note(f"while binning sample {i} of {dataset.name}/{dataset.split}: {info_json}")
                        raise
                    writer.add(i, frames, int(label), info_json)
                    bar.update()
            writer.flush()
            f.create_dataset("offsets", data=writer.offsets)
            f.create_dataset("labels", data=writer.labels)
            f.create_dataset("fingerprint", data=json.dumps(fingerprint, sort_keys=True), dtype=_STR)
            f.attrs.update(
                {
                    "format_version": CACHE_FORMAT_VERSION,
                    "key": key,
                    "spec": json.dumps(spec.to_dict()),
                    "dataset": str(dataset.name),
                    "split": str(dataset.split),
                    "sensor_size": list(sensor),
                    "classes": json.dumps([str(c) for c in dataset.classes]),
                    "n_samples": n,
                    "frame_shape": list(frame_shape),
                }
            )
            f.attrs["complete"] = True


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
                problem = _layout_problem(f, n)
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
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
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
