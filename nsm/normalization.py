"""Batch-normalized firing logits: how NSM units train, folded into a plain NSM for everything else.

Why (measured in ``docs/training-study.md``): as a binary network learns, its units' inputs become
correlated and the spread of a_i = (w_i / ||w_i||).z grows (up to sqrt(fan-in)), so the firing logits
grow, P saturates at 0 or 1 and the gradient of E z = erf(v) vanishes. allconvnet18 at full width stays
at the class prior for epochs; normalizing the logit over the batch, as batch normalization does, keeps
every unit in the range where it learns.

For an NSM unit i (``nsm.layers``, any noise, estimator or mode but ``synapse``) with
b'_i = b_i / (sqrt(2) s ||w_i||), the attached unit computes its firing logit as

    v_i = beta_i (a_i - mu_i) / sqrt(var_i + eps) + b'_i

mu_i and var_i being the (biased) moments of a_i over the batch and positions in training mode, gradients
flowing through them, and their running averages in evaluation mode (each training forward pass moves them
by ``momentum``, torch's batch-norm convention). beta_i and b'_i are then the scale and shift of the
normalized logit; in evaluation mode the unit is exactly the NSM unit with (``fold``)

    beta_i^NSM = beta_i / sqrt(var_i + eps),     b'_i^NSM = b'_i - beta_i mu_i / sqrt(var_i + eps)

so the normalization is a reparametrization used while training, and the network it stands for, saved,
evaluated and exported, is a plain NSM. In ``expected`` mode (``nsm.layers``) mu_i and var_i are the moments
of a_i over the batch and over the noise of the input states (``BatchMoments.expected_logit``). Attaching
converts the other way on a batch x (the moments of x, beta_i <- beta_i sqrt(var_i + eps),
b'_i <- b'_i + beta_i mu_i), so the network's logits on x are unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from events.errors import InputError

from . import functional as nsmf
from . import moments
from .layers import _NSMUnit
from .modes import NOISY_INPUT_MODES

MOMENTUM = 0.1
EPS = 1e-5


def _a_and_spread(unit: _NSMUnit, z: torch.Tensor, noisy_states: bool):
    """(a, s2) for the unit's input ``z``: a = (w/||w||).z per position; with ``noisy_states`` (z holds the means
    of independent states) s2 = (w/||w||)^2.(1 - z^2), a's variance per position over the states' noise, by the
    unit's ``variance_rule`` (``nsm.moments.affine_moments``), else None."""
    return moments.affine_moments(
        unit, z, nsmf.unit_direction(unit.weight), variance=unit.variance_rule if noisy_states else None
    )


