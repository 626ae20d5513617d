"""Offline event-camera data sets: index -> (events, label). Nothing is ever downloaded.

Both classes share one interface (``base.py``): ``ds[i] -> (events, label)`` (``EVENT_DTYPE`` events, after
``transform`` when one is given), ``len(ds)``, ``ds.sensor_size``, ``ds.classes`` (names),
``ds.name``, ``ds.split`` (``"train"``/``"test"``), ``ds.source_files()`` (every file the
samples come from; caches key on their size and mtime) and ``ds.sample_info(i)`` (a dict).
Sample order is sorted and deterministic. A missing or incomplete data set raises
:class:`DatasetNotFoundError`, naming the expected layout and where to obtain the data.

Every file a data set opens (samples, archives, label CSVs, trial lists) must be a regular file:
a directory, FIFO, device, socket or symbolic-link loop in its place is refused with
``EventFormatError`` before anything opens it (``events.formats.check_regular_file``).

The modules: ``nmnist.py`` (``NMNIST``, its zip members), ``dvsgesture.py`` (``DVSGesture``),
``gesture_labels.py`` (DVS Gesture's classes and label CSVs), ``base.py`` (the shared interface).
"""

from events.datasets.base import DatasetNotFoundError
from events.datasets.dvsgesture import DVSGESTURE_URL, DVSGesture
from events.datasets.gesture_labels import (
    GESTURE_CLASSES,
    LABEL_MARGIN_US,
    LABELS_HEADER,
    LabelRow,
    check_label_span,
    label_rows,
    parse_labels,
)
from events.datasets.nmnist import MAX_MEMBER_BYTES, MEMBER_READ_BYTES, NMNIST, NMNIST_URL, read_member

__all__ = [
    "DVSGESTURE_URL",
    "GESTURE_CLASSES",
    "LABELS_HEADER",
    "LABEL_MARGIN_US",
    "MAX_MEMBER_BYTES",
    "MEMBER_READ_BYTES",
    "NMNIST",
    "NMNIST_URL",
    "DVSGesture",
    "DatasetNotFoundError",
    "LabelRow",
    "check_label_span",
    "label_rows",
    "parse_labels",
    "read_member",
]
