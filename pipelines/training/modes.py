"""Which pass a training epoch runs: the warm-up's smooth pass, the expectation pass (``train.forward``, the
logit variance by ``train.variance``), or the units' own sampled modes (the sampled phase)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import nsm
from nsm.grid import without_grid
from nsm.sampling import takes_expectations

from ..train_config import TrainConfig


def training_mode(model, epoch: int, tc: TrainConfig):
    """The units' mode in training epoch ``epoch``: during the first ``tc.warmup_epochs`` epochs, for networks that
    take expectations (``nsm.sampling.takes_expectations``), ``tc.warmup_forward`` (``mean-input``: E z = erf(v) of
    the mean input; ``deterministic``: every stochastic unit z = sgn(E u)), for the others deterministic (the
    learning rate ramps up meanwhile for both: ``schedule.ramp_factor``); in the last ``tc.sampled_epochs`` epochs
    (the sampled phase) the units' own modes; between them the mode ``tc.forward`` names (``expected``,
    ``mean-input`` or ``sampled-logit``, the logit's variance by the rule ``tc.variance``) when the network takes
    expectations, else the units' own modes. A network on a weight grid (model option ``weight_bits``) computes off
    it in the warm-up epochs. The sampled and deterministic passes share the backward rule (the gradient of E z);
    the expectation modes back-propagate through their own pass."""
    expectations = takes_expectations(model)
    if epoch < tc.warmup_epochs:
        return _warmup_passes(model, tc.warmup_forward if expectations else "deterministic")
    if tc.forward != "sampled" and expectations and epoch < tc.epochs - tc.sampled_epochs:
        return _expectation_pass(model, tc)
    return nullcontext()


@contextmanager
def _warmup_passes(model, mode: str):
    """The warm-up's ``mode``, off the model's weight grid if it has one (``nsm.grid.without_grid``)."""
    with nsm.using_mode(model, mode), without_grid(model):
        yield


@contextmanager
def _expectation_pass(model, tc: TrainConfig):
    """The units in mode ``tc.forward``, their logits' variance by the rule ``tc.variance``."""
    with nsm.using_mode(model, tc.forward), nsm.using_variance_rule(model, tc.variance):
        yield model
