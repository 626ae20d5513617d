"""Training health: does each hidden layer still fire, learn and respond to its input, and has the loss
left the class prior? (the ``health`` field of ``nsm train``'s metrics.jsonl, and its warnings).

At the steps where the trainer takes activity records (every ``train.record_every`` steps), a
:class:`HealthMonitor` measures each hidden unit layer (a module with a ``preactivation``, as in
``pipelines.training.activity.weight_units``) and each max-pool layer on the batch being trained on, and keeps
one record per step. Forward hooks take the measurements during the training step itself, under
``torch.no_grad()`` and with the weights that produced the outputs, and keep no activations: on the
other steps they return at once, and a recorded step costs one extra evaluation of each NSM layer's
firing logit. Under DistributedDataParallel the hooks sit on the underlying model and only rank 0
measures (its share of each batch).

Per hidden layer:

  firing_rate   share of the layer's outputs that are on: +1 for the binary kinds, > 0 for the
                real-valued ones (dcnn, sn); for both, the share of outputs > 0. In the ``expected``
                and ``mean-input`` modes (``nsm.layers``), where the outputs are the states' means m,
                the expected share mean((1 + m) / 2)
  saturated     share of outputs (units x positions x batch) whose firing probability
                P = 1/2 (1 + erf(v)), v = ``unit.logit(input)``, is below SATURATION_P or above
                1 - SATURATION_P, where the gradient erf'(v) all but vanishes (in those two modes
                P = (1 + m) / 2 of the output); None (JSON null) for kinds without a firing probability
                (all but the NSM units: bnsm, gnsm, ste, bn)
  grad_norm     L2 norm of the gradient of the layer's weight after ``backward()``, before the optimizer
                step (divided by the GradScaler's scale under float16 autocast); None when the weight
                got no gradient or the gradient overflowed

Per max-pool layer: ``pool_rate``, the share of its outputs that are on (the expected share in those modes).

A value that is not finite is None, and so is a share taken of values that are not all finite (a firing rate or
pool rate of outputs, a saturated share of firing probabilities, with a NaN or an infinity among them: a diverging
step, which the trainer's check of the loss then stops).

An epoch's summary (:meth:`HealthMonitor.end_epoch`) holds each value's mean over the epoch's records
(None values left out; None when all are), keyed by module name in forward order, each entry naming
its module's class::

    {"1": {"module": "NSMConv2d", "firing_rate": 0.48, "saturated": 0.12, "grad_norm": 0.031},
     "2": {"module": "BinaryMaxPool2d", "pool_rate": 0.83}, ...}

It is empty for an epoch without a recorded step. The epoch's warnings, one line each, name a layer
that is dead (firing rate below DEAD_RATE or above 1 - DEAD_RATE: its output is all but constant), a
layer that is saturated (saturated share above SATURATED_SHARE), and a training loss that sat at the
class prior on every step of the epoch (``loss_sat_at_prior``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch import nn

from events.errors import InputError
from nsm.functional import firing_probability
from nsm.layers import EXPECTATION_MODES

from .activity import weight_units

DEAD_RATE = 0.02  # a layer on for less than this share of its outputs (or off for less) is dead
SATURATION_P = 0.02  # an output with P(+1) below this or above 1 - this is saturated
SATURATED_SHARE = 0.9  # a layer with more than this share of saturated outputs is saturated
PRIOR_LOSS_TOLERANCE = 0.02  # relative to the label entropy: see loss_sat_at_prior

UNIT_FIELDS = ("firing_rate", "saturated", "grad_norm")
POOL_FIELDS = ("pool_rate",)


def on_share(states: torch.Tensor) -> torch.Tensor:
    """Share of ``states`` that are on (> 0: +1 for binary states, positive for real-valued ones), as a tensor."""
    return torch.count_nonzero(states > 0) / states.numel()


def label_prior(labels, num_classes: int) -> np.ndarray:
    """The class frequencies of ``labels`` (integers in [0, num_classes))."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    if counts.sum() == 0:
        raise InputError("no labels to take the class frequencies of")
    return counts / counts.sum()


