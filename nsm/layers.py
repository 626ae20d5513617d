"""Layers of Neural Sampling Machine networks.

- ``NSMConv2d`` / ``NSMLinear``: binary stochastic sign units (docs/design.md section 3). Input and
  output are states in {-1, +1}; convolutions pad with -1, the "off" state (``nsm.affine.border_value``).
- ``Binarize``: event counts -> +1 where a pixel saw at least one event in its bin, else -1.
- ``BinaryMaxPool2d``: max-pooling, which over +-1 states is a logical OR.
- ``Readout``: global average pooling and a real-valued linear layer giving class logits.

The units are built on ``nsm.affine`` (``AffineConv2d``, ``AffineLinear``), as every kind's are. Every stochastic
unit has a ``mode`` (``nsm.modes.MODES``) switched for a whole network by ``nsm.set_mode``, and an optional
``generator`` (a ``torch.Generator``) from which it draws its noise. The OR-pools follow the mode too: in the
``expected`` and ``mean-input`` modes every NSM unit and pool outputs the expected value of its state instead of a
state (moment propagation, the rules of ``nsm.moments``; ``mean-input`` leaves out the inputs' variance), the passes
that sampling networks train on (``docs/training-study.md``); in ``sampled-logit`` mode each unit draws its logit
from the Gaussian that the ``expected`` pass describes and outputs the expected state given that draw (the local
reparameterization trick).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair

from events.errors import InputError

from . import functional as nsmf
from . import moments, spikes
from .affine import AffineConv2d, AffineLinear, AffineMap, MapSet
from .grid import WeightGrid, readout_on_grid, unit_on_grid
from .modes import EXPECTATION_MODES, NOISY_INPUT_MODES, Modal, StochasticUnit
from .noise import BernoulliNoise, Noise
from .weight_cache import memo

ESTIMATORS = ("nsm", "ste")


class _NSMUnit(StochasticUnit):
    """The binary stochastic sign unit: z_i = sgn(u_i), u_i = sum_j (xi_ij + a_i) w_ij z_j + b_i.

    Parameters: ``weight`` (w), ``bias`` (b) and ``beta`` (one per output unit, initialised to 1);
    a_i is derived from beta_i (``functional.a_from_beta``), never stored. The bias starts at 0, so
    an untrained unit fires with P = 1/2 (1 + erf(w_i.z / ||w_i||)).

    Modes: ``probability`` draws z_i = +1 with P(z_i = +1 | z) = 1/2 (1 + erf(v_i)); ``synapse``
    draws xi explicitly (eq. 4); ``deterministic`` gives sgn(v_i) = sgn(E(u_i | z)); ``expected`` takes the
    input as the means of independent states and outputs E(z_i) (``expected_states``); ``mean-input`` outputs
    erf(v_i) of those means, E(z_i) as if the inputs were the constants m.
    Estimators (the backward pass, in every mode): ``nsm`` uses the gradient of E(z_i) = erf(v_i);
    ``ste`` passes the gradient straight through to v_i where |v_i| <= 1.
    """

    binary = True
    firing_logit = True
    logit_norm = None  # a ``nsm.normalization.BatchMoments`` while trained with batch-normalized logits
    uses_weight_cache = True  # effective weights and border maps through ``memo`` (``nsm.weight_cache``)
    grid: WeightGrid | None = None  # an n-bit integer weight grid (``nsm.grid``), set by models.create_model
    variance_rule = "exact"  # how expectation passes compute the logit's variance (``nsm.moments.VARIANCE_RULES``)

    def _init_unit(self, noise: Noise, estimator: str, mode: str) -> None:
        if estimator not in ESTIMATORS:
            raise InputError(f"unknown estimator {estimator!r}; expected one of {ESTIMATORS}")
        self.noise = noise
        self.estimator = estimator
        self.mode = mode
        self.beta = nn.Parameter(torch.ones(self.out_features))
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    @property
    def gain(self) -> nn.Parameter:
        """beta: it scales the firing logit."""
        return self.beta

    @property
    def surrogate(self) -> str:
        return "hardtanh" if self.estimator == "ste" else "erf"

    def effective_weight(self):
        """(W_eff, b_eff) with v = W_eff z + b_eff the firing logit (see ``functional.effective_weight``), on the
        unit's ``grid`` when it has one (``nsm.grid.unit_on_grid``).

        Inside a :class:`WeightCache` (Monte Carlo rounds, streaming) and without autograd it is computed once
        and reused until a parameter changes."""
        params = [p for p in (self.weight, self.bias, self.beta) if p is not None]

        def compute():
            w_eff, b_eff = nsmf.effective_weight(self.weight, self.bias, self.beta, self.noise)
            return (w_eff, b_eff) if self.grid is None else unit_on_grid(self.grid, w_eff, b_eff)

        return memo(self, "_effective_cache", params, (self.noise, self.grid), compute)

    def logit(self, z: torch.Tensor) -> torch.Tensor:
        """v_i = beta_i (w_i/||w_i||).z + b_i / (sqrt(2) s ||w_i||) at every output position; with batch-normalized
        logits attached (``logit_norm``, see ``nsm.normalization``) the normalized logit. No side effects."""
        return self._logit(z, track=False)

    def _logit(self, z: torch.Tensor, track: bool) -> torch.Tensor:
        """``logit``; ``track``: a training forward pass moves the attached normalization's running moments."""
        if self.logit_norm is not None:
            return self.logit_norm.logit(self, z, track)
        w_eff, b_eff = self.effective_weight()
        return self.affine(z, w_eff, b_eff)

    def preactivation(self, z: torch.Tensor) -> torch.Tensor:
        """What the unit thresholds: the firing logit v (see ``logit``); recorded by ``nsm analyze``."""
        return self.logit(z)

    def firing_probability(self, z: torch.Tensor) -> torch.Tensor:
        """P(z_i = +1 | z) = 1/2 (1 + erf(v_i)) for every output unit and position."""
        return nsmf.firing_probability(self.logit(z))

    def expected_logit(self, m: torch.Tensor, track: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the firing logit v_i when the inputs are independent states with means ``m``:
        W_eff_i.m + b_eff_i (the -1 border is a constant input) and sum_j W_eff_ij^2 (1 - m_j^2) (0 at the
        border), or its estimate by ``variance_rule`` (``nsm.moments.affine_moments``). With batch-normalized
        logits attached, those of the normalized logit (``BatchMoments.expected_logit``; ``track`` as in
        ``_logit``)."""
        if self.logit_norm is not None:
            return self.logit_norm.expected_logit(self, m, track)
        return moments.affine_moments(self, m, *self.effective_weight(), variance=self.variance_rule)

    def expected_states(self, m: torch.Tensor, track: bool = False, input_variance: bool = True) -> torch.Tensor:
        """E(z_i) when the inputs are independent states with means ``m``, the logit taken as Gaussian with the
        moments of ``expected_logit`` (``moments.expected_sign``): the ``expected`` mode's output. Without
        ``input_variance`` (the ``mean-input`` mode) the inputs are taken as the constants m: E(z_i) = erf(v_i(m))."""
        if input_variance:
            return moments.expected_sign(*self.expected_logit(m, track))
        return moments.sign_mean(self._logit(m, track))

    def state_probability(self, v: torch.Tensor) -> torch.Tensor:
        """P(state = +1) for firing logits ``v`` in the current mode: 1/2 (1 + erf v) when sampling (or
        taking expectations), 1[v >= 0] in ``deterministic`` mode."""
        if self.mode == "deterministic":
            return (v >= 0).to(v.dtype)
        return nsmf.firing_probability(v)

    @torch.no_grad()
    def scaled_parameters(self, scale: torch.Tensor, shift: torch.Tensor):
        """(beta, bias) that make the firing logit scale_i v_i + shift_i (scale_i > 0, one per unit): beta_i times
        scale_i and b_eff_i <- scale_i b_eff_i + shift_i, b_eff_i = b_i / (sqrt(2) s ||w_i||); new tensors
        (bias None for a unit without one, which cannot shift)."""
        if self.bias is None:
            if bool((shift != 0).any()):
                raise InputError("a unit without bias cannot shift its firing logit")
            return self.beta * scale, None
        to_bias = math.sqrt(2.0) * self.noise.std * nsmf.weight_norm(self.weight)
        return self.beta * scale, (self.bias / to_bias * scale + shift) * to_bias

    @torch.no_grad()
    def scale_preactivation(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        """Make the firing logit scale_i v_i + shift_i in place (``scaled_parameters``)."""
        beta, bias = self.scaled_parameters(scale, shift)
        self.beta.copy_(beta)
        if bias is not None:
            self.bias.copy_(bias)

    def preactivation_map(self) -> AffineMap:
        """The firing logit as the map (``effective_weight``): w' = beta w/||w||, b' = b/(sqrt(2) s ||w||), whose sign
        is that of the mean pre-activation E(u | z); the synapse noise left out."""
        return AffineMap(
            *self.effective_weight(),
            folded="beta and noise scale into w' = beta w/||w||, b' = b/(sqrt(2) s ||w||) (the firing logit)",
            dropped=f"synapse noise {self.noise}",
        )

    @torch.no_grad()
    def set_preactivation_map(self, weight: torch.Tensor, bias: torch.Tensor | None) -> MapSet:
        """weight = w', bias = b', beta = 1/(sqrt(2) s): then v = (w'.z + b')/(sqrt(2) s ||w'||), the pre-activation
        over a positive factor, and m + a = sqrt(2) s beta = 1 (the mean synaptic weight is w', so E(u | z) = u)."""
        names = super().set_preactivation_map(weight, bias).names
        beta = 1.0 / (math.sqrt(2.0) * self.noise.std)
        self.beta.fill_(beta)
        rule = (
            f"weight = w', bias = b', beta = 1/(sqrt(2) s) = {beta:.4g}, so the firing logit "
            f"v = (w'.z + b')/(sqrt(2) s ||w'||) is the source's pre-activation u = w'.x + b' over a "
            f"positive factor"
        )
        return MapSet((*names, "beta"), rule)

    @torch.no_grad()
    def keep_logit_of(self, source) -> MapSet | None:
        """From another NSM unit: weight and beta copied, bias times s / s_source (the noise standard deviations), so
        that the firing logit v, hence P(z = +1 | z), is the source's (every parameter as is for equal noise
        laws). None for a source of another family."""
        if not source.firing_logit:
            return None
        ratio = self.noise.std / source.noise.std
        self.weight.copy_(source.weight)
        self.beta.copy_(source.beta)
        names = ("weight", "beta")
        if source.bias is not None:
            self.bias.copy_(source.bias * ratio)
            names = (*names, "bias")
        rule = (
            f"weight and beta copied, bias times s_target/s_source = {ratio:.4g}, so the firing logit v and "
            f"P(z = +1) are the source's"
        )
        return MapSet(names, rule)

    def states_from_logit(self, v: torch.Tensor) -> torch.Tensor:
        """The states for logits ``v`` (which this call may overwrite) in ``probability`` or ``deterministic``
        mode, as spikes where ``nsm.spikes.emitting``; lets Monte Carlo prediction compute one input's
        logits once and sample them K times."""
        as_spikes = spikes.emitting()
        if self.mode == "probability":
            if as_spikes:
                return nsmf.draw_spikes(v, self.generator)
            return nsmf.sample_sign(v, self.surrogate, self.generator, overwrite=True)
        if self.mode == "deterministic":
            return nsmf.sign_spikes(v) if as_spikes else nsmf.deterministic_sign(v, self.surrogate, overwrite=True)
        raise InputError(
            f"states_from_logit needs probability or deterministic mode ({self.mode} mode needs the input)"
        )

    def sampled_logit_states(self, m: torch.Tensor, track: bool = False) -> torch.Tensor:
        """The ``sampled-logit`` mode's output: erf(v), v = mean + sqrt(variance) eps, eps ~ N(0, 1) from
        ``generator`` per unit and position, with the logit's moments of ``expected_logit`` for independent input
        states with means ``m``: E(z_i) given a draw of the logit, so that E over the draw is ``expected_states``
        (E erf(v) = erf(mean / sqrt(1 + 2 variance))). The inputs' noise is sampled, the unit's own averaged; the
        gradient flows through mean and variance (the local reparameterization trick)."""
        return moments.sampled_logit_state(*self.expected_logit(m, track), self.generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.mode == "sampled-logit":
            return self.sampled_logit_states(z, track=True)
        if self.mode in EXPECTATION_MODES:
            return self.expected_states(z, track=True, input_variance=self.mode == "expected")
        v = self._logit(z, track=True)
        if self.mode != "synapse":
            return self.states_from_logit(v)
        if spikes.is_spikes(z):
            z = spikes.decode(z)
        if self.logit_norm is not None:
            raise InputError(
                "synapse mode draws eq. 4's noise with the unit's own parameters: fold the batch-"
                "normalized logits first (nsm.normalization.LogitNormalization.fold)"
            )
        u = nsmf.synapse_preactivation(
            self.pad_input(z),
            self.weight,
            self.bias,
            self.beta,
            self.noise,
            self.affine_padded,
            self.unit_dim,
            self.generator,
        )
        return nsmf.with_surrogate(v, lambda _, out=None: nsmf.sign_states(u, out), self.surrogate, overwrite=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, noise={self.noise}, mode={self.mode}, estimator={self.estimator}"


class NSMConv2d(_NSMUnit, AffineConv2d):
    """Convolution of NSM units over {-1, +1} feature maps, padded with -1."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        bias: bool = True,
        noise: Noise = BernoulliNoise(0.5),
        estimator: str = "nsm",
        mode: str = "probability",
    ):
        AffineConv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, bias)
        self._init_unit(noise, estimator, mode)


class NSMLinear(_NSMUnit, AffineLinear):
    """Fully connected NSM units over a {-1, +1} vector."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        noise: Noise = BernoulliNoise(0.5),
        estimator: str = "nsm",
        mode: str = "probability",
    ):
        AffineLinear.__init__(self, in_features, out_features, bias)
        self._init_unit(noise, estimator, mode)


MAX_INPUT_LEVELS = 16
"""The most count levels ``Binarize`` may code (each multiplies the first layer's input channels)."""


def check_input_levels(levels, what: str = "input_levels") -> tuple[int, ...]:
    """``levels`` as a tuple of strictly increasing positive integers, at most ``MAX_INPUT_LEVELS`` of them; else a
    ``ValueError`` naming ``what``."""
    if isinstance(levels, (str, bytes)) or not hasattr(levels, "__iter__"):
        raise InputError(f"{what} must be a list of event counts such as [1, 2, 4, 8], got {levels!r}")
    levels = list(levels)
    if not levels or len(levels) > MAX_INPUT_LEVELS:
        raise InputError(f"{what} must hold 1 to {MAX_INPUT_LEVELS} event counts, got {len(levels)}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in levels):
        raise InputError(f"{what} must be positive whole event counts, got {levels!r}")
    if any(b <= a for a, b in zip(levels, levels[1:])):
        raise InputError(f"{what} must increase strictly, got {levels!r}")
    return tuple(levels)


class Binarize(nn.Module):
    """Event counts -> states, a thermometer code of the count: for ``levels`` l_1 < ... < l_L (default (1,)) each
    input channel c gives L state channels, level-major (state channel k C + c, k from 0), that are +1 where
    the count x > l_k - 1 (for whole counts: at least l_k events), else -1. With the default, +1 where a bin holds
    at least one event. Larger levels tell the first layer a busy pixel from a lone noise event, which binarizing
    alone cannot (docs/training-study.md, section 14).

    Accepts (B, C, H, W) or (B, T, P, H, W); the latter is flattened to C = T * P channels. The states are exact in
    every float type: under autocast they come out in its lower precision (the first product then reads them
    without a conversion), else in the input's float type (the default float type for integer counts), and as spikes
    where ``nsm.spikes.emitting`` (the ``int8`` precision). Feature maps
    come out channels-last in memory (the logical shape stays (B, C, H, W)) and the layers after keep
    that format: oneDNN's CPU convolutions then run without reordering their input to and from NCHW
    (about half the time per 3x3 layer of allconvnet18 on a 2-core AVX-512 CPU), and so do cuDNN's.
    """

    def __init__(self, levels=(1,)):
        super().__init__()
        self.levels = check_input_levels(levels)

    def out_channels(self, in_channels: int) -> int:
        """State channels for ``in_channels`` count channels: one per channel and level."""
        return in_channels * len(self.levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            x = x.flatten(1, 2)
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        codes = [torch.where(x > level - 1, 1.0, -1.0) for level in self.levels]
        states = (codes[0] if len(codes) == 1 else torch.cat(codes, dim=1)).to(dtype)
        if spikes.emitting():
            states = spikes.encode(states)
        return states.contiguous(memory_format=torch.channels_last) if states.dim() == 4 else states

    def extra_repr(self) -> str:
        return "" if self.levels == (1,) else f"levels={list(self.levels)}"


class BinaryMaxPool2d(Modal, nn.MaxPool2d):
    """Max-pooling over {-1, +1} states: +1 if any input in the window is +1 (a logical OR); over their spikes
    (``nsm.spikes``, ordered as the states) the spike of the OR.

    In the ``expected`` and ``mean-input`` modes the input holds the means m_k of independent states and the
    output is the mean of their OR: P(on) = 1 - prod_k ((1 - m_k) / 2) over the window, E = 2 P(on) - 1
    (``on_probability``).
    """

    def on_probability(self, log_off: torch.Tensor) -> torch.Tensor:
        """P(OR = +1) = 1 - prod_k P(z_k = -1) per window, from ``log_off`` = log P(z_k = -1) per input (the
        border, which max-pooling never picks, counts as off)."""
        if self.dilation not in (1, (1, 1)):
            raise InputError("the OR of independent states is computed for max-pools without dilation")
        summed = F.avg_pool2d(
            log_off,
            self.kernel_size,
            self.stride,
            self.padding,
            ceil_mode=self.ceil_mode,
            count_include_pad=True,
            divisor_override=1,
        )
        return moments.or_on_probability(summed)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.mode in EXPECTATION_MODES:
            return (2.0 * self.on_probability(moments.log_off(z)) - 1.0).to(z.dtype)
        if self._pairs_suffice(z):
            return _max_of_pairs(z)
        return super().forward(z)

    def _pairs_suffice(self, z: torch.Tensor) -> bool:
        """Whether ``_max_of_pairs`` computes this pool on ``z``: 2x2 windows at stride 2 without padding or
        dilation, no indices asked for, a channels-last 4-d input of even height and width, and no gradient to route
        (torch.maximum would split a tie's gradient where max-pooling gives it to one input)."""
        if z.dim() != 4 or z.shape[-1] % 2 or z.shape[-2] % 2 or (torch.is_grad_enabled() and z.requires_grad):
            return False
        if self.return_indices:
            return False
        if not z.is_contiguous(memory_format=torch.channels_last):
            return False
        return all(
            _pair(value) == want
            for value, want in ((self.kernel_size, (2, 2)), (self.stride, (2, 2)), (self.padding, (0, 0)))
        ) and _pair(self.dilation) == (1, 1)


def _max_of_pairs(z: torch.Tensor) -> torch.Tensor:
    """The 2x2, stride-2 max-pool of a channels-last (N, C, H, W) tensor, as the larger of each window's two rows and
    then of its two columns, each over contiguous views of the (N, H, W, C) storage: what ``F.max_pool2d`` gives, in
    about half its time (it also finds the indices). Channels-last out."""
    n, c, h, w = z.shape
    rows = z.permute(0, 2, 3, 1).reshape(n, h // 2, 2, w // 2, 2 * c)
    widest = torch.maximum(rows[:, :, 0], rows[:, :, 1])  # (N, H/2, W/2, 2C): both columns of each window
    return torch.maximum(widest[..., :c], widest[..., c:]).permute(0, 3, 1, 2)


class Readout(Modal, nn.Module):
    """Global average pooling (over H, W when the input is 4-d) followed by a real-valued linear layer.

    In the ``expected`` and ``sampled-logit`` modes the input holds the means m of independent +-1 states, and
    the readout returns what the softmax of a Monte Carlo average needs rather than the logits of the means. The
    logits l = W f + b of the pooled states f (P positions) have mean mu = W E f + b and variance
    s_k^2 = sum_c W_kc^2 Var f_c, Var f_c = sum_p (1 - m_cp^2) / P^2, and the readout returns (``nsm.moments``)

        mu_k / sqrt(1 + pi s_k^2 / 8),

    whose softmax approximates E softmax(l) (the probit approximation of a Gaussian-smoothed sigmoid, per class).
    Trained on it, the network fits the average of sampled predictions that evaluation computes, not the
    sharper prediction of its mean states (docs/design.md section 3, eq. 10b; docs/training-study.md, section 9).
    Every other mode: W f + b.
    """

    grid: WeightGrid | None = None  # an n-bit integer weight grid (``nsm.grid``), set by models.create_model

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        """The linear layer's input: ``x`` averaged over H, W when it is 4-d, else ``x``."""
        return x.mean(dim=(2, 3)) if x.dim() == 4 else x

    @staticmethod
    def positions(x: torch.Tensor) -> int:
        """How many positions ``pool`` averages over."""
        return x.shape[2] * x.shape[3] if x.dim() == 4 else 1

    def affine_parameters(self, positions: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(A, a) of the logits l = A f + a: the linear layer's, on the ``grid`` when there is one
        (``nsm.grid.readout_on_grid`` for an input of ``positions`` positions)."""
        if self.grid is None:
            return self.linear.weight, self.linear.bias
        return readout_on_grid(self.grid, self.linear.weight, self.linear.bias, positions)

    def logit_moments(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the logits when the input holds independent +-1 states with means ``m``
        (``moments.pooled_affine_moments``)."""
        positions = self.positions(m)
        return moments.pooled_affine_moments(m, *self.affine_parameters(positions), self.pool, positions)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits in at least float32 (``moments.widened``: under autocast only the product is rounded); spikes
        (``nsm.spikes``) are decoded first."""
        if spikes.is_spikes(x):
            x = spikes.decode(x)
        if self.mode in NOISY_INPUT_MODES:
            return moments.probit_logits(*self.logit_moments(x))
        return moments.widened(F.linear(self.pool(x), *self.affine_parameters(self.positions(x))))
