"""``nsm export --check``: run a written graph through its target's own NIR importer (``importers``: norse,
snnTorch, sinabs, SpikingJelly, Spyx; in this interpreter, or in another one that holds the toolchain) and compare
it with the PyTorch network's deterministic logits on seeded random event frames."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

from events.atomic import file_kind
from events.errors import InputError, MissingInputError
from nsm.sampling import using_mode

from . import importers
from .graph import as_float64
from .metadata import TAU, read_nir

MAX_CHECK_SAMPLES = 100_000
"""The most random inputs ``--check-samples`` may ask for (parsed), whatever their size."""
CHECK_INPUT_BYTES = 512 << 20
"""The most memory the check inputs may take as float32 frames (the spikes and an importer's copy take as much
again each): :func:`max_check_samples` lowers the number for large inputs."""


def max_check_samples(input_shape) -> int:
    """The most check inputs of ``input_shape`` (C, H, W): ``MAX_CHECK_SAMPLES``, fewer where that many float32
    frames would take more than ``CHECK_INPUT_BYTES``."""
    return max(1, min(MAX_CHECK_SAMPLES, CHECK_INPUT_BYTES // (4 * math.prod(int(s) for s in input_shape))))


def check_samples_fit(n: int, input_shape) -> int:
    """``n`` (``--check-samples``) once ``n`` inputs of ``input_shape`` fit (:func:`max_check_samples`), checked
    before any is allocated; else ``ValueError`` naming the option, the memory they would take and the most that
    fit."""
    most = max_check_samples(input_shape)
    if n > most:
        need = n * 4 * math.prod(int(s) for s in input_shape) / 2**30
        raise InputError(
            f"--check-samples {n}: that many random inputs of shape {tuple(input_shape)} would take {need:.3g} GiB "
            f"(float32 frames); at most {most} fit in the {CHECK_INPUT_BYTES >> 20} MiB allowed for them"
        )
    return n


def check_importer_python(python: str) -> str:
    """``python`` (``--importer-python``), once it can be run, checked before the export does any work: a path (with
    a ``/``) must be an executable regular file (links followed), a bare name an executable on ``PATH``
    (``shutil.which``). ``FileNotFoundError`` naming the option when there is no such file or program;
    ``ValueError`` naming it when the path is a directory or another file that is not a regular one, or not
    executable by this user."""
    if os.sep not in python:
        if shutil.which(python) is None:
            raise MissingInputError(f"--importer-python {python}: no such program on PATH")
        return python
    if not os.path.exists(python):
        dangling = " (a dangling symbolic link)" if os.path.islink(python) else ""
        raise MissingInputError(f"--importer-python {python}: no such file{dangling}")
    if not os.path.isfile(python):
        raise InputError(f"--importer-python {python}: it is {file_kind(os.stat(python).st_mode)}, not an interpreter")
    if not os.access(python, os.X_OK):
        raise InputError(f"--importer-python {python}: not executable (give a Python interpreter, e.g. ENV/bin/python)")
    return python


def check_inputs(input_shape, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` random event-count frames (n, C, H, W), seeded, with varied event densities.

    Sample i draws Poisson counts with mean rate lambda_i log-spaced over [0.01, 2], so the fraction of
    active bins 1 - exp(-lambda) ranges from about 1 % to 86 %. They stand
    in for recorded inputs (the check needs no data set) and exercise every unit with many spike patterns.
    """
    g = torch.Generator().manual_seed(seed)
    rates = torch.logspace(math.log10(0.01), math.log10(2.0), n)[torch.randperm(n, generator=g)]
    shape = (n, *(int(s) for s in input_shape))
    return torch.poisson(rates.reshape(-1, 1, 1, 1).expand(shape).contiguous(), generator=g)


