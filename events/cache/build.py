"""Building and finding frame cache files: ``FrameCache`` (the fingerprint that says whether a file is current,
the atomic build one sample at a time)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from events.atomic import atomic_path, remove_dead_temps
from events.frames import FrameSpec, frames_from_spec
from events.types import SensorSize

from .read import CACHE_FORMAT_VERSION, STR, CachedFrames, layout_problem

_CHUNK_BYTES = 1 << 17  # target size of one HDF5 chunk of frames
_FLUSH_BYTES = 16 << 20  # frames buffered in memory before they are written


log = logging.getLogger(__name__)


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
            problem = layout_problem(f, int(fingerprint["n_samples"]))
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


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "_"


def _sample_window(info: dict) -> tuple[int | None, int | None]:
    start, end = info.get("start_us"), info.get("end_us")
    if start is None or end is None:
        return None, None
    return int(start), int(end)


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
        self.info = f.create_dataset("info", shape=(n,), dtype=STR)
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
            f.create_dataset("fingerprint", data=json.dumps(fingerprint, sort_keys=True), dtype=STR)
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
