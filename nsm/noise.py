"""Multiplicative synapse noise laws of the Neural Sampling Machine.

Each law is a frozen dataclass that knows its mean ``m`` and standard deviation ``s``; these two
numbers are all the firing probability needs (docs/design.md section 3):

    Bernoulli(p):     xi ~ Bern(p),       m = p,  s = sqrt(p (1 - p))
    Gaussian(sigma):  xi ~ N(1, sigma^2), m = 1,  s = sigma

``sample`` draws xi explicitly; it is used by the ``synapse`` mode (eq. 4) and by runtimes that
rebuild the stochastic network from exported metadata (``to_dict`` / ``noise_from_dict``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from events.errors import InputError


@dataclass(frozen=True)
class BernoulliNoise:
    """xi ~ Bernoulli(p): a synapse transmits (xi = 1) with probability ``p``, else fails (xi = 0)."""

    p: float = 0.5
    kind: ClassVar[str] = "bernoulli"

    def __post_init__(self):
        if not 0.0 < self.p < 1.0:
            raise InputError(f"Bernoulli noise needs 0 < p < 1 (got p={self.p}); p = 0 or 1 has no variance")

    @property
    def mean(self) -> float:
        return self.p

    @property
    def std(self) -> float:
        return math.sqrt(self.p * (1.0 - self.p))

    def sample(self, shape, *, device=None, dtype=torch.float32, generator=None) -> torch.Tensor:
        """Draw xi of ``shape``: 1 with probability p, else 0."""
        u = torch.rand(shape, device=device, dtype=dtype, generator=generator)
        return (u < self.p).to(dtype)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "p": self.p}


@dataclass(frozen=True)
class GaussianNoise:
    """xi ~ N(1, sigma^2): a synapse's efficacy fluctuates around its nominal weight."""

    sigma: float = 1.0
    kind: ClassVar[str] = "gaussian"

    def __post_init__(self):
        if not self.sigma > 0.0:
            raise InputError(f"Gaussian noise needs sigma > 0 (got sigma={self.sigma})")

    @property
    def mean(self) -> float:
        return 1.0

    @property
    def std(self) -> float:
        return self.sigma

    def sample(self, shape, *, device=None, dtype=torch.float32, generator=None) -> torch.Tensor:
        """Draw xi of ``shape`` from N(1, sigma^2)."""
        return 1.0 + self.sigma * torch.randn(shape, device=device, dtype=dtype, generator=generator)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "sigma": self.sigma}


Noise = BernoulliNoise | GaussianNoise


def noise_from_dict(d: dict) -> Noise:
    """Inverse of ``Noise.to_dict``: rebuild a noise law from its metadata."""
    kind = d.get("kind")
    if kind == BernoulliNoise.kind:
        return BernoulliNoise(float(d["p"]))
    if kind == GaussianNoise.kind:
        return GaussianNoise(float(d["sigma"]))
    raise InputError(f"unknown noise kind {kind!r}; expected 'bernoulli' or 'gaussian'")
