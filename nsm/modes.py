"""The modes of stochastic units and OR-pools (docs/design.md section 3, "Modes"), switched for a whole network by
``nsm.set_mode``.

- ``probability``: draw each state with P(z = +1) = 1/2 (1 + erf v); ``synapse``: draw the synapse noise itself
  (eq. 4); ``deterministic``: z = sgn(v).
- The expectation modes pass state means instead of states (the rules of ``nsm.moments``): ``expected`` (eq. 9),
  ``mean-input`` (the inputs taken as the constants of their means) and ``sampled-logit`` (a draw of the Gaussian
  logit of eq. 9).
"""

from __future__ import annotations

import torch

from events.errors import InputError

MODES = ("probability", "synapse", "deterministic", "expected", "mean-input", "sampled-logit")
EXPECTATION_MODES = ("expected", "mean-input", "sampled-logit")  # the modes whose units and pools pass state means
NOISY_INPUT_MODES = ("expected", "sampled-logit")  # expectation modes that count the input states' noise


class Modal:
    """Mixin for modules whose forward pass depends on ``mode`` (one of ``MODES``)."""

    _mode = "probability"

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise InputError(f"unknown mode {value!r}; expected one of {MODES}")
        self._mode = value


class StochasticUnit(Modal):
    """Mixin for modules whose forward pass depends on ``mode`` and draws from ``generator``."""

    generator: torch.Generator | None = None
