"""N-MNIST (``NMNIST``; https://www.garrickorchard.com/datasets/n-mnist)

``root/Train/<digit>/<id>.bin`` and ``root/Test/<digit>/<id>.bin``, or the released archives
``root/Train.zip`` / ``root/Test.zip`` read in place (members ``.../<digit>/<id>.bin``, no
extraction). Label = digit. Order: by digit, then file name. An archive member is read only
when it is stored or deflated (what zip tools write by default), unencrypted, declares at most
``MAX_MEMBER_BYTES`` uncompressed, and inflates to exactly its declared size with a matching
CRC-32; it is inflated in ``MEMBER_READ_BYTES`` pieces, so a member that inflates beyond its
declared size is refused after reading one byte more, never read whole.
"""

from __future__ import annotations

import copy
import os
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from events.datasets.base import DatasetNotFoundError, EventDataset
from events.formats import check_regular_file
from events.formats.nmnist import SENSOR_SIZE as NMNIST_SENSOR
from events.formats.nmnist import NMNISTReader, decode_nmnist_bytes
from events.types import EventFormatError

NMNIST_URL = "https://www.garrickorchard.com/datasets/n-mnist"
MAX_MEMBER_BYTES = 64 << 20  # an N-MNIST sample is tens of kB; anything near this is not one
MEMBER_READ_BYTES = 1 << 20  # archive members are inflated this much at a time
_ZIP_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}


class NMNIST(EventDataset):
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
