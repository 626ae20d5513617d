"""Offline event-camera data sets: index -> (events, label). Nothing is ever downloaded.

Both classes share one interface: ``ds[i] -> (events, label)`` (``EVENT_DTYPE`` events, after
``transform`` when one is given), ``len(ds)``, ``ds.sensor_size``, ``ds.classes`` (names),
``ds.name``, ``ds.split`` (``"train"``/``"test"``), ``ds.source_files()`` (every file the
samples come from; caches key on their size and mtime) and ``ds.sample_info(i)`` (a dict).
Sample order is sorted and deterministic. A missing or incomplete data set raises
:class:`DatasetNotFoundError`, naming the expected layout and where to obtain the data.

Every file a data set opens (samples, archives, label CSVs, trial lists) must be a regular file:
a directory, FIFO, device, socket or symbolic-link loop in its place is refused with
``EventFormatError`` before anything opens it (``events.formats.check_regular_file``).

N-MNIST (``NMNIST``; https://www.garrickorchard.com/datasets/n-mnist)
    ``root/Train/<digit>/<id>.bin`` and ``root/Test/<digit>/<id>.bin``, or the released archives
    ``root/Train.zip`` / ``root/Test.zip`` read in place (members ``.../<digit>/<id>.bin``, no
    extraction). Label = digit. Order: by digit, then file name. An archive member is read only
    when it is stored or deflated (what zip tools write by default), unencrypted, declares at most
    ``MAX_MEMBER_BYTES`` uncompressed, and inflates to exactly its declared size with a matching
    CRC-32; it is inflated in ``MEMBER_READ_BYTES`` pieces, so a member that inflates beyond its
    declared size is refused after reading one byte more, never read whole.

IBM DVS Gesture (``DVSGesture``; https://research.ibm.com/interactive/dvsgesture/)
    Original release (``root`` or ``root/DvsGesture``): ``userNN_<lighting>.aedat`` (AEDAT 3.1),
    ``userNN_<lighting>_labels.csv`` (header ``class,startTime_usec,endTime_usec``, class 1..11,
    times in the recording's µs), and ``trials_to_train.txt`` / ``trials_to_test.txt`` listing the
    ``.aedat`` names of each split: bare file names in that folder (an entry holding ``/``, ``\\``,
    ``..`` or a control character, or naming ``.`` or an absolute path, is refused, naming the list
    file and line, so nothing outside the data folder is read through a list; symbolic links
    placed in the folder itself are followed). One sample per
    labelled gesture: the events with
    ``start <= t < end`` (timestamps as recorded, not shifted), label ``class - 1``. Recordings
    are ordered by (user, lighting), gestures as listed in the CSV. A gesture is read through
    the recording's packet index (built on first use, kept in memory, a few bytes a packet), so
    only the packets overlapping it are decoded.

    Label anomalies, handled deliberately:

    * repeated rows (user26_fluorescent's CSV lists gestures twice): an exact duplicate
      ``(class, start, end)`` row is dropped, the first kept, and one ``UserWarning`` per file
      says how many were dropped;
    * overlapping intervals (user22_led): both gestures are kept as labelled; events in the
      overlap belong to both samples, since the labels give no basis to split them.

    A malformed CSV (header, field count, non-integer, class outside 1..11, negative start,
    ``end <= start``, a time beyond int64) or trials file raises ``EventFormatError`` naming the
    file, the line and its byte offset. Each interval must also overlap its recording's time span
    ``[first event, last event + 1)`` and reach at most ``LABEL_MARGIN_US`` (1 s) beyond it: this is
    checked against the packet index when the recording is first read (before any of its samples is
    returned), and any other row raises ``EventFormatError`` naming the CSV, the line and the
    recording's span, so an interval is never binned into a sample of empty frames or into an
    allocation the recording cannot fill.

    tonic's preprocessed layout is used when the original files are absent:
    ``root/ibmGestureTrain/userNN_<lighting>/<class>.npy`` (and ``ibmGestureTest``), class
    0..10 in the file name; see :mod:`events.formats.gesture_npy`. ``sample_info`` then has
    ``start_us``/``end_us`` = None (the cut points are not stored).
"""