class BatchMoments:
    """The running moments of one unit's a = (w/||w||).z, and the normalized logit computed from them."""

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, momentum: float = MOMENTUM, eps: float = EPS):
        self.mean, self.var, self.momentum, self.eps = mean, var, momentum, eps

    def logit(self, unit: _NSMUnit, z: torch.Tensor, track: bool) -> torch.Tensor:
        """v = beta (a - mu) / sqrt(var + eps) + b' (batch moments in training, moving the running ones when
        ``track``; the running moments in evaluation)."""
        a = moments.widened(unit.affine(z, nsmf.unit_direction(unit.weight)))
        mean, var = (self.mean, self.var) if track or not unit.training else (None, None)
        return F.batch_norm(a, mean, var, unit.beta, unit.effective_weight()[1], unit.training, self.momentum, self.eps)

    def expected_logit(self, unit: _NSMUnit, m: torch.Tensor, track: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the normalized logit when the inputs are independent states with means ``m``
        (the ``expected`` mode): a has mean E a = (w/||w||).m and variance s^2 = (w/||w||)^2.(1 - m^2) per
        position, the moments mu and var are those of a over the batch, positions and the states' noise
        (``moments.batch_moments``), and v has mean beta (E a - mu) / sqrt(var + eps) + b' and variance
        beta^2 s^2 / (var + eps). The running moments (moved when ``track``) are thus those that a sampling pass
        would see, so the folded network is the one trained (the rules: ``moments.batch_moments``,
        ``moments.normalized_moments``)."""
        a, s2 = _a_and_spread(unit, m, noisy_states=True)
        if not unit.training:
            mean, var = self.mean, self.var
        else:
            mean, var = moments.batch_moments(a, s2)
        if unit.training and track:
            n = a.numel() // a.shape[1]
            with torch.no_grad():
                self.mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.var.mul_(1 - self.momentum).add_(self.momentum * var * n / max(n - 1, 1))
        return moments.normalized_moments(a, s2, mean, var, unit.beta, unit.effective_weight()[1], self.eps)

    def folded(self, unit: _NSMUnit) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) that turn the unit's normalized logit into the plain NSM logit in evaluation mode:
        beta <- scale beta, b' <- scale b' + shift (``scale_preactivation``'s arguments)."""
        scale = (self.var + self.eps).rsqrt()
        return scale, unit.effective_weight()[1].detach() * (1 - scale) - unit.beta.detach() * self.mean * scale


class LogitNormalization:
    """Batch-normalized firing logits on every NSM unit of a network, while training (module docstring).

    ``LogitNormalization.attach(model, x)`` starts it (converting the units' beta and bias on the batch x);
    ``fold()`` ends it, leaving a plain NSM; ``folded_state_dict()`` is the plain NSM's state dict without
    ending it (what a checkpoint saves); ``state_dict()`` / ``resume`` carry it across a restart.
    """

    def __init__(self, model: nn.Module, running: dict[str, BatchMoments]):
        self.model = model
        self.units = {name: m for name, m in model.named_modules() if name in running}
        for name, unit in self.units.items():
            unit.logit_norm = running[name]

    @staticmethod
    def units_of(model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The (name, module) of every NSM unit of ``model`` (``firing_logit``): what ``attach`` normalizes."""
        return [(name, m) for name, m in model.named_modules() if getattr(m, "firing_logit", False)]

    @classmethod
    @torch.no_grad()
    def attach(
        cls, model: nn.Module, x: torch.Tensor, *, momentum: float = MOMENTUM, eps: float = EPS
    ) -> LogitNormalization:
        """Normalize every NSM unit of ``model``, its running moments those of one pass on ``x`` (the network runs
        in evaluation mode and its units' current modes; in ``expected`` mode the moments include the states'
        noise), its parameters converted so the logits on ``x`` (and their means and variances) stay."""
        names = dict((m, name) for name, m in cls.units_of(model))
        inputs: dict[str, torch.Tensor] = {}
        hooks = [unit.register_forward_pre_hook(lambda m, i: inputs.setdefault(names[m], i[0])) for unit in names]
        was_training = model.training
        model.eval()
        try:
            model(x)
        finally:
            model.train(was_training)
            for hook in hooks:
                hook.remove()
        for unit, name in names.items():  # every check before any unit changes
            if unit.logit_norm is not None:
                raise InputError(f"unit {name} already has batch-normalized logits")
            if unit.bias is None:
                raise InputError(f"unit {name} has no bias to hold the normalization's shift")
            if name not in inputs:
                raise InputError(f"unit {name} was not reached by a forward pass")
        running = {}
        for unit, name in names.items():
            noisy = unit.mode in NOISY_INPUT_MODES
            mean, var = moments.batch_moments(*_a_and_spread(unit, inputs[name], noisy_states=noisy))
            running[name] = BatchMoments(mean, var, momentum, eps)
            sigma, b_eff = (var + eps).sqrt(), unit.effective_weight()[1]
            unit.scale_preactivation(sigma, b_eff * (1 - sigma) + unit.beta * mean)  # beta sigma, b' + beta mu
        return cls(model, running)

    @classmethod
    def resume(cls, model: nn.Module, state: dict) -> LogitNormalization:
        """Attach the moments of ``state_dict()`` again; ``model`` must hold the parameters saved with them."""
        names = {name for name, _ in cls.units_of(model)}
        if set(state) != names:
            raise InputError(
                f"the saved logit normalization covers units {sorted(state)}, the network has {sorted(names)}"
            )
        device = next(model.parameters()).device
        return cls(
            model,
            {
                name: BatchMoments(s["mean"].to(device), s["var"].to(device), s["momentum"], s["eps"])
                for name, s in state.items()
            },
        )

    def state_dict(self) -> dict:
        """Per unit name: its running moments, momentum and eps."""
        return {
            name: {
                "mean": unit.logit_norm.mean.clone(),
                "var": unit.logit_norm.var.clone(),
                "momentum": unit.logit_norm.momentum,
                "eps": unit.logit_norm.eps,
            }
            for name, unit in self.units.items()
        }

    @torch.no_grad()
    def folded_state_dict(self) -> dict:
        """The model's state dict with every normalized unit's beta and bias those of its plain NSM (``fold``)."""
        state = dict(self.model.state_dict())
        for name, unit in self.units.items():
            state[f"{name}.beta"], state[f"{name}.bias"] = unit.scaled_parameters(*unit.logit_norm.folded(unit))
        return state

    @torch.no_grad()
    def fold(self) -> None:
        """End the normalization: every unit becomes the plain NSM that its evaluation mode computed."""
        for unit in self.units.values():
            scale, shift = unit.logit_norm.folded(unit)
            unit.logit_norm = None
            unit.scale_preactivation(scale, shift)
        self.units = {}
