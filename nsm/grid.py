"""The n-bit weight grid: units whose weights are what an n-bit integer target runs, so that the network trained and
evaluated here is the network exported (``nsm train`` with the model option ``weight_bits``).

A binary unit's firing logit v = W z + b over +-1 states z = 2s - 1 is, over the {0, 1} spikes s,

    v = W_s s + c,        W_s = 2 W,   c = b - sum_j W_j        (the export's spike-domain weights)

On the grid each unit i has one power-of-two scale and integer weights and bias (Q = 2^(bits-1) - 1, B the bias
limit, at most Q):

    k_i = 2^floor(log2 min(Q / max_j |W_s,ij|, B / |c_i|))
    q_ij = round(k_i W_s,ij) in [-Q, Q],      c_q,i = round(k_i c_i) in [-B, B]

and the unit computes with W_ij = q_ij / (2 k_i), b_i = c_q,i / k_i + sum_j W_ij, so that v_i = (q_i.s + c_q,i) / k_i
exactly: every product and partial sum is an integer times 2^-m, which float32 holds exactly while the integers
stay below 2^24. The sign of v, and so the deterministic network, is then that of the integer pre-activation
q.s + c_q which ``pipelines.export.quantize`` writes (it keeps a graph already on a power-of-two grid as it is).
The readout (real-valued logits of the P positions' pooled states, l = A f + a) gets one scale k for all classes:
its spike-domain weights 2 A / P become q / k and its spike-domain bias a - sum_c A_c becomes round(k (...)) / k,
exact when P is a power of two (the mean over P positions is then exact too).

The grid is computed in float64 from the float parameters, so float32 training and evaluation and the float64
export derive the same integers. Training sees the gridded values and passes gradients straight through the
rounding (d grid(W) / dW = 1), quantization-aware training in its plainest form. ``nsm train`` keeps the warm-up
epochs off the grid (``without_grid``): their float passes take the network off the class prior, which on the grid
from the first step it failed to leave at one seed of three in the learning test's small set-up.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from events.errors import InputError

MIN_BITS, MAX_BITS = 2, 16
"""The integer weight widths a grid (and ``pipelines.export.quantize``) may use."""


@dataclass(frozen=True)
class WeightGrid:
    """``bits``-bit integer weights and unit biases of at most ``bias_limit`` in magnitude (default Q)."""

    bits: int
    bias_limit: int | None = None

    def __post_init__(self):
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise InputError(f"weight_bits must be a whole number from {MIN_BITS} to {MAX_BITS} (got {self.bits!r})")
        limit = self.bias_limit
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= self.q):
            raise InputError(
                f"bias_limit must be a whole number from 1 to {self.q} at {self.bits} bits (got {limit!r})"
            )

    @property
    def q(self) -> int:
        """Q = 2^(bits - 1) - 1, the largest integer weight magnitude."""
        return 2 ** (self.bits - 1) - 1

    @property
    def b(self) -> int:
        """B, the largest integer unit bias magnitude."""
        return self.q if self.bias_limit is None else self.bias_limit


def power_of_two_scale(w_s: torch.Tensor, c: torch.Tensor, q: int, b: int | None) -> torch.Tensor:
    """k_i = 2^floor(log2 min(q / max_j |w_s,ij|, b / |c_i|)) per output unit (row of ``w_s`` flattened); a bound
    whose denominator is 0 does not bind, and a unit with neither weights nor bias gets k = 1. ``b`` None: no bias
    bound."""
    wmax = w_s.reshape(w_s.shape[0], -1).abs().amax(dim=1)
    inf = torch.full_like(wmax, math.inf)
    bound = torch.where(wmax > 0, q / wmax, inf)
    if b is not None:
        cabs = c.abs()
        bound = torch.minimum(bound, torch.where(cabs > 0, b / cabs, inf))
    return torch.where(torch.isfinite(bound), torch.exp2(torch.floor(torch.log2(bound))), torch.ones_like(bound))


def _straight_through(value: torch.Tensor, gridded: torch.Tensor) -> torch.Tensor:
    """``gridded`` in the forward pass, exactly (``value - value.detach()`` is 0), with the gradient of ``value``
    in the backward pass."""
    return gridded.to(value.dtype) + (value - value.detach())


def unit_on_grid(grid: WeightGrid, w_eff: torch.Tensor, b_eff: torch.Tensor | None):
    """(W, b) of a binary unit layer with firing logit v = W_eff z + b_eff moved onto ``grid`` (module docstring);
    the result always has a bias (the grid's b is not 0 even where b_eff was absent)."""
    with torch.no_grad():
        w = w_eff.detach().double()
        rows = w.reshape(w.shape[0], -1)
        b0 = torch.zeros(w.shape[0], dtype=torch.float64) if b_eff is None else b_eff.detach().double()
        c = b0 - rows.sum(dim=1)
        k = power_of_two_scale(2.0 * w, c, grid.q, grid.b)
        shape = (-1,) + (1,) * (w.dim() - 1)
        q = torch.round(2.0 * w * k.reshape(shape)).clamp(-grid.q, grid.q)
        c_q = torch.round(c * k).clamp(-grid.b, grid.b)
        w_grid = q / (2.0 * k.reshape(shape))
        b_grid = c_q / k + w_grid.reshape(w.shape[0], -1).sum(dim=1)
    b_value = torch.zeros_like(b_grid, dtype=w_eff.dtype) if b_eff is None else b_eff
    return _straight_through(w_eff, w_grid), _straight_through(b_value, b_grid)


def readout_on_grid(grid: WeightGrid, weight: torch.Tensor, bias: torch.Tensor | None, positions: int):
    """(A, a) of a readout l = A f + a over the mean f of ``positions`` +-1 states, moved onto ``grid`` with one
    scale for all classes (module docstring); the readout bias is not bounded (it is the host's)."""
    with torch.no_grad():
        a = weight.detach().double()
        a0 = torch.zeros(a.shape[0], dtype=torch.float64) if bias is None else bias.detach().double()
        w_s = (2.0 / positions) * a
        k = power_of_two_scale(w_s.reshape(1, -1), torch.zeros(1, dtype=torch.float64), grid.q, None)[0]
        a_grid = torch.round(w_s * k).clamp(-grid.q, grid.q) * (positions / (2.0 * k))
        c = torch.round((a0 - a_grid.sum(dim=1)) * k)
        a0_grid = c / k + a_grid.sum(dim=1)
    a0_value = torch.zeros_like(a0_grid, dtype=weight.dtype) if bias is None else bias
    return _straight_through(weight, a_grid), _straight_through(a0_value, a0_grid)


@contextmanager
def without_grid(model: torch.nn.Module) -> Iterator[None]:
    """The modules of ``model`` that have a grid compute without it (float weights) inside the block."""
    gridded = [(m, m.grid) for m in model.modules() if getattr(m, "grid", None) is not None]
    try:
        for module, _ in gridded:
            module.grid = None
        yield
    finally:
        for module, grid in gridded:
            module.grid = grid
