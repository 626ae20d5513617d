"""Network-wide modes and Monte Carlo prediction.

A stochastic network's prediction for an input x is the average of the softmax of K forward
passes, each with fresh noise:

    p(y | x) ~= (1/K) sum_k softmax(f(x; noise_k))

The K passes of one input run as one batch (the input is repeated along the batch dimension), so
sampling costs one large forward pass rather than K small ones. Adaptive sampling stops, for each
input separately, at the first n >= min_samples where the running mean's top class probability is
at least ``threshold`` (never beyond ``max_samples``).

A fitted temperature T (``MCSettings.temperature``, ``temper``) rescales the average's log-probabilities,
p_T(y | x) = softmax(log p(y | x) / T), before adaptive sampling tests its threshold and before the prediction is
returned: T < 1 sharpens an underconfident average, T > 1 softens an overconfident one; the class ranking stays.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace

import torch
from torch import nn

from events.errors import InputError
from events.types import check_int

from .affine import AffineUnit
from .modes import EXPECTATION_MODES, MODES, Modal, StochasticUnit
from .moments import VARIANCE_RULES
from .spikes import unavailable, using_spikes
from .weight_cache import WeightCache


def stochastic_units(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` whose forward pass depends on a mode (NSM layers, noisy rectifiers)."""
    return [m for m in model.modules() if isinstance(m, StochasticUnit)]


def runs_in_torch(model: nn.Module) -> bool:
    """Whether every unit of ``model`` computes in its current mode with torch operations alone, which
    ``torch.compile`` can trace and fuse: units of real-valued kinds, and binary units in an expectation mode.
    Binary states drawn or thresholded go through ``nsm.kernels`` (numba), which it cannot."""
    binary = [m for m in model.modules() if isinstance(m, AffineUnit) and m.binary]
    return all(getattr(u, "mode", None) in EXPECTATION_MODES for u in binary)


def draws_noise(model: nn.Module) -> bool:
    """Whether any stochastic unit of ``model`` draws noise in its current mode (is not ``deterministic``)."""
    return any(u.mode != "deterministic" for u in stochastic_units(model))