from __future__ import annotations

import copy
import os
import re
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import numpy as np

from events.formats import check_regular_file
from events.formats.aedat3 import Aedat3Reader, PacketIndex, read_time_range
from events.formats.gesture_npy import GestureNpyReader
from events.formats.nmnist import SENSOR_SIZE as NMNIST_SENSOR
from events.formats.nmnist import NMNISTReader, decode_nmnist_bytes
from events.types import EventFormatError, SensorSize

NMNIST_URL = "https://www.garrickorchard.com/datasets/n-mnist"
DVSGESTURE_URL = "https://research.ibm.com/interactive/dvsgesture/"
GESTURE_CLASSES = [
    "hand_clapping",
    "right_hand_wave",
    "left_hand_wave",
    "right_arm_clockwise",
    "right_arm_counter_clockwise",
    "left_arm_clockwise",
    "left_arm_counter_clockwise",
    "arm_roll",
    "air_drums",
    "air_guitar",
    "other_gestures",
]
LABELS_HEADER = ("class", "startTime_usec", "endTime_usec")
_RECORDING = re.compile(r"^user(\d+)_(.+)\.aedat$")
_NPY_FOLDER = re.compile(r"^user(\d+)_(.+)$")
_INT = re.compile(r"^[+-]?\d+$")
_INT64_MAX = (1 << 63) - 1
MAX_MEMBER_BYTES = 64 << 20  # an N-MNIST sample is tens of kB; anything near this is not one
MEMBER_READ_BYTES = 1 << 20  # archive members are inflated this much at a time
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


class DatasetNotFoundError(FileNotFoundError):
    """The data set is missing or incomplete; the message names the layout and the source."""


class _EventDataset:
    """Shared indexing and ``transform`` handling; subclasses implement ``_load`` and friends."""

    name = ""
    sensor_size: SensorSize
    classes: list[str]

    def __init__(self, root, train: bool, transform):
        self.root = Path(root)
        self.train = bool(train)
        self.split = "train" if self.train else "test"
        self.transform = transform

    def __len__(self) -> int:
        return len(self._samples)

    def _index(self, i) -> int:
        n = len(self._samples)
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"sample index must be an integer, got {type(i).__name__}")
        j = int(i) + n if i < 0 else int(i)
        if not 0 <= j < n:
            raise IndexError(f"sample {i} out of range for {n} samples")
        return j

    def __getitem__(self, i):
        j = self._index(i)
        events, label = self._load(j)
        if self.transform is not None:
            events = self.transform(events)
        return events, label

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, samples={len(self)})"


