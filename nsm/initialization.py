"""Data-dependent initialisation: every hidden unit starts with standardized pre-activations.

Why (measured in ``docs/training-study.md``): a freshly built network of binary units does not learn
through many layers. Its units fire about half the time, and an OR-pool over a 2 x 2 window of states
that are +1 with probability 1/2 outputs +1 with probability 1 - (1/2)^4 = 15/16, so after each pool the
maps are nearly constant; the next layer's inputs then carry little signal and a large offset.

The rule (in the spirit of Salimans & Kingma's initialisation for weight normalization): on one batch x,
unit by unit in the order the network runs them, with u_i the unit's pre-activation (for NSM units the
firing logit v_i) at every batch position,

    mu_i, sigma_i = mean and standard deviation of u_i over the batch and positions
    u_i  <-  gain (u_i - mu_i) / sigma_i + c_i

realised by an affine change of the unit's own parameters (``scale_preactivation``: the NSM's beta and
bias, a sign unit's weight scale or g and bias). c_i = 0, so the unit fires about half the time, unless
the unit's states go into a max-pool (the OR of binary states): then c_i is set, by bisection, so that
the pool's expected output is +1 in ``pool_rate`` of the windows,

    mean over windows of  1 - prod_{k in window} (1 - P_k)  =  pool_rate,

where P_k is the probability that unit k's state is +1 given its pre-activation (``state_probability``):
1/2 (1 + erf v) for sampling NSM units, 1[u >= 0] for deterministic sign units. The layers after a unit
are initialised on the states the already initialised layers emit. Units without ``scale_preactivation``
(batch-normalized ``dcnn`` units, the readout) are left as built; units without ``state_probability``
(real-valued kinds) keep c_i = 0.
"""

from __future__ import annotations

import torch
from torch import nn

from events.errors import InputError

from .layers import BinaryMaxPool2d

GAIN = 1.0
POOL_RATE = 0.5
_BISECTION_STEPS = 40
_SHIFT_RANGE = 8.0  # c is sought in [-8, 8] units of the standardized pre-activation
_MIN_STD = 1e-6


class _Captured(Exception):
    """Raised by a forward hook to stop a pass once the wanted input has been taken."""


def _execution_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    """The leaf modules of ``model`` in the order one forward pass on ``x`` runs them."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in model.modules() if not list(m.children())
    ]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return order


def _input_of(model: nn.Module, unit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input that ``unit`` receives when ``model`` runs on ``x`` (the pass stops there)."""
    taken = []

    def take(mod, inputs):
        taken.append(inputs[0])
        raise _Captured

    hook = unit.register_forward_pre_hook(take)
    try:
        model(x)
    except _Captured:
        pass
    finally:
        hook.remove()
    if not taken:
        raise InputError(f"the unit {unit} was not reached by a forward pass")
    return taken[0]


def _pool_shift(z: torch.Tensor, unit: nn.Module, pool: BinaryMaxPool2d, rate: float) -> torch.Tensor:
    """Per channel shift c (bisection) such that the OR-pool of the unit's states is +1 in ``rate`` of windows."""
    lo = torch.full((z.shape[1],), -_SHIFT_RANGE, dtype=z.dtype, device=z.device)
    hi = -lo
    for _ in range(_BISECTION_STEPS):
        c = (lo + hi) / 2
        p = unit.state_probability(z + c.reshape(1, -1, 1, 1))
        above = pool.on_probability(torch.log1p(-p.clamp(max=1.0 - 1e-7))).mean(dim=(0, 2, 3)) > rate
        hi = torch.where(above, c, hi)
        lo = torch.where(above, lo, c)
    return (lo + hi) / 2


@torch.no_grad()
def data_init(model: nn.Module, x: torch.Tensor, *, gain: float = GAIN, pool_rate: float = POOL_RATE) -> int:
    """Initialise ``model``'s hidden units from the batch ``x`` by the rule of this module; return how many.

    The network runs in its current modes (sampling units sample, drawing from their generators or torch's
    global RNG) and in evaluation mode, so batch-norm layers use and keep their running statistics. ``gain``
    > 0 is the spread of the standardized pre-activations; ``pool_rate`` in (0, 1) the share of +1 outputs
    sought after each OR-pool.
    """
    if not gain > 0:
        raise InputError(f"gain must be > 0 (got {gain})")
    if not 0.0 < pool_rate < 1.0:
        raise InputError(f"pool_rate must be in (0, 1) (got {pool_rate})")
    if not any(hasattr(m, "scale_preactivation") for m in model.modules()):
        return 0
    was_training = model.training
    model.eval()  # batch-norm layers keep their running statistics; sampling units still sample
    try:
        return _initialise(model, x, gain, pool_rate)
    finally:
        model.train(was_training)


def _initialise(model: nn.Module, x: torch.Tensor, gain: float, pool_rate: float) -> int:
    order = _execution_order(model, x)
    done = 0
    for k, unit in enumerate(order):
        if not hasattr(unit, "scale_preactivation"):
            continue
        u = unit.preactivation(_input_of(model, unit, x))
        dims = tuple(d for d in range(u.dim()) if d != 1)  # units on dimension 1
        mu, sigma = u.mean(dims), u.std(dims).clamp_min(_MIN_STD)
        shape = (1, -1) + (1,) * (u.dim() - 2)
        z = (u - mu.reshape(shape)) / sigma.reshape(shape) * gain
        shift = torch.zeros_like(mu)
        follower = order[k + 1] if k + 1 < len(order) else None
        if isinstance(follower, BinaryMaxPool2d) and hasattr(unit, "state_probability") and u.dim() == 4:
            shift = _pool_shift(z, unit, follower, pool_rate)
        scale = gain / sigma
        unit.scale_preactivation(scale, shift - mu * scale)
        done += 1
    return done
