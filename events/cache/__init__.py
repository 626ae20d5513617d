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
* ``labels``: int64 ``(n_samples,)``. Offsets and labels are chunked (1024 a chunk) with fletcher32 checksums too
  (format version 2; a version 1 file, whose labels have none, is stale and rebuilt).
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
that process is gone). A write the system refuses (a full disk, ...) is an ``events.atomic.OutputError``
naming the cache file: h5py writes through ``atomic_write(path, "r+b")``, so it never sees the failed write.
A damaged file (labels or frames failing their checksum) is repaired, the damaged samples binned again from the
data set; a sample whose frames fail their checksum while being read is binned again at once (``CachedFrames``).
Messages go through :mod:`logging` (logger ``events.cache``): a missing or stale cache is reported at INFO, a
corrupt or damaged one, and each sample binned again on reading, at WARNING, each naming the file and the reason.
"""

from .build import FrameCache
from .read import CACHE_FORMAT_VERSION, CachedClips, CachedFrames, CacheError

__all__ = ["CACHE_FORMAT_VERSION", "CacheError", "CachedClips", "CachedFrames", "FrameCache"]
