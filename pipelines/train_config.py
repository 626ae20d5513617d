"""The ``[train]`` table of a run's configuration (``pipelines.config``): the optimisation, the passes each epoch
trains on, the precision, and the augmentation (``[train.augment]``), each a frozen dataclass checked by its
``validate``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from events.errors import InputError
from events.types import SEED_MAX, check_float, check_int
from nsm.moments import VARIANCE_RULES
from nsm.neurons import NEURON_KINDS

INITS = ("data", "none")
LOGIT_NORMS = ("batch", "none")
FORWARDS = ("expected", "mean-input", "sampled-logit", "sampled")
WARMUP_FORWARDS = ("deterministic", "mean-input")
LR_RAMPS = ("warmup", "none")
LR_SCHEDULES = ("step", "cosine")
READOUT_FITS = ("sampled", "none")
TEMPERATURE_FITS = ("validation", "none")
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
MAX_LR = FLOAT32_MAX / 10
"""The largest learning rate (also times ``gain_lr_factor``): Adam's first step is lr / (1 - beta1) = 10 x the rate,
which torch converts to the parameters' float32; a larger rate overflows inside the optimizer."""


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation of event frames (each applied per clip with its probability).

    ``jitter_px``: random translation by up to this many pixels in x and y (vacated pixels are
    empty). ``time_flip``: play the clip backwards (with ON and OFF swapped, as a reversed scene
    would give); classes whose label changes under reversal are mapped (DVS Gesture: clockwise <->
    counter-clockwise). ``polarity_flip``: swap ON and OFF (contrast reversal; label-preserving).
    ``scale``: zoom about the frame's centre by a factor drawn log-uniformly from [1 / (1 + s), 1 + s]
    (``pipelines.data.zoom``, nearest neighbour; applied before the jitter); 0 turns it off.
    """

    jitter_px: int = 0
    time_flip: float = 0.0
    polarity_flip: float = 0.0
    scale: float = 0.0

    def validate(self) -> None:
        """``jitter_px`` >= 0 (``Config.validate`` bounds it by the frame size), each probability in [0, 1],
        ``scale`` in [0, 1]."""
        check_int("train.augment.jitter_px", self.jitter_px, 0)
        check_float("train.augment.scale", self.scale, 0, 1)
        for name in ("time_flip", "polarity_flip"):
            check_float(f"train.augment.{name}", getattr(self, name), 0, 1)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: Adam (``lr``, ``adam_eps``, ``weight_decay``); ``lr_schedule`` "step": the learning rate
    multiplied by ``lr_gamma`` every ``lr_step_epochs`` epochs; "cosine": epoch e (from 0) of E trains at
    lr (1 + cos(pi e / E)) / 2 (``lr_step_epochs`` and ``lr_gamma`` unused). The units' gains
    (``nsm.neurons.gain_parameters``: an NSM unit's beta, a weight-normalized sign unit's g) learn at
    ``gain_lr_factor`` times that rate (Adam moves a parameter by about the rate a step, so at 1e-3 a gain moves
    by at most about 1 in 1000 steps; docs/training-study.md, section 8). ``workers``: DataLoader worker processes.
    ``device``: ``"auto"`` (CUDA when present), ``"cpu"`` or ``"cuda"``; ``amp``: bfloat16/float16
    autocast on CUDA; ``cpu_bf16``: bfloat16 autocast on a CPU with native bf16 instructions (AVX-512 BF16 or AMX;
    elsewhere float32, which emulated bf16 would not beat): the convolutions and linear products run in bfloat16,
    states, moments and logits stay float32 (``nsm.layers.AffineConv2d``); ``compile``: the training steps run
    ``torch.compile``'s fused kernels where the pass is torch alone (``pipelines.training.steps.uses_compiled``: full
    batches after the warm-up, expectation modes or real-valued kinds; a single process; compiling takes a minute or
    two once, and its kernels round differently from eager ones at the float level). ``record_every``: steps between the
    activity records that ``nsm analyze`` reads.
    ``init``: how a fresh run's units start: ``"data"`` (``nsm.initialization.data_init`` on a batch of training
    items: standardized pre-activations, OR-pools emitting +1 in half their windows; without it deep binary
    networks stay at chance, see docs/training-study.md) or ``"none"`` (as the layers build themselves).
    ``warmup_epochs``: epochs trained with noise-free forward passes before the stochastic units sample
    (a random network of sampling units passes almost nothing of its input through many layers; once
    trained without noise its weights carry the signal through the noise: docs/training-study.md).
    ``warmup_forward``: the warm-up's pass, for networks that take expectations (bnsm, gnsm; the other kinds' warm-up
    is deterministic): ``"mean-input"`` (E z = erf(v) of the mean input, a smooth network with exact gradients, whose
    last layer still depends on the input at initialisation) or ``"deterministic"`` (every unit z = sgn(v), the
    gradient of E z; at initialisation its last layer carries nothing of the class, and the first epoch often stays
    at the class prior: docs/training-study.md, section 9).
    ``lr_ramp``: ``"warmup"``: over the n steps of the warm-up epochs the rate rises linearly, step k (from 0) at
    (k + 1)/n of its scheduled value (Adam's first steps move every parameter by about the full rate whatever its
    gradient; without the ramp the smooth warm-up stays at the class prior at some seeds: docs/training-study.md,
    section 9); ``"none"``: the scheduled rate from the first step.
    ``logit_norm``: ``"batch"`` trains the NSM units on batch-normalized firing logits, folded into their beta and
    bias in every checkpoint (``nsm.normalization``: without it the logits of a wide network grow until its units
    saturate and it stays at chance, docs/training-study.md), or ``"none"``.
    ``forward``: how sampling NSM units (bnsm, gnsm) pass their states forward while training after the warm-up:
    ``"expected"`` (the ``expected`` mode of ``nsm.layers``: each unit and OR-pool passes the expected value of
    its state given independent inputs, a deterministic pass whose gradient is exact for that approximation),
    ``"mean-input"`` (the same without the inputs' variance: E z at the mean input), ``"sampled-logit"`` (the
    ``sampled-logit`` mode: each unit draws its logit from the Gaussian of the ``expected`` pass and passes E z
    given the draw, the local reparameterization trick) or ``"sampled"`` (one draw per unit and the gradient of
    E z at the draw: the seed's rule); docs/training-study.md compares them. Other kinds train in their own modes
    either way; evaluation always samples.
    ``variance``: how the ``expected`` and ``sampled-logit`` passes compute each unit's logit variance
    (``nsm.moments.VARIANCE_RULES``): ``"exact"`` (sum_j W_j^2 (1 - m_j^2), a second convolution as large as the
    first) or ``"window-mean"`` (sum_j W_j^2 times the mean of 1 - m^2 over the unit's receptive field: an average
    pool of one channel; docs/training-study.md, section 18, measures its accuracy and speed).
    ``sampled_share``: the share of the epochs (rounded to whole epochs, never the warm-up's) at the end of the run
    in which sampling NSM units train on sampled states (``"sampled"``) whatever ``forward`` says: a curriculum in
    which the expectation pass optimizes and the sampled noise then regularizes and calibrates
    (docs/training-study.md, section 13). The learning rate restarts there at ``sampled_lr_factor`` times
    ``lr`` and falls to 0 along a cosine over those epochs; the epochs before follow ``lr_schedule`` as if the
    run ended where the sampled phase begins. 0: no sampled phase.
    ``readout_fit``: ``"sampled"``: after the last epoch, the readout of ``best.pt`` is refitted to sampled passes of
    the training items, the other layers fixed (``pipelines.training.readout_fit``; networks whose units sample only:
    Monte Carlo prediction then gains accuracy and calibration, docs/training-study.md, section 10); ``"none"``: as
    trained.
    ``temperature_fit``: ``"validation"``: after that, one temperature for the Monte Carlo prediction of ``best.pt``
    (every kind; ``eval.samples`` passes) is fitted to the validation items' NLL and recorded in it, and evaluation
    and streaming predict at it (``pipelines.temperature``); ``"none"``: temperature 1.
    ``kind_epochs``: {neuron kind: epochs} for the kinds that converge in another number of epochs than
    ``epochs`` (measured per preset: docs/training-study.md); a network of such a kind trains that many
    (``Config.with_neuron``: ``nsm train`` with ``model.neuron`` set to it, ``nsm compare`` for each kind), unless
    ``train.epochs`` is set explicitly (``--set``, ``--epochs``), which then holds for every kind."""

    epochs: int = 200
    batch_size: int = 32
    lr: float = 3e-4
    lr_schedule: str = "step"
    lr_step_epochs: int = 100
    lr_gamma: float = 0.5
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    gain_lr_factor: float = 1.0
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    amp: bool = True
    cpu_bf16: bool = False
    compile: bool = False
    record_every: int = 50
    init: str = "data"
    warmup_epochs: int = 1
    warmup_forward: str = "mean-input"
    lr_ramp: str = "warmup"
    logit_norm: str = "batch"
    forward: str = "expected"
    variance: str = "exact"
    sampled_share: float = 0.0
    sampled_lr_factor: float = 0.2
    readout_fit: str = "sampled"
    temperature_fit: str = "validation"
    kind_epochs: dict[str, int] = field(default_factory=dict)
    augment: AugmentConfig = AugmentConfig()

    @property
    def sampled_epochs(self) -> int:
        """The number of epochs at the end of the run in the sampled phase: ``sampled_share`` x ``epochs`` rounded
        half up, at most the epochs after the warm-up."""
        return min(math.floor(self.sampled_share * self.epochs + 0.5), max(self.epochs - self.warmup_epochs, 0))

    def validate(self) -> None:
        """Counts >= 1 (``warmup_epochs`` and ``workers`` >= 0), the seed in 0..SEED_MAX, the rates and factors
        finite and > 0 (``adam_eps`` and ``weight_decay`` >= 0, ``weight_decay`` at most FLOAT32_MAX), the rate times
        ``gain_lr_factor`` at most MAX_LR, the choices among their values, and ``augment``'s own checks."""
        for name in ("epochs", "batch_size", "lr_step_epochs", "record_every"):
            check_int(f"train.{name}", getattr(self, name), 1)
        for name in ("warmup_epochs", "workers"):
            check_int(f"train.{name}", getattr(self, name), 0)
        for kind, epochs in self.kind_epochs.items():
            if kind not in NEURON_KINDS:
                raise InputError(f"train.kind_epochs: unknown neuron kind {kind!r}; kinds: {', '.join(NEURON_KINDS)}")
            check_int(f"train.kind_epochs.{kind}", epochs, 1)
        check_int("train.seed", self.seed, 0, SEED_MAX)
        for name in ("lr", "lr_gamma", "gain_lr_factor"):
            check_float(f"train.{name}", getattr(self, name), 0, open_min=True)
        check_float("train.adam_eps", self.adam_eps, 0)
        check_float("train.sampled_share", self.sampled_share, 0, 1)
        check_float("train.sampled_lr_factor", self.sampled_lr_factor, 0, 1, open_min=True)
        check_float("train.weight_decay", self.weight_decay, 0, FLOAT32_MAX)
        if self.lr * max(1.0, self.gain_lr_factor) > MAX_LR:
            raise InputError(
                f"train.lr x train.gain_lr_factor must be at most {MAX_LR:.4g} (Adam's first step, 10 x the rate, "
                f"must fit a float32), got {self.lr:g} x {self.gain_lr_factor:g}"
            )
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if self.init not in INITS:
            raise InputError(f"train.init must be one of {INITS}, got {self.init!r}")
        if self.logit_norm not in LOGIT_NORMS:
            raise InputError(f"train.logit_norm must be one of {LOGIT_NORMS}, got {self.logit_norm!r}")
        if self.forward not in FORWARDS:
            raise InputError(f"train.forward must be one of {FORWARDS}, got {self.forward!r}")
        if self.variance not in VARIANCE_RULES:
            raise InputError(f"train.variance must be one of {VARIANCE_RULES}, got {self.variance!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise InputError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.lr_ramp not in LR_RAMPS:
            raise InputError(f"train.lr_ramp must be one of {LR_RAMPS}, got {self.lr_ramp!r}")
        if self.warmup_forward not in WARMUP_FORWARDS:
            raise InputError(f"train.warmup_forward must be one of {WARMUP_FORWARDS}, got {self.warmup_forward!r}")
        if self.readout_fit not in READOUT_FITS:
            raise InputError(f"train.readout_fit must be one of {READOUT_FITS}, got {self.readout_fit!r}")
        if self.temperature_fit not in TEMPERATURE_FITS:
            raise InputError(f"train.temperature_fit must be one of {TEMPERATURE_FITS}, got {self.temperature_fit!r}")
        self.augment.validate()
