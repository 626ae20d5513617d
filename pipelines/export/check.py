"""``nsm export --check``: run a written graph through norse's NIR import and compare it with the PyTorch
network's deterministic logits on seeded random event frames."""

from __future__ import annotations

import math
from dataclasses import dataclass

import nir
import torch
from torch import nn

from nsm.sampling import using_mode

from .graph import as_float64
from .metadata import TAU


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
    """Agreement of an imported graph with a reference on ``n`` inputs."""

    n: int
    top_class_agree: int
    max_abs_logit_diff: float
    logits_close: bool

    @property
    def ok(self) -> bool:
        return self.top_class_agree == self.n and self.logits_close

    def __str__(self) -> str:
        return (
            f"norse check on {self.n} inputs: top class equal on {self.top_class_agree}/{self.n}, "
            f"max |logit difference| {self.max_abs_logit_diff:.3g} -> {'OK' if self.ok else 'FAILED'}"
        )


def compare_logits(got: torch.Tensor, ref: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-4) -> CheckResult:
    """Top class equality per input and ``allclose(got, ref, rtol, atol)`` over all logits."""
    agree = int((got.argmax(dim=1) == ref.argmax(dim=1)).sum())
    diff = float((got - ref).abs().max()) if got.numel() else 0.0
    return CheckResult(int(ref.shape[0]), agree, diff, bool(torch.allclose(got, ref, rtol=rtol, atol=atol)))