class NMNIST(_EventDataset):
    """N-MNIST from ``root`` (folders or the released zips); see the module docstring."""

    name = "nmnist"
    sensor_size = NMNIST_SENSOR
    classes = [str(d) for d in range(10)]

    def __init__(self, root, train: bool = True, transform=None):
        super().__init__(root, train, transform)
        folder = "Train" if self.train else "Test"
        self._zip_path: Path | None = None
        self._zip: zipfile.ZipFile | None = None
        self._zip_pid = None
        base = self.root / folder
        if base.is_dir():
            self._samples = [
                (check_regular_file(p, "N-MNIST sample"), int(d.name))
                for d in sorted(base.iterdir())
                if d.is_dir() and d.name in self.classes
                for p in sorted(d.glob("*.bin"))
            ]
            where = str(base)
        else:
            zips = [self.root / f"{folder}.zip", self.root / f"{folder.lower()}.zip"]
            self._zip_path = next((z for z in zips if os.path.lexists(z)), None)
            if self._zip_path is None:
                raise DatasetNotFoundError(self._missing(f"neither {base}/ nor {zips[0]} exists"))
            check_regular_file(self._zip_path, "N-MNIST archive")
            self._samples = self._zip_members()
            where = str(self._zip_path)
        if not self._samples:
            raise DatasetNotFoundError(self._missing(f"{where} holds no <digit>/<id>.bin samples"))

    def _missing(self, what: str) -> str:
        folder = "Train" if self.train else "Test"
        return (
            f"N-MNIST {self.split} split not found: {what}. Expected {self.root}/{folder}/<digit>/<id>.bin "
            f"(digits 0-9) or the released archive {self.root}/{folder}.zip. N-MNIST can be obtained "
            f"from {NMNIST_URL} (download it yourself; nothing is fetched)."
        )

    def _zip_members(self):
        samples = []
        for name in self._open_zip().namelist():
            parts = PurePosixPath(name).parts
            if (
                len(parts) >= 2
                and parts[-1].endswith(".bin")
                and parts[-2] in self.classes
                and not parts[-1].startswith("._")
                and "__MACOSX" not in parts
            ):
                samples.append((name, int(parts[-2])))
        return sorted(samples, key=lambda s: (s[1], s[0]))

    def _open_zip(self) -> zipfile.ZipFile:
        # One handle per process: a forked DataLoader worker must not share the parent's offset.
        if self._zip is None or self._zip_pid != os.getpid():
            check_regular_file(self._zip_path, "N-MNIST archive")
            try:
                self._zip = zipfile.ZipFile(self._zip_path)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
                raise EventFormatError(f"not a readable zip archive: {err}", self._zip_path) from None
            self._zip_pid = os.getpid()
        return self._zip

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_zip"], state["_zip_pid"] = None, None
        return state

    def _load(self, j: int):
        src, label = self._samples[j]
        if self._zip_path is None:
            with NMNISTReader(src) as r:
                return r.read().events, label
        name = f"{self._zip_path}:{src}"
        return decode_nmnist_bytes(read_member(self._open_zip(), src, name), name), label

    def source_files(self) -> list[Path]:
        return [self._zip_path] if self._zip_path is not None else [p for p, _ in self._samples]

    def sample_info(self, i) -> dict:
        src, label = self._samples[self._index(i)]
        if self._zip_path is None:
            return {"file": str(src), "label": label}
        return {"file": f"{self._zip_path}:{src}", "archive": str(self._zip_path), "member": src, "label": label}


def read_member(zf: zipfile.ZipFile, member: str, name: str) -> bytes:
    """The bytes of archive ``member`` (``name`` in errors), refused unless it checks out (module docstring).

    The size cap is checked on the declared size before anything is read; the member is inflated in
    ``MEMBER_READ_BYTES`` pieces with zipfile told to allow one byte beyond the declared size, so a
    member that inflates further is caught after that byte, and the CRC-32 is checked here.
    """
    try:
        info = zf.getinfo(member)
    except KeyError:
        raise EventFormatError("archive member is gone (the archive changed since it was listed)", name) from None
    declared = info.file_size
    if declared > MAX_MEMBER_BYTES:
        raise EventFormatError(
            f"archive member declares {declared} bytes uncompressed, more than the {MAX_MEMBER_BYTES}-byte "
            "limit for one sample",
            name,
        )
    if info.flag_bits & 0x1:
        raise EventFormatError("archive member is encrypted; the data set's archives are not", name)
    if info.compress_type not in _ZIP_METHODS:
        raise EventFormatError(
            f"archive member uses compression method {info.compress_type}; only stored (0) and deflated (8) "
            "members are read",
            name,
        )
    probe = copy.copy(info)
    probe.file_size = declared + 1  # let one byte more through, to tell a member that inflates further
    del probe.CRC  # checked below, over exactly what was read
    parts, total, crc = [], 0, 0
    try:
        with zf.open(probe) as fh:
            while total <= declared:
                piece = fh.read(min(MEMBER_READ_BYTES, declared + 1 - total))
                if not piece:
                    break
                parts.append(piece)
                total += len(piece)
                crc = zlib.crc32(piece, crc)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError, ValueError) as err:
        raise EventFormatError(f"cannot read archive member: {type(err).__name__}: {err}", name) from None
    if total > declared:
        raise EventFormatError(
            f"archive member inflates beyond its declared {declared} bytes; refused (read stopped there)", name
        )
    if total < declared:
        raise EventFormatError(f"archive member ends after {total} of its declared {declared} bytes", name)
    if crc != info.CRC:
        raise EventFormatError(
            f"archive member fails its CRC-32 check (stored {info.CRC:08x}, computed {crc:08x})", name
        )
    return b"".join(parts)