def deterministic_logits(model: nn.Module, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Float64 logits of the deterministic (mean-field) network, ``nsm.using_mode(model, "deterministic")``."""
    model = as_float64(model).eval()
    with torch.inference_mode(), using_mode(model, "deterministic"):
        return torch.cat([model(x[i : i + batch].double()) for i in range(0, x.shape[0], batch)])


def norse_module(graph: nir.NIRGraph) -> nn.Module:
    """The graph imported by ``norse.torch.from_nir`` with dt = TAU (one step = one memoryless pass)."""
    import warnings

    from norse.torch import from_nir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch.load's deprecation notice
        return from_nir(graph, dt=TAU).double()


def norse_logits(graph: nir.NIRGraph, x: torch.Tensor) -> torch.Tensor:
    """Run ``x`` (counts or spikes, (B, C, H, W)) through norse's import, one unbatched sample at a time."""
    module = norse_module(graph)
    spikes = (x > 0).double()
    outs = []
    with torch.no_grad():
        for s in spikes:
            out, _ = module(s)
            outs.append(out.reshape(-1))
    return torch.stack(outs)


@dataclass
class CheckResult:
    """Agreement of an imported graph with a reference on ``n`` inputs (``exact``: integer graphs, equality)."""

    n: int
    top_class_agree: int
    max_abs_logit_diff: float
    logits_close: bool
    toolchain: str = "norse"
    version: str = ""
    exact: bool = False
    missing: str = ""
    mapping: object = None
    """For ``--target speck``: the ``chip.SpeckMapping`` of the same file, which must be ok too."""

    @property
    def ok(self) -> bool:
        mapped = self.mapping is None or self.mapping.ok
        return not self.missing and self.top_class_agree == self.n and self.logits_close and mapped

    def __str__(self) -> str:
        if self.missing:
            return f"{self.toolchain} check NOT RUN: {self.missing} -> not passed"
        name = f"{self.toolchain} {self.version}".strip()
        rule = "exactly equal" if self.exact else "within rtol = atol = 1e-4"
        mapped = "" if self.mapping is None else f"; DYNAP-CNN mapping {'ok' if self.mapping.ok else 'NOT passed'}"
        return (
            f"{name} check on {self.n} inputs: top class equal on {self.top_class_agree}/{self.n}, "
            f"max |logit difference| {self.max_abs_logit_diff:.3g} (logits {rule}: "
            f"{'yes' if self.logits_close else 'no'}){mapped} -> {'OK' if self.ok else 'FAILED'}"
        )


def compare_logits(
    got: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-4, exact: bool = False
) -> CheckResult:
    """Top class equality per input and ``allclose(got, ref, rtol, atol)`` (``exact``: ``equal``) over all logits."""
    got, ref = got.double(), ref.double()
    agree = int((got.argmax(dim=1) == ref.argmax(dim=1)).sum())
    diff = float((got - ref).abs().max()) if got.numel() else 0.0
    close = bool(torch.equal(got, ref)) if exact else bool(torch.allclose(got, ref, rtol=rtol, atol=atol))
    return CheckResult(int(ref.shape[0]), agree, diff, close, exact=exact)


TARGET_TOOLCHAIN = {
    "generic": "norse",
    "norse": "norse",
    "snntorch": "snntorch",
    "sinabs": "sinabs",
    "speck": "sinabs",
    "spikingjelly": "spikingjelly",
    "spyx": "spyx",
}
"""The importer each target's ``--check`` runs (speck: sinabs' simulation of the chip's integer IF neurons)."""


def importer_outputs(toolchain: str, path, x: torch.Tensor, python: str | None = None):
    """(outputs (N, classes) or None, version or the reason it did not run): the NIR file at ``path`` run by
    ``toolchain``'s importer on the spikes of ``x``, in this interpreter when the toolchain imports here, else
    under ``python`` (an interpreter whose environment holds it) through ``importers.py`` as a script."""
    spikes = (x > 0).float().flatten(1, -3) if x.dim() == 5 else (x > 0).float()
    version = importers.toolchain_version(toolchain)
    if version is not None:
        return torch.from_numpy(importers.run(toolchain, read_nir(path), spikes.numpy())), version
    if python is None:
        return None, (
            f"{toolchain} is not installed in this environment ({sys.executable}); install it, or "
            f"pass --importer-python PYTHON of an environment that has it (make check-targets builds one)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        sp, op = Path(tmp) / "spikes.npy", Path(tmp) / "out.npy"
        np.save(sp, spikes.numpy())
        try:
            proc = subprocess.run(
                [python, importers.__file__, toolchain, str(path), str(sp), str(op)], capture_output=True, text=True
            )
        except OSError as err:  # e.g. an executable file that is not a program (Exec format error)
            return None, f"--importer-python {python} could not be started: {err.strerror or err}"
        if proc.returncode != 0:
            return None, f"{python} could not run {toolchain}: {(proc.stderr or proc.stdout).strip()[-800:]}"
        out = _importer_result(op, int(spikes.shape[0]))
        if isinstance(out, str):
            return None, f"--importer-python {python} ran the {toolchain} importer, which exited 0 but {out}"
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("version:")]
        version = lines[-1].split(":", 1)[1].strip() if lines else ""
        return torch.from_numpy(out), f"{version} (under {python})"


def _importer_result(path: Path, n: int) -> np.ndarray | str:
    """The (n, outputs) float array an importer run under another interpreter wrote to ``path``, or what is wrong
    with it (no file, not a ``.npy`` of numbers, another shape)."""
    if not path.is_file():
        return "produced no result (it wrote no outputs file)"
    try:
        out = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        return f"wrote an unreadable result ({type(err).__name__}: {err})"
    if not isinstance(out, np.ndarray) or out.dtype.kind not in "iuf" or out.ndim != 2 or out.shape[0] != n:
        what = f"a {out.dtype} array of shape {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
        return f"wrote {what}, not ({n}, outputs) numbers"
    return out.astype(np.float64, copy=False)


def check_file(
    target: str, path, x: torch.Tensor, ref: torch.Tensor, *, exact: bool, python: str | None = None
) -> CheckResult:
    """Run the written file through ``target``'s importer on ``x`` and compare with ``ref`` (raw outputs). A check
    that could not run (the toolchain missing; under ``python``: the interpreter failing, or exiting 0 without a
    usable result) or whose outputs have another shape than ``ref`` is not passed, with the reason (``missing``)."""
    toolchain = TARGET_TOOLCHAIN[target]
    got, info = importer_outputs(toolchain, path, x, python)
    if got is not None and tuple(got.shape) != tuple(ref.shape):
        got, info = None, f"the {toolchain} import gave outputs of shape {tuple(got.shape)}, not {tuple(ref.shape)}"
    if got is None:
        return CheckResult(int(x.shape[0]), 0, float("nan"), False, toolchain=toolchain, missing=info, exact=exact)
    result = compare_logits(got, ref, exact=exact)
    result.toolchain, result.version = toolchain, info
    return result
