"""Building and finding frame cache files: ``FrameCache`` (the fingerprint that says whether a file is current,
the atomic build one sample at a time, the repair of damaged chunks)."""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from events.atomic import atomic_file, remove_dead_temps
from events.errors import InputError, MissingInputError
from events.frames import FrameSpec
from events.h5attrs import fixed_text, read_attribute
from events.types import SensorSize

from .read import CACHE_FORMAT_VERSION, CachedFrames, bin_sample, damage_marker, layout_problem

_CHUNK_BYTES = 1 << 17  # target size of one HDF5 chunk of frames
_FLUSH_BYTES = 16 << 20  # frames buffered in memory before they are written
_LABEL_CHUNK = 1024  # labels (and offsets) a checksummed chunk


log = logging.getLogger(__name__)


def _fingerprint(dataset, spec: FrameSpec) -> dict:
    sources = []
    for p in dataset.source_files():
        p = Path(p).resolve()
        try:
            st = p.stat()
        except OSError as err:
            raise MissingInputError(
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


def _damaged_frames(frames: h5py.Dataset, verify: bool) -> str:
    """``""``, or which chunks of ``frames`` fail their checksum: every chunk with ``verify``, else the first and
    the last frame's."""
    n, step = frames.shape[0], frames.chunks[0]
    starts = range(0, n, step) if verify else sorted({0, n - 1}) if n else []
    bad = []
    for a in starts:
        try:
            frames[a : a + step]
        except OSError:
            bad.append(a)
    return f"frame chunk(s) starting at frame {', '.join(map(str, bad))} fail their checksum" if bad else ""


_BEFORE = {1: "before labels were checksummed", 2: "before its text was stored as fixed-length strings"}
"""The stale format versions: what each came before (``CACHE_FORMAT_VERSION``)."""


def _inspect(path: Path, key: str, fingerprint: dict, verify: bool) -> tuple[str, str]:
    """Classify a cache file as ``("ok"|"missing"|"stale"|"corrupt"|"damaged", reason)``: "damaged" when its
    layout is sound but labels or frames fail their checksum, or a reader left the damage marker."""
    if not path.exists():
        return "missing", "no cache file yet"
    try:
        with h5py.File(path, "r") as f:
            version = read_attribute(f, "format_version")
            if version is None:
                return "corrupt", "no format_version attribute"
            if int(version) in _BEFORE:
                return "stale", f"format version {int(version)}, {_BEFORE[int(version)]}"
            if int(version) != CACHE_FORMAT_VERSION:
                return "corrupt", f"cache format version {int(version)}, expected {CACHE_FORMAT_VERSION}"
            if not bool(read_attribute(f, "complete")):
                return "corrupt", "not marked complete"
            missing = [n for n in ("frames", "offsets", "labels", "info", "fingerprint") if n not in f]
            if missing:
                return "corrupt", f"missing dataset(s) {missing}"
            stored = f["fingerprint"]
            if not isinstance(stored, h5py.Dataset) or stored.dtype.kind != "S":
                return "corrupt", f"fingerprint is {getattr(stored, 'dtype', 'not a dataset')}, not fixed-length text"
            if read_attribute(f, "key", "text") != key:
                try:
                    old = json.loads(bytes(stored[()]).decode("utf-8"))
                except (ValueError, TypeError):
                    old = {}
                return "stale", _what_changed(old, fingerprint)
            problem = layout_problem(f, int(fingerprint["n_samples"]))
            if problem:
                return "corrupt", problem
            try:
                f["labels"][()]
            except OSError:
                return "damaged", "labels fail their checksum"
            marked = damage_marker(path).exists()
            damage = _damaged_frames(f["frames"], verify or marked)
            if damage or marked:
                return "damaged", damage or "a reader found frames that fail their checksum"
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as err:
        return "corrupt", f"cannot be read as a frame cache ({type(err).__name__}: {err})"
    return "ok", ""


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s) or "_"


class _Salvage:
    """What a damaged cache file (of the same key) still holds: :meth:`sample` gives sample ``i``'s frames and label,
    or ``None`` where either fails its checksum. Its offsets passed theirs (``_inspect`` read them)."""

    def __init__(self, path: Path, n: int):
        self.file = h5py.File(path, "r")
        self.offsets = self.file["offsets"][()]
        self.labels, self.label_ok = np.zeros(n, np.int64), np.zeros(n, bool)
        for a in range(0, n, _LABEL_CHUNK):
            try:
                self.labels[a : a + _LABEL_CHUNK] = self.file["labels"][a : a + _LABEL_CHUNK]
                self.label_ok[a : a + _LABEL_CHUNK] = True
            except OSError:
                pass  # these samples are binned again

    def sample(self, i: int) -> tuple[np.ndarray, int] | None:
        if not self.label_ok[i]:
            return None
        try:
            return self.file["frames"][self.offsets[i] : self.offsets[i + 1]], int(self.labels[i])
        except OSError:
            return None

    def close(self) -> None:
        self.file.close()