class DVSGesture(_EventDataset):
    """IBM DVS Gesture from the original AEDAT release or tonic's ``.npy`` layout; see the module
    docstring."""

    name = "dvsgesture"
    sensor_size = SensorSize(128, 128, 2)
    classes = list(GESTURE_CLASSES)

    def __init__(self, root, train: bool = True, transform=None):
        super().__init__(root, train, transform)
        trials = "trials_to_train.txt" if self.train else "trials_to_test.txt"
        npy_dir = "ibmGestureTrain" if self.train else "ibmGestureTest"
        self._indexes: dict[Path, PacketIndex] = {}
        base = next((b for b in (self.root, self.root / "DvsGesture") if os.path.lexists(b / trials)), None)
        if base is not None:
            self.layout = "aedat"
            self._trials_file = check_regular_file(base / trials, "trial list")
            self._load_original(base)
        elif (self.root / npy_dir).is_dir():
            self.layout = "npy"
            self._load_npy(self.root / npy_dir)
        else:
            raise DatasetNotFoundError(self._missing(f"neither {self.root / trials} nor {self.root / npy_dir}/ exists"))
        if not self._samples:
            raise DatasetNotFoundError(self._missing("the split lists no labelled gestures"))

    def _missing(self, what: str) -> str:
        trials = "trials_to_train.txt" if self.train else "trials_to_test.txt"
        npy_dir = "ibmGestureTrain" if self.train else "ibmGestureTest"
        return (
            f"DVS Gesture {self.split} split not found or incomplete: {what}. Expected the original "
            f"release in {self.root} (or {self.root}/DvsGesture): {trials} listing userNN_<lighting>.aedat "
            f"recordings, each beside its userNN_<lighting>_labels.csv; or tonic's preprocessed layout "
            f"{self.root}/{npy_dir}/userNN_<lighting>/<class>.npy. DVS Gesture can be obtained from "
            f"{DVSGESTURE_URL} (download it yourself; nothing is fetched)."
        )

    # --- original release -------------------------------------------------------------
    def _load_original(self, base: Path) -> None:
        recordings = []
        raw = self._trials_file.read_bytes()
        offset = 0
        for lineno, line in enumerate(raw.splitlines(keepends=True), 1):
            name = line.decode("utf-8", "replace").strip()
            if name:
                if not _bare_name(name):
                    raise EventFormatError(
                        f"line {lineno}: {name[:60]!r} is not a bare file name (an entry may not hold '/', "
                        f"'\\', '..' or control characters; recordings are read from {base} only)",
                        self._trials_file,
                        offset,
                    )
                m = _RECORDING.match(name)
                if m is None:
                    raise EventFormatError(
                        f"line {lineno}: {name[:60]!r} is not a userNN_<lighting>.aedat file name",
                        self._trials_file,
                        offset,
                    )
                recordings.append((int(m.group(1)), m.group(2), name))
            offset += len(line)
        recordings = sorted(set(recordings))
        missing = [str(base / n) for _, _, n in recordings if not os.path.lexists(base / n)]
        missing += [
            str(base / (n[:-6] + "_labels.csv"))
            for _, _, n in recordings
            if not os.path.lexists(base / (n[:-6] + "_labels.csv"))
        ]
        if missing:
            raise DatasetNotFoundError(
                self._missing(f"{len(missing)} listed file(s) missing, e.g. {', '.join(missing[:3])}")
            )
        self._recordings = []
        self._samples = []
        self._label_rows: list[list[LabelRow]] = []  # per recording, for the check against its time span
        for user, lighting, name in recordings:
            aedat, labels = base / name, base / (name[:-6] + "_labels.csv")
            rec = len(self._recordings)
            self._recordings.append((aedat, labels, user, lighting))
            rows = label_rows(labels)
            self._label_rows.append(rows)
            for row in rows:
                self._samples.append((rec, row.cls - 1, row.start, row.end))

    def _recording_index(self, rec: int) -> PacketIndex:
        aedat, labels = self._recordings[rec][:2]
        st = check_regular_file(aedat, "recording").stat()
        idx = self._indexes.get(aedat)
        if idx is None or (idx.file_size, idx.mtime_ns) != (st.st_size, st.st_mtime_ns):
            reader = Aedat3Reader(aedat)
            if reader.sensor_size != self.sensor_size:
                raise EventFormatError(
                    f"recording is {reader.sensor_size.width}x{reader.sensor_size.height}, DVS Gesture is 128x128",
                    aedat,
                )
            idx = reader.packet_index()
            check_label_span(self._label_rows[rec], labels, idx, aedat)
            self._indexes[aedat] = idx
        return idx

    # --- tonic's preprocessed layout ---------------------------------------------------
    def _load_npy(self, folder: Path) -> None:
        self._recordings = None
        samples = []
        for d in folder.iterdir():
            m = _NPY_FOLDER.match(d.name)
            if not (d.is_dir() and m):
                continue
            for f in d.glob("*.npy"):
                if not re.fullmatch(r"\d+", f.stem) or not 0 <= int(f.stem) < len(GESTURE_CLASSES):
                    raise EventFormatError(f"file name must be a class index 0..{len(GESTURE_CLASSES) - 1}.npy", f)
                samples.append((int(m.group(1)), m.group(2), int(f.stem), f))
        self._samples = sorted(samples)

    # --- common ----------------------------------------------------------------------
    def _load(self, j: int):
        if self.layout == "npy":
            _, _, label, path = self._samples[j]
            with GestureNpyReader(path) as r:
                return r.read().events, label
        rec, label, start, end = self._samples[j]
        aedat = self._recordings[rec][0]
        return read_time_range(aedat, start, end, self._recording_index(rec)), label

    def source_files(self) -> list[Path]:
        if self.layout == "npy":
            return [s[3] for s in self._samples]
        files = [self._trials_file]
        for aedat, labels, _, _ in self._recordings:
            files += [aedat, labels]
        return files

    def sample_info(self, i) -> dict:
        j = self._index(i)
        if self.layout == "npy":
            user, lighting, label, path = self._samples[j]
            return {
                "user": user,
                "lighting": lighting,
                "file": str(path),
                "start_us": None,
                "end_us": None,
                "label": label,
                "class_name": GESTURE_CLASSES[label],
            }
        rec, label, start, end = self._samples[j]
        aedat, labels, user, lighting = self._recordings[rec]
        return {
            "user": user,
            "lighting": lighting,
            "file": str(aedat),
            "labels_file": str(labels),
            "start_us": start,
            "end_us": end,
            "label": label,
            "class_name": GESTURE_CLASSES[label],
        }