def modal_modules(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` that has a mode: the stochastic units and the OR-pools."""
    return [m for m in model.modules() if isinstance(m, Modal)]


def set_mode(model: nn.Module, mode: str) -> nn.Module:
    """Switch every stochastic unit and OR-pool of ``model`` to ``mode`` (one of ``MODES``)."""
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; expected one of {MODES}")
    for unit in modal_modules(model):
        unit.mode = mode
    return model


@contextmanager
def using_mode(model: nn.Module, mode: str):
    """Run a block with every stochastic unit and OR-pool in ``mode``; each one's own mode is restored afterwards."""
    units = modal_modules(model)
    saved = [u.mode for u in units]
    try:
        set_mode(model, mode)
        yield model
    finally:
        for unit, m in zip(units, saved):
            unit.mode = m


def takes_expectations(model: nn.Module) -> bool:
    """Whether ``model``'s ``expected`` mode is the expectation of the pass it samples, under the gradient its units
    train with: it has stochastic units, and each is an NSM unit in ``probability`` mode with the NSM estimator
    (bnsm, gnsm; not ``ste``, whose gradient is another rule, nor units that do not sample)."""
    units = stochastic_units(model)
    return bool(units) and all(
        getattr(u, "firing_logit", False) and u.mode == "probability" and u.estimator == "nsm" for u in units
    )


@contextmanager
def _attribute_set(units: list[nn.Module], name: str, value):
    """Set attribute ``name`` of each of ``units`` to ``value`` within the block; each one's own value is restored
    afterwards."""
    saved = [getattr(u, name) for u in units]
    try:
        for unit in units:
            setattr(unit, name, value)
        yield
    finally:
        for unit, own in zip(units, saved):
            setattr(unit, name, own)


@contextmanager
def using_generator(model: nn.Module, generator: torch.Generator | None):
    """Draw every stochastic unit's noise from ``generator`` within the block (None: torch's global RNG)."""
    with _attribute_set(stochastic_units(model), "generator", generator):
        yield model


@contextmanager
def using_variance_rule(model: nn.Module, rule: str):
    """Let every NSM unit of ``model`` compute its logit's variance in the expectation passes by ``rule``
    (``nsm.moments.VARIANCE_RULES``) within the block; each unit's own rule is restored afterwards."""
    if rule not in VARIANCE_RULES:
        raise InputError(f"unknown variance rule {rule!r}; expected one of {VARIANCE_RULES}")
    with _attribute_set([u for u in model.modules() if getattr(u, "firing_logit", False)], "variance_rule", rule):
        yield model


@dataclass
class MCResult:
    """Monte Carlo prediction: ``probs`` (B, classes) averaged softmax, ``samples_used`` (B,) per input."""

    probs: torch.Tensor
    samples_used: torch.Tensor

    @property
    def prediction(self) -> torch.Tensor:
        return self.probs.argmax(dim=1)

    @property
    def confidence(self) -> torch.Tensor:
        return self.probs.max(dim=1).values


MAX_BATCH = 256
"""The most rows one forward pass of Monte Carlo prediction runs at a time (its default ``max_batch``)."""


def sample_probabilities(model: nn.Module, x: torch.Tensor, samples: int, max_batch: int = MAX_BATCH) -> torch.Tensor:
    """softmax(f(x; noise_k)) for k = 1..samples as a (samples, B, classes) tensor.

    The samples of all inputs are stacked along the batch dimension and run ``max_batch`` rows at
    a time. Gradients are not tracked; call inside ``torch.inference_mode`` for speed. The layers'
    effective weights are computed once for all the passes (a :class:`nsm.weight_cache.WeightCache`).
    """
    with WeightCache(model):
        return _sample_probabilities(model, x, samples, max_batch)


def _sample_probabilities(model: nn.Module, x: torch.Tensor, samples: int, max_batch: int) -> torch.Tensor:
    b = x.shape[0]
    split = _first_unit(model)
    if split is None:
        rows = x.unsqueeze(0).expand(samples, *x.shape).reshape(samples * b, *x.shape[1:])
        run = model
    else:
        # Everything up to the first unit's logits is the same for every sample: compute it once per input,
        # then repeat the logits (the copy the unit samples in place) instead of the input.
        modules, i = split
        h = x
        for module in modules[:i]:
            h = module(h)
        v = modules[i].logit(h)
        rows = torch.cat([v] * samples)  # a copy (sampled in place), sample-major like the input rows, v's format

        def run(v_rows):
            z = modules[i].states_from_logit(v_rows)
            for module in modules[i + 1 :]:
                z = module(z)
            return z

    outs = [torch.softmax(run(rows[j : j + max_batch]).float(), dim=1) for j in range(0, rows.shape[0], max_batch)]
    return torch.cat(outs).reshape(samples, b, -1)


def _first_unit(model: nn.Module):
    """(modules, i) of a sequential ``model`` whose modules before its first stochastic unit ``modules[i]``
    draw no noise, when that unit can sample from precomputed logits (an NSM unit not in synapse mode)."""
    if not isinstance(model, nn.Sequential):
        return None
    modules = list(model)
    for i, module in enumerate(modules):
        if isinstance(module, StochasticUnit):
            return (modules, i) if getattr(module, "firing_logit", False) and module.mode != "synapse" else None
    return None


def temper(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """softmax(log p / T) along the last dimension: ``probs`` at temperature T (``probs`` itself at T = 1; a zero
    probability stays zero)."""
    if temperature == 1.0:
        return probs
    return torch.softmax(torch.log(probs) / temperature, dim=-1)


MAX_TEMPERATURE = 100.0
"""The largest temperature: beyond it every prediction is all but uniform."""
PRECISIONS = ("float32", "bfloat16", "int8")
"""How Monte Carlo passes multiply (``MCSettings.precision``)."""
MAX_SAMPLES = 4096
"""The most Monte Carlo passes an input may take (``samples``, ``min_samples``, ``max_samples``): each pass is a
forward pass of the whole network, so more would take hours on a test set without changing its estimate."""


@dataclass(frozen=True)
class MCSettings:
    """How Monte Carlo prediction samples, checked once on construction (pass counts in 1..``MAX_SAMPLES``).

    Fixed (``adaptive=False``): ``samples`` passes per input. Adaptive: passes are drawn in rounds of ``step``
    (``None``: ``min_samples``) for the inputs still undecided; an input stops at the first n >= ``min_samples``
    whose running mean (1/n) sum_{k<=n} softmax_k has top probability >= ``threshold``, or at ``max_samples``.
    ``temperature``: the mean's probabilities are taken at this temperature (``temper``; a positive number up to
    ``MAX_TEMPERATURE``), for the threshold and the result. ``precision``: ``"bfloat16"`` runs the passes under
    bfloat16 autocast (the convolutions and the readout's product rounded to bfloat16, the +-1 states exact, the
    logits and probabilities float32: ``nsm.layers.AffineConv2d``), several times faster on CPUs with native bf16
    instructions; ``"int8"`` passes the binary states between layers as 1-byte spikes and multiplies them by int8
    weights (``nsm.spikes``: the states exact, each unit's weights rounded to 127 levels of its largest, the
    logits bfloat16; CPU only), faster again on CPUs with AVX-512 VNNI or AMX; ``"float32"`` neither. The defaults
    are the library's; a caller that needs others (the stream bounds a window's latency, a run's checkpoint holds its
    fitted temperature) says so.
    """

    samples: int = 16
    adaptive: bool = False
    threshold: float = 0.9
    min_samples: int = 4
    max_samples: int = 64
    step: int | None = None
    temperature: float = 1.0
    precision: str = "float32"

    def __post_init__(self) -> None:
        for name in ("samples", "max_samples", "min_samples") + (("step",) if self.step is not None else ()):
            object.__setattr__(self, name, check_int(f"Monte Carlo {name}", getattr(self, name), 1, MAX_SAMPLES))
        if not isinstance(self.adaptive, bool):
            raise InputError(f"Monte Carlo adaptive must be true or false, got {self.adaptive!r}")
        if not self.min_samples <= self.max_samples:
            raise InputError(
                f"Monte Carlo needs min_samples <= max_samples, got {self.min_samples}, {self.max_samples}"
            )
        if isinstance(self.threshold, bool) or not 0.0 < self.threshold <= 1.0:
            raise InputError(f"Monte Carlo threshold must be in (0, 1], got {self.threshold!r}")
        t = self.temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= MAX_TEMPERATURE:
            raise InputError(f"Monte Carlo temperature must be in (0, {MAX_TEMPERATURE:g}], got {t!r}")
        if self.precision not in PRECISIONS:
            raise InputError(f"Monte Carlo precision must be one of {PRECISIONS}, got {self.precision!r}")

    def overridden(self, **given) -> MCSettings:
        """These settings with the fields in ``given`` (``MCSettings`` field names) replaced, a ``None`` value
        counting as not given, as a command line's options come: ``samples`` given makes them fixed (``adaptive``
        false), ``adaptive=True`` adaptive, and a ``max_samples`` below ``min_samples`` lowers ``min_samples`` to it
        unless that is given too. ``ValueError`` for ``samples`` with ``adaptive=True``, or settings out of range."""
        given = {name: value for name, value in given.items() if value is not None}
        if "samples" in given:
            if given.get("adaptive"):
                raise InputError("give either samples=K or adaptive=True, not both")
            given["adaptive"] = False
        if "max_samples" in given and "min_samples" not in given:
            given["min_samples"] = min(self.min_samples, given["max_samples"])
        return replace(self, **given)

    def describe(self) -> str:
        """``MC 16`` or ``MC adaptive (0.9)``, with ``, bfloat16`` in that precision (the temperature is reported on
        its own)."""
        name = f"MC adaptive ({self.threshold:g})" if self.adaptive else f"MC {self.samples}"
        return name if self.precision == "float32" else f"{name}, {self.precision}"

    def predict(
        self,
        model: nn.Module,
        x: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        max_batch: int = MAX_BATCH,
    ) -> MCResult:
        """Monte Carlo prediction of ``model`` on the batch ``x`` (``mc_predict``)."""
        if self.precision == "int8" and (reason := unavailable(x.device)) is not None:
            raise InputError(f"Monte Carlo precision int8: {reason}; use float32 or bfloat16")
        was_training = model.training
        model.eval()
        try:
            bf16 = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16")
            int8 = using_spikes() if self.precision == "int8" else nullcontext()
            with torch.inference_mode(), bf16, int8, using_generator(model, generator), WeightCache(model):
                if not self.adaptive:
                    mean = sample_probabilities(model, x, self.samples, max_batch).mean(dim=0)
                    probs = temper(mean, self.temperature)
                    return MCResult(probs, torch.full((x.shape[0],), self.samples, dtype=torch.long, device=x.device))
                return _adaptive(
                    model,
                    x,
                    self.threshold,
                    self.min_samples,
                    self.max_samples,
                    self.step or self.min_samples,
                    max_batch,
                    self.temperature,
                )
        finally:
            model.train(was_training)


def mc_predict(
    model: nn.Module,
    x: torch.Tensor,
    samples: int | None = None,
    *,
    adaptive: bool = False,
    max_batch: int = MAX_BATCH,
    generator: torch.Generator | None = None,
    **settings,
) -> MCResult:
    """Monte Carlo prediction of ``model`` on the batch ``x``: ``samples=K`` passes per input, or ``adaptive=True``;
    ``settings``: the other fields of ``MCSettings`` (``threshold``, ``min_samples``, ``max_samples``, ``step``,
    ``temperature``, ``precision``), its defaults where not given (``MCSettings.predict``).

    Adaptive results are the running mean at the pass where an input stopped, exactly as if it had been sampled
    one pass at a time (passes drawn beyond it within a round are discarded). The model is put in eval mode for
    the call and restored afterwards; the stochastic units keep their own mode (use ``using_mode`` for
    deterministic predictions). ``generator`` fixes the noise.
    """
    if adaptive == (samples is not None):
        raise InputError("give either samples=K or adaptive=True")
    mc = MCSettings(adaptive=True, **settings) if adaptive else MCSettings(samples=samples, **settings)
    return mc.predict(model, x, generator=generator, max_batch=max_batch)


def _adaptive(model, x, threshold, min_samples, max_samples, step, max_batch, temperature) -> MCResult:
    b, dev = x.shape[0], x.device
    probs = None
    used = torch.zeros(b, dtype=torch.long, device=dev)
    running = None  # (active, classes) sum of softmax so far
    active = torch.arange(b, device=dev)  # inputs still sampling; all have drawn `done` passes
    done = 0
    while active.numel():
        k = min(min_samples if done == 0 else step, max_samples - done)
        p = sample_probabilities(model, x[active], k, max_batch)  # (k, A, C)
        if running is None:
            running = torch.zeros_like(p[0])
            probs = torch.empty(b, p.shape[-1], device=dev)
        cum = running.unsqueeze(0) + p.cumsum(dim=0)  # (k, A, C)
        counts = torch.arange(done + 1, done + k + 1, device=dev)  # (k,)
        means = temper(cum / counts.reshape(-1, 1, 1), temperature)
        stop = (means.amax(dim=2) >= threshold) & (counts >= min_samples).reshape(-1, 1)
        stop[-1] |= counts[-1] >= max_samples
        finished = stop.any(dim=0)
        first = stop.float().argmax(dim=0)  # first True along k
        idx = active[finished]
        probs[idx] = means[first[finished], finished.nonzero().squeeze(1)]
        used[idx] = counts[first[finished]]
        running = cum[-1][~finished]
        active = active[~finished]
        done += k
    return MCResult(probs, used)
