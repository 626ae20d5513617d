"""What the data sets share: :class:`DatasetNotFoundError` and :class:`EventDataset`, the indexing and
``transform`` handling behind the interface the package docstring (``events.datasets``) states."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from events.errors import MissingInputError
from events.types import SensorSize


class DatasetNotFoundError(MissingInputError):
    """The data set is missing or incomplete; the message names the layout and the source."""


class EventDataset:
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
