"""Neural Sampling Machines: binary stochastic sign units with multiplicative noise.

    P(z_i = +1 | z) = 1/2 (1 + erf(beta_i (w_i / ||w_i||).z + b_i / (sqrt(2) s ||w_i||)))

See ``nsm.functional`` for the equations, ``nsm.layers`` for the layers (built on ``nsm.affine``), ``nsm.moments``
for the rules of the expectation passes, ``nsm.neurons`` for the neuron kinds (the seed's comparison methods, their
units in ``nsm.baseline_units``), ``nsm.sampling`` for modes (sampling, deterministic, and the expected-state modes
that sampling networks train in) and Monte Carlo prediction,
``nsm.initialization`` for the data-dependent initialisation that deep binary networks need to learn and
``nsm.normalization`` for the batch-normalized firing logits that wide ones train on.
"""

from .initialization import data_init
from .layers import Binarize, BinaryMaxPool2d, NSMConv2d, NSMLinear, Readout
from .modes import MODES, StochasticUnit
from .neurons import NEURON_KINDS, neuron_kind, pool_unit
from .noise import BernoulliNoise, GaussianNoise, noise_from_dict
from .normalization import LogitNormalization
from .sampling import (
    MCResult,
    MCSettings,
    mc_predict,
    sample_probabilities,
    set_mode,
    using_generator,
    using_mode,
    using_variance_rule,
)
from .weight_cache import WeightCache

__all__ = [
    "MODES",
    "NEURON_KINDS",
    "BernoulliNoise",
    "Binarize",
    "BinaryMaxPool2d",
    "GaussianNoise",
    "LogitNormalization",
    "MCResult",
    "MCSettings",
    "NSMConv2d",
    "NSMLinear",
    "Readout",
    "StochasticUnit",
    "WeightCache",
    "data_init",
    "mc_predict",
    "neuron_kind",
    "noise_from_dict",
    "pool_unit",
    "sample_probabilities",
    "set_mode",
    "using_generator",
    "using_mode",
    "using_variance_rule",
]