def loss_sat_at_prior(losses, prior_losses, entropy: float) -> bool:
    """Whether a training loss sat at the class prior on every step: each step's loss within
    PRIOR_LOSS_TOLERANCE x ``entropy`` of ``prior_losses``' value for the same step.

    ``prior_losses[i]`` is the cross-entropy, on step i's batch, of predicting the training labels' class
    frequencies pi whatever the input (the mean of -log pi_y over the batch); its mean over batches is
    ``entropy``, H = -sum pi log pi. Comparing with the batch's own value takes the batch's label mix out of
    the comparison, so the tolerance is the same for balanced and unbalanced sets and any batch size.

    Tolerance: prior loss - loss measures, in nats, what the predictions have learned from the input, and H
    is all there is to learn (a perfect predictor's loss is 0). A loss within PRIOR_LOSS_TOLERANCE (2 %) of
    H of the prior's on every step means that on no step did the network beat the prior by more than that
    share: it predicts the label frequencies and ignores its input, e.g. because a dead layer cut the input
    off. A loss far above the prior's is not at the prior (the network is still fitting even the label
    frequencies), so the band is two-sided. False for an epoch without steps.
    """
    losses, prior_losses = np.asarray(losses, dtype=np.float64), np.asarray(prior_losses, dtype=np.float64)
    if losses.shape != prior_losses.shape:
        raise InputError(f"{losses.size} losses but {prior_losses.size} prior losses")
    return losses.size > 0 and bool(np.all(np.abs(losses - prior_losses) <= PRIOR_LOSS_TOLERANCE * entropy))