class LabelRow(NamedTuple):
    """One row of a labels CSV: class 1..11, ``[start, end)`` in µs, and where it stands in the file."""

    cls: int
    start: int
    end: int
    line: int
    offset: int


def parse_labels(path) -> list[tuple[int, int, int]]:
    """Parse a DVS Gesture ``_labels.csv`` into ``(class 1..11, start_us, end_us)`` rows in file order.

    Exact duplicate rows are dropped (first kept) with one ``UserWarning`` for the file;
    overlapping intervals are kept. Malformed content (including times beyond int64) raises
    ``EventFormatError`` with the line number in the message and the line's byte offset. The rows
    are not checked against a recording here (see :func:`check_label_span`).
    """
    return [(r.cls, r.start, r.end) for r in label_rows(path, stacklevel=3)]


LABEL_MARGIN_US = 1_000_000  # how far a gesture's interval may reach past the recording's first or last event


def check_label_span(rows: list[LabelRow], labels, index: PacketIndex, recording) -> None:
    """``EventFormatError`` naming ``labels`` and the line unless every row's interval overlaps the recording's
    time span ``[first event, last event + 1)`` (from its packet ``index``) and reaches at most
    ``LABEL_MARGIN_US`` beyond it (a sensor emits nothing while the scene is still, so a hand-made label may end
    a little after the last event; bins there are empty because no events happened, not because data is lost)."""
    if index.n_events == 0:
        first, end = None, None
    else:
        first, end = int(index.t_min.min()), int(index.t_max.max()) + 1
    for row in rows:
        if (
            first is None
            or row.start >= end
            or row.end <= first
            or row.start < first - LABEL_MARGIN_US
            or row.end > end + LABEL_MARGIN_US
        ):
            span = "has no events" if first is None else f"spans [{first}, {end}) µs"
            raise EventFormatError(
                f"line {row.line}: interval [{row.start}, {row.end}) µs does not lie inside its recording "
                f"{Path(recording).name}, which {span} (a label may reach {LABEL_MARGIN_US} µs beyond it)",
                labels,
                row.offset,
            )


