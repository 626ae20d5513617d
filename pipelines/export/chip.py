"""``nsm export --target speck --check``: the written graph mapped onto DYNAP-CNN cores by sinabs' own chip backend
(``speck_mapping.py``, run as a script in this interpreter when sinabs imports here, else under the sinabs
interpreter ``--importer-python`` names)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from . import importers

MAPPING_SCRIPT = Path(__file__).with_name("speck_mapping.py")


@dataclass
class SpeckMapping:
    """What sinabs' DYNAP-CNN backend made of a graph (``speck_mapping.py``'s result), or why it did not run."""

    version: str = ""
    layers: int | None = None
    cores: dict | None = None
    memory: dict | None = None
    refused: str | None = None
    out_of_range: list | None = None
    config: str = ""
    missing: str = ""

    @property
    def ok(self) -> bool:
        """Mapped onto distinct cores, every weight, bias and threshold an integer within the chip's ranges."""
        return not self.missing and self.cores is not None and self.out_of_range == []

    def __str__(self) -> str:
        if self.missing:
            return f"DYNAP-CNN mapping NOT RUN: {self.missing}"
        name = f"sinabs {self.version}".strip()
        if self.refused:
            return f"{name} refused the network for DYNAP-CNN: {self.refused[:400]}"
        cores = ", ".join(f"{k}->{v}" for k, v in (self.cores or {}).items())
        ranges = (
            "the exported integers within the chip's ranges, passed as they are"
            if self.out_of_range == []
            else "OUT OF the chip's ranges: " + "; ".join(self.out_of_range or ["not checked"])
        )
        return (
            f"{name} mapped {self.layers} layers onto DYNAP-CNN cores (layer->core {cores}); {ranges}; chip "
            f"configuration (make_config): {self.config}"
        )


def map_onto_speck(path, python: str | None = None) -> SpeckMapping:
    """Run ``speck_mapping.py`` on the NIR file at ``path``: here when sinabs imports in this interpreter, else under
    ``python``; a mapping that could not run says why (``missing``)."""
    if importers.toolchain_version("sinabs") is not None:
        python = sys.executable
    elif python is None:
        return SpeckMapping(
            missing=f"sinabs is not installed in this environment ({sys.executable}); pass --importer-python "
            "PYTHON of an environment that has it (make check-targets builds one)"
        )
    try:
        proc = subprocess.run([python, str(MAPPING_SCRIPT), str(path)], capture_output=True, text=True)
    except OSError as err:
        return SpeckMapping(missing=f"--importer-python {python} could not be started: {err.strerror or err}")
    lines = proc.stdout.splitlines()
    results = [ln.split(":", 1)[1] for ln in lines if ln.startswith("result:")]
    if proc.returncode != 0 or not results:
        why = (proc.stderr or proc.stdout).strip()[-800:]
        return SpeckMapping(missing=f"{python} could not run the mapping: {why}")
    versions = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("version:")]
    try:
        fields = json.loads(results[-1])
    except ValueError as err:
        return SpeckMapping(missing=f"{python} wrote an unreadable mapping result ({err})")
    known = {k: fields.get(k) for k in ("layers", "cores", "memory", "refused", "out_of_range")}
    return SpeckMapping(version=versions[-1] if versions else "", config=str(fields.get("config", "")), **known)