class _Writer:
    """Appends samples to an open cache file, buffering up to ``_FLUSH_BYTES`` of frames."""

    def __init__(self, f: h5py.File, n: int, frame_shape: tuple[int, int, int], dtype: np.dtype, check):
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
        self._file, self._n = f, n
        self.offsets = np.zeros(n + 1, dtype=np.int64)
        self.labels = np.zeros(n, dtype=np.int64)
        self._frames: list[np.ndarray] = []
        self._info: list[bytes] = []  # every sample's info, UTF-8: written at ``finish`` as fixed-length text
        self._buffered = 0  # bytes of frames in the buffer
        self._written = 0  # frames already on disk
        self._check = check  # raises when the system has refused a write

    def add(self, i: int, frames: np.ndarray, label: int, info_json: str) -> None:
        self._frames.append(frames)
        self._info.append(info_json.encode("utf-8"))
        self.labels[i] = label
        self.offsets[i + 1] = self.offsets[i] + frames.shape[0]
        self._buffered += frames.nbytes
        if self._buffered >= _FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._frames:
            block = np.concatenate(self._frames)
            if len(block):
                end = self._written + len(block)
                self.frames.resize(end, axis=0)
                self.frames[self._written : end] = block
                self._written = end
        self._frames, self._buffered = [], 0
        self._check()

    def finish(self) -> None:
        """Flush the frames and write the samples' info, one fixed-length string each (as long as the longest)."""
        self.flush()
        width = max([len(s) for s in self._info] + [1])
        self._file.create_dataset("info", data=np.array(self._info, dtype=f"S{width}").reshape(self._n))
        self._check()


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
        (attributes, datasets, shapes, offsets and labels, and the first and last frame read back through their
        checksums; ``verify=True`` reads back every chunk, as does a file that a reader marked damaged).
        A damaged file (labels or frames failing their checksum) is repaired: written anew with the samples
        it still holds intact and the damaged ones binned again from ``dataset``. Otherwise it is rebuilt. Either
        way a log message names the file and the reason, and the file is replaced atomically; a write the
        system refuses (a full disk, no permission) is an ``OutputError`` naming the file, which leaves the old
        file as it was and no partial one. ``progress`` shows a tqdm bar while building. The frames returned
        bin again from ``dataset`` any sample whose chunk is damaged later (:class:`CachedFrames`).
        """
        if not isinstance(spec, FrameSpec):
            raise TypeError(f"spec must be a FrameSpec, got {type(spec).__name__}")
        if getattr(dataset, "transform", None) is not None:
            raise InputError(
                "the frame cache bins raw events and cannot key a transform: pass the data set "
                "without transform (the FrameSpec covers binning)"
            )
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        path = self.path_for(dataset, spec)
        fingerprint = _fingerprint(dataset, spec)
        key = _key(fingerprint)
        status, reason = _inspect(path, key, fingerprint, verify)
        if status == "ok":
            return CachedFrames(path, source=dataset)
        if status == "corrupt":
            log.warning("%s: corrupt frame cache (%s); rebuilding it", path, reason)
        elif status == "stale":
            log.info("%s: stale frame cache (%s); rebuilding it", path, reason)
        elif status == "missing":
            log.info("%s: no frame cache yet; building it", path)
        salvage = _Salvage(path, len(dataset)) if status == "damaged" else None
        try:
            rebinned = self._build(dataset, spec, path, fingerprint, key, progress, salvage)
        finally:
            if salvage is not None:
                salvage.close()
        if salvage is not None:
            log.warning(
                "%s: damaged frame cache (%s); repaired it, binning %d of %d samples again from the source",
                path,
                reason,
                rebinned,
                len(dataset),
            )
        damage_marker(path).unlink(missing_ok=True)
        return CachedFrames(path, source=dataset)

    def _build(
        self,
        dataset,
        spec: FrameSpec,
        path: Path,
        fingerprint: dict,
        key: str,
        progress: bool,
        salvage: _Salvage | None = None,
    ) -> int:
        """Write the cache file of ``dataset``, taking every sample that ``salvage`` still holds intact from it and
        binning the others; returns how many were binned."""
        remove_dead_temps(path.parent, path.name)
        n = len(dataset)
        sensor = SensorSize(*(int(v) for v in dataset.sensor_size))
        frame_shape = spec.output_shape(sensor)
        dtype = np.dtype(np.uint8 if spec.binary else np.uint16)
        binned = 0
        with atomic_file(path, "r+b") as fh, h5py.File(fh, "w") as f:
            writer = _Writer(f, n, frame_shape, dtype, fh.check)
            with tqdm(
                total=n,
                desc=f"binning {dataset.name}/{dataset.split}",
                unit="sample",
                disable=not progress,
                leave=False,
            ) as bar:
                for i in range(n):
                    kept = None if salvage is None else salvage.sample(i)
                    if kept is None:
                        frames, label, info_json = bin_sample(dataset, i, spec, dtype)
                        binned += 1
                    else:
                        (frames, label), info_json = kept, json.dumps(dataset.sample_info(i), sort_keys=True)
                    writer.add(i, frames, label, info_json)
                    bar.update()
            writer.finish()
            checked = {"chunks": (max(1, min(n, _LABEL_CHUNK)),), "fletcher32": True}
            f.create_dataset("offsets", data=writer.offsets, **checked)
            f.create_dataset("labels", data=writer.labels, **checked)
            f.create_dataset("fingerprint", data=fixed_text(json.dumps(fingerprint, sort_keys=True)))
            f.attrs.update(
                {
                    "format_version": CACHE_FORMAT_VERSION,
                    "key": fixed_text(key),
                    "spec": fixed_text(json.dumps(spec.to_dict())),
                    "dataset": fixed_text(str(dataset.name)),
                    "split": fixed_text(str(dataset.split)),
                    "sensor_size": list(sensor),
                    "classes": fixed_text(json.dumps([str(c) for c in dataset.classes])),
                    "n_samples": n,
                    "frame_shape": list(frame_shape),
                }
            )
            f.attrs["complete"] = True
        return binned
