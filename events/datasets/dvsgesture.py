"""IBM DVS Gesture (``DVSGesture``; https://research.ibm.com/interactive/dvsgesture/)

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

import os
import re
from pathlib import Path

from events.datasets.base import DatasetNotFoundError, EventDataset
from events.datasets.gesture_labels import GESTURE_CLASSES, LabelRow, check_label_span, label_rows
from events.formats import check_regular_file
from events.formats.aedat3 import Aedat3Reader, PacketIndex, read_time_range
from events.formats.gesture_npy import GestureNpyReader
from events.types import EventFormatError, SensorSize

DVSGESTURE_URL = "https://research.ibm.com/interactive/dvsgesture/"
_RECORDING = re.compile(r"^user(\d+)_(.+)\.aedat$")
_NPY_FOLDER = re.compile(r"^user(\d+)_(.+)$")


class DVSGesture(EventDataset):
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
