"""``nsm export --check``: run a written graph through its target's own NIR importer (``importers``: norse,
snnTorch, sinabs; in this interpreter, or in another one that holds the toolchain) and compare it with the
PyTorch network's deterministic logits on seeded random event frames."""

from __future__ import annotations

import math
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nir
import numpy as np
import torch
from torch import nn

from nsm.sampling import using_mode

from . import importers
from .graph import as_float64
from .metadata import TAU, read_nir


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

    @property
    def ok(self) -> bool:
        return not self.missing and self.top_class_agree == self.n and self.logits_close

    def __str__(self) -> str:
        if self.missing:
            return f"{self.toolchain} check NOT RUN: {self.missing} -> not passed"
        name = f"{self.toolchain} {self.version}".strip()
        rule = "exactly equal" if self.exact else "within rtol = atol = 1e-4"
        return (
            f"{name} check on {self.n} inputs: top class equal on {self.top_class_agree}/{self.n}, "
            f"max |logit difference| {self.max_abs_logit_diff:.3g} (logits {rule}: "
            f"{'yes' if self.logits_close else 'no'}) -> {'OK' if self.ok else 'FAILED'}"
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


TARGET_TOOLCHAIN = {"generic": "norse", "norse": "norse", "snntorch": "snntorch", "sinabs": "sinabs", "speck": "sinabs"}
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
        proc = subprocess.run(
            [python, importers.__file__, toolchain, str(path), str(sp), str(op)], capture_output=True, text=True
        )
        if proc.returncode != 0:
            return None, f"{python} could not run {toolchain}: {(proc.stderr or proc.stdout).strip()[-800:]}"
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("version:")]
        version = lines[-1].split(":", 1)[1].strip() if lines else ""
        return torch.from_numpy(np.load(op)), f"{version} (under {python})"


def check_file(
    target: str, path, x: torch.Tensor, ref: torch.Tensor, *, exact: bool, python: str | None = None
) -> CheckResult:
    """Run the written file through ``target``'s importer on ``x`` and compare with ``ref`` (raw outputs)."""
    toolchain = TARGET_TOOLCHAIN[target]
    got, info = importer_outputs(toolchain, path, x, python)
    if got is None:
        return CheckResult(int(x.shape[0]), 0, float("nan"), False, toolchain=toolchain, missing=info, exact=exact)
    result = compare_logits(got, ref, exact=exact)
    result.toolchain, result.version = toolchain, info
    return result