def _finite_share(share: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``share`` of ``values``, or NaN (recorded as None) when ``values`` are not all finite; a tensor, so that
    measuring does not wait for the device."""
    return torch.where(torch.isfinite(values).all(), share, torch.nan)


def _mean(values: list) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def layer_warnings(summary: dict) -> list[str]:
    """One line per dead or saturated hidden layer of an epoch's ``summary`` (``HealthMonitor.end_epoch``)."""
    lines = []
    for name, entry in summary.items():
        rate, saturated = entry.get("firing_rate"), entry.get("saturated")
        layer = f"layer {name} ({entry['module']})"
        if rate is not None and not DEAD_RATE <= rate <= 1 - DEAD_RATE:
            lines.append(
                f"warning: {layer} is dead: it fired (+1, or > 0) on {100 * rate:.1f} % of its outputs "
                f"this epoch (a live layer: {100 * DEAD_RATE:g} % to {100 * (1 - DEAD_RATE):g} %), so its "
                f"output is all but constant and the layers above it get nothing from the input"
            )
        if saturated is not None and saturated > SATURATED_SHARE:
            lines.append(
                f"warning: {layer} is saturated: {100 * saturated:.1f} % of its outputs had a "
                f"firing probability P < {SATURATION_P:g} or P > {1 - SATURATION_P:g} this epoch (limit "
                f"{100 * SATURATED_SHARE:g} %), where the gradient erf'(v) all but vanishes"
            )
    return lines


@dataclass
class EpochHealth:
    """One epoch's health: ``summary`` (the metrics.jsonl ``health`` field) and the warnings it raised."""

    summary: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


class HealthMonitor:
    """Measures the health of ``model``'s hidden and max-pool layers during training (see the module doc).

    ``train_labels`` (the training set's labels, classes in [0, num_classes)) give the class prior of the
    loss check. With ``enabled`` False (ranks > 0) no hook is installed and every method does nothing.
    Per training step: :meth:`arm` before the forward pass of a step to record, :meth:`observe_loss` for
    every step, :meth:`record_gradients` after ``backward()`` and before the optimizer step; per epoch:
    :meth:`end_epoch`.
    """

    def __init__(self, model: nn.Module, train_labels, num_classes: int, enabled: bool = True):
        units = dict(weight_units(model))
        if not units:
            raise InputError("the model has no hidden units to monitor")
        self.units = units
        self.layers = [(name, m) for name, m in model.named_modules() if name in units or isinstance(m, nn.MaxPool2d)]
        prior = label_prior(train_labels, num_classes)
        self.entropy = float(-(prior[prior > 0] * np.log(prior[prior > 0])).sum())
        with np.errstate(divide="ignore"):
            self._neg_log_prior = torch.from_numpy(-np.log(prior))
        self.enabled = enabled
        self._armed = False
        self._step: dict[str, dict] = {}
        self._records: list[dict[str, dict]] = []
        self._losses: list[torch.Tensor] = []
        self._hooks = (
            [m.register_forward_hook(partial(self._measure, name)) for name, m in self.layers] if enabled else []
        )

    def _measure(self, name: str, module: nn.Module, inputs, output) -> None:
        if not self._armed:
            return
        with torch.no_grad():
            expected = getattr(module, "mode", None) in EXPECTATION_MODES
            rate = _finite_share(((1.0 + output.float()) / 2).mean() if expected else on_share(output), output)
            if name not in self.units:
                self._step[name] = {"pool_rate": rate}
                return
            saturated = None
            if hasattr(module, "logit"):
                p = (1.0 + output.float()) / 2 if expected else firing_probability(module.logit(inputs[0]).float())
                saturated = torch.count_nonzero((p < SATURATION_P) | (p > 1 - SATURATION_P)) / p.numel()
                saturated = _finite_share(saturated, p)
            self._step[name] = {"firing_rate": rate, "saturated": saturated}

    def arm(self) -> None:
        """Measure the layers during the next forward pass; the record is completed by ``record_gradients``."""
        self._armed = self.enabled

    def observe_loss(self, loss: torch.Tensor, labels: torch.Tensor) -> None:
        """Keep one step's training loss and the loss of predicting the class prior on its ``labels``."""
        if not self.enabled:
            return
        if self._neg_log_prior.device != labels.device:
            self._neg_log_prior = self._neg_log_prior.to(labels.device)
        self._losses.append(torch.stack([loss.detach().double(), self._neg_log_prior[labels].mean()]))

    def record_gradients(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Complete the armed step's record with each hidden layer's weight-gradient norm (call after
        ``backward()``, before the optimizer step; ``scaler``: the GradScaler the loss was scaled by, if any).
        Does nothing on a step that was not armed."""
        if not self._armed:
            return
        self._armed = False
        scale = scaler.get_scale() if scaler is not None else 1.0
        for name, unit in self.units.items():
            grad = unit.weight.grad
            norm = None if grad is None else grad.detach().float().norm() / scale
            self._step.setdefault(name, {})["grad_norm"] = norm
        record = {}
        for name, values in self._step.items():
            floats = {k: None if v is None else float(v) for k, v in values.items()}
            record[name] = {k: v if v is None or np.isfinite(v) else None for k, v in floats.items()}
        self._records.append(record)
        self._step = {}

    def end_epoch(self) -> EpochHealth:
        """The epoch's summary (each value's mean over its records) and warnings; the next epoch starts afresh."""
        if not self.enabled:
            return EpochHealth()
        summary = {}
        for name, module in self.layers:
            fields = UNIT_FIELDS if name in self.units else POOL_FIELDS
            seen = [r[name] for r in self._records if name in r]
            if seen:
                summary[name] = {
                    "module": type(module).__name__,
                    **{f: _mean([r.get(f) for r in seen]) for f in fields},
                }
        warnings = layer_warnings(summary)
        if self._losses:
            losses, prior_losses = torch.stack(self._losses).cpu().numpy().T
            if loss_sat_at_prior(losses, prior_losses, self.entropy):
                warnings.append(
                    f"warning: the training loss sat at the class prior all epoch: on every step ({len(losses)}) "
                    f"it was within {PRIOR_LOSS_TOLERANCE * self.entropy:.3f} nats ({100 * PRIOR_LOSS_TOLERANCE:g} % "
                    f"of the label entropy, {self.entropy:.3f}) of the loss of predicting the training labels' "
                    f"frequencies, so the network ignores its input"
                )
        self._records, self._losses = [], []
        return EpochHealth(summary, warnings)

    def close(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