def label_rows(path, stacklevel: int = 2) -> list[LabelRow]:
    """:func:`parse_labels` with each row's line number and byte offset."""
    path = check_regular_file(path, "labels file")
    raw = path.read_bytes()
    rows, seen, dups = [], set(), 0
    offset, header_seen = 0, False
    for lineno, line in enumerate(raw.splitlines(keepends=True), 1):
        at = offset
        offset += len(line)
        try:
            text = line.decode("utf-8-sig" if lineno == 1 else "utf-8").strip()
        except UnicodeDecodeError:
            raise EventFormatError(f"line {lineno}: not UTF-8 text", path, at) from None
        if not text:
            continue
        fields = [f.strip() for f in text.split(",")]
        if not header_seen:
            if tuple(fields) != LABELS_HEADER:
                raise EventFormatError(
                    f"line {lineno}: header is {text[:60]!r}, expected {','.join(LABELS_HEADER)!r}", path, at
                )
            header_seen = True
            continue
        if len(fields) != 3 or not all(_INT.match(f) for f in fields):
            raise EventFormatError(
                f"line {lineno}: expected three integers class,start,end, got {text[:60]!r}", path, at
            )
        cls, start, end = (int(f) for f in fields)
        if not 1 <= cls <= len(GESTURE_CLASSES):
            raise EventFormatError(f"line {lineno}: class {cls} outside 1..{len(GESTURE_CLASSES)}", path, at)
        if start < 0 or end <= start:
            raise EventFormatError(f"line {lineno}: interval [{start}, {end}) is empty or negative", path, at)
        if end > _INT64_MAX:
            raise EventFormatError(f"line {lineno}: end time {end} is beyond the int64 µs range", path, at)
        if (cls, start, end) in seen:
            dups += 1
            continue
        seen.add((cls, start, end))
        rows.append(LabelRow(cls, start, end, lineno, at))
    if not header_seen:
        raise EventFormatError(f"empty labels file (expected header {','.join(LABELS_HEADER)!r})", path, 0)
    if dups:
        warnings.warn(
            f"{path}: {dups} duplicate label row(s) dropped (first of each kept)", UserWarning, stacklevel=stacklevel
        )
    return rows


def _bare_name(name: str) -> bool:
    """Whether a trial-list entry is a plain file name: no separator, no ``..``, nothing unprintable."""
    return (
        "/" not in name
        and "\\" not in name
        and ".." not in name
        and name != "."
        and not os.path.isabs(name)
        and all(ch.isprintable() for ch in name)
    )
