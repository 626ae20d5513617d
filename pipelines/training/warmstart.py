"""Warm start: begin a run from a trained run of the same architecture with another neuron kind.

The original NSM paper's recipe for DVS Gesture is to train a weight-normalised ReLU network, copy its
weight directions into the NSM and fine-tune. ``warm_start(model, checkpoint)`` (``nsm train --init-from``)
does the copy for any pair of neuron kinds, layer by layer. Both networks must be the same architecture
(model name, input channels, input size, classes, and every layer's kind of map and shape); only the
neuron kind may differ.

Every unit of the source thresholds (or rectifies) an affine map of its input, its pre-activation
u_i = w'_i.x + b'_i:

    bd           w' = w,                            b' = b                      z = sgn(u)
    wbd          w' = g w / ||w||,                  b' = b                      z = sgn(u)
    sn, plain    w' = w,                            b' = b                      max(0, u + n), hardtanh(u)
    dcnn         w' = gamma w / sqrt(var + eps),    b' = gamma (b - mean) / sqrt(var + eps) + beta_bn
                 (batch norm's running statistics and affine folded in: in evaluation max(0, BN(w.x + b)) = max(0, u))
    bnsm, gnsm,  w' = beta w / ||w||,               b' = b / (sqrt(2) s ||w||)  (``nsm.functional.effective_weight``:
    ste, bn      u is the firing logit v, whose sign is that of the mean pre-activation E(u | z))

Each unit states its own rule (``nsm.affine.AffineUnit.preactivation_map``, ``set_preactivation_map`` and
``keep_logit_of``, overridden per unit family), so this module never asks a unit's class. Each target unit is given
that map, so that its deterministic pre-activation is u times a positive factor (the same zero crossings):

    NSM kinds    weight = w', bias = b', beta = 1 / (sqrt(2) s), s the target's noise standard deviation. Then
                 v = beta (w'/||w'||).z + b' / (sqrt(2) s ||w'||) = (w'.z + b') / (sqrt(2) s ||w'||),
                 i.e. u / (sqrt(2) s ||w'||); and m + a = sqrt(2) s beta = 1: the mean synaptic weight is w',
                 so E(u_target | z) = u.
    bd, sn,      weight = w', bias = b'
    plain
    wbd          weight = w', g = ||w'||, bias = b'
    dcnn         weight = w', bias = b', batch norm reset to identity (running mean 0, variance 1, gamma 1,
                 beta 0): exact in evaluation; in training the batch statistics re-centre every unit

Two cases keep more than the zero crossings:

    NSM -> NSM            weight and beta copied, bias b s_t / s_s (s_s, s_t the source's and the target's noise
                          standard deviations): the firing logit v, hence P(z_i = +1 | z), is the source's
                          (equal noise laws: every parameter copied as is)
    same kind (not NSM)   the unit's parameters and buffers copied as is (dcnn's batch norm included)

The readout (``Readout.linear``) is copied as is; max-pools, ``Binarize`` and ``Flatten`` hold nothing.
Between a real-valued (sn, dcnn) and a binary kind only the first layer reads the same input (the
+-1 of ``Binarize``, with the border padded by 0 in one and -1 in the other); deeper layers read ReLU
outputs in one and +-1 states in the other, which the fine-tuning reconciles.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

import torch
from torch import nn

from events.errors import InputError
from models import Network
from models.registry import NEURON_OPTIONS
from nsm import Readout
from nsm.affine import AffineConv2d, AffineLinear, AffineUnit

from ..checkpoint import load_checkpoint, non_finite

SIZE_KEYS = ("name", "in_channels", "input_size", "num_classes")


@dataclass
class WarmStartReport:
    """What ``warm_start`` did. ``mapped``: target tensors set, per parameter kind; ``rules``: how they were
    set; ``folded``: source parameters folded into the mapped ones; ``dropped``: what has no counterpart (each
    with its number of layers)."""

    source: str
    epoch: int
    source_arch: str
    target_arch: str
    mapped: Counter = field(default_factory=Counter)
    rules: list[str] = field(default_factory=list)
    folded: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)

    def rule(self, text: str) -> None:
        if text not in self.rules:
            self.rules.append(text)

    def lines(self) -> list[str]:
        def counted(items: Counter) -> str:
            return "; ".join(f"{what} ({n} layer{'s' * (n != 1)})" for what, n in items.items()) or "nothing"

        return [
            f"warm start from {self.source} (epoch {self.epoch}): {self.source_arch} -> {self.target_arch}",
            "  mapped: " + ", ".join(f"{n} {kind}" for kind, n in self.mapped.items()),
            *(f"  rule: {r}" for r in self.rules),
            f"  folded: {counted(self.folded)}",
            f"  dropped: {counted(self.dropped)}",
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


def describe(spec: dict) -> str:
    """``name(sizes and options), neuron kind``: an architecture as ``models.create_model`` received it."""
    args = ", ".join(f"{k}={v}" for k, v in spec.items() if k not in ("name", "neuron", *NEURON_OPTIONS))
    return f"{spec['name']}({args}) with {spec['neuron']} units"


def layer_signature(layer: nn.Module | None) -> str:
    """What a layer computes, up to its neuron kind: equal signatures take each other's parameters."""
    if layer is None:
        return "nothing"
    bias = "" if getattr(layer, "bias", None) is not None else " without bias"
    if isinstance(layer, AffineConv2d):
        (kh, kw), (sh, sw), (ph, pw) = layer.kernel_size, layer.stride, layer.padding
        return f"conv {layer.in_channels}->{layer.out_channels} {kh}x{kw} stride {sh}x{sw} padding {ph}x{pw}{bias}"
    if isinstance(layer, AffineLinear):
        return f"linear {layer.in_features}->{layer.out_features}{bias}"
    if isinstance(layer, Readout):
        return f"readout {layer.linear.in_features}->{layer.linear.out_features}"
    if isinstance(layer, nn.MaxPool2d):
        return f"max-pool {layer.kernel_size} stride {layer.stride}"
    return type(layer).__name__


def architecture_mismatch(source: Network, target: Network) -> str | None:
    """Why ``target`` cannot take ``source``'s parameters (the spec's sizes, then the first different layer),
    or None when only the neuron kind differs."""
    reasons = [
        f"{key} {source.spec[key]} in the checkpoint, {target.spec[key]} here"
        for key in SIZE_KEYS
        if source.spec[key] != target.spec[key]
    ]
    for i, (a, b) in enumerate(zip_longest(source, target)):
        if layer_signature(a) != layer_signature(b):
            reasons.append(
                f"first different layer: {i}, {layer_signature(a)} in the checkpoint, {layer_signature(b)} here"
            )
            break
    return "; ".join(reasons) or None


def map_unit(source: nn.Module, target: nn.Module, kinds: tuple[str, str], report: WarmStartReport) -> None:
    """Set one target unit from one source unit by the rules of the module docstring: each unit says what its
    pre-activation map is and how it takes one (``nsm.affine.AffineUnit``)."""
    source_kind, target_kind = kinds
    kept = target.keep_logit_of(source)
    if kept is not None:
        report.mapped.update(kept.names)
        report.rule(f"{source_kind} -> {target_kind}: {kept.rule}")
    elif source_kind == target_kind:
        state = source.state_dict()
        target.load_state_dict(state)
        report.mapped.update(list(state))
        report.rule(f"{source_kind} -> {target_kind}: every parameter and buffer copied as is")
    else:
        read = source.preactivation_map()
        if read.folded is not None:
            report.folded[f"{source_kind}'s {read.folded}"] += 1
        if read.dropped is not None:
            report.dropped[f"{source_kind}'s {read.dropped}"] += 1
        done = target.set_preactivation_map(read.weight, read.bias)
        report.rule(f"{target_kind}: {done.rule}")
        if done.reset is not None:
            part, how = done.reset
            report.dropped[f"{target_kind}'s {part}, which a {source_kind} source lacks: {how}"] += 1
        report.mapped.update(done.names)


def warm_start(model: Network, checkpoint, classes: list[str] | None = None) -> WarmStartReport:
    """Set ``model``'s parameters from the network in ``checkpoint`` (same architecture, any neuron kind) by the
    rules of the module docstring; return what was mapped, folded and dropped.

    ``classes``: when given, the checkpoint's class names must be these, in this label order (the readout is
    copied as is). Raises ``FileNotFoundError`` / ``ValueError`` (``load_checkpoint``'s) for a missing or
    unreadable file, or a damaged one (NaN or infinite weights, tensors that fail their checksum), and
    ``ValueError`` naming both architectures for a different architecture, or naming the first parameter when the
    mapped network is not finite (``model`` is then left as it was). The global RNG is left as it was (rebuilding
    the source network would draw from it).
    """
    with torch.random.fork_rng(devices=[]):
        ck = load_checkpoint(checkpoint)
    source, path = ck.model, Path(checkpoint).resolve()
    mismatch = architecture_mismatch(source, model)
    if mismatch:
        raise InputError(
            f"{path}: cannot warm-start {describe(model.spec)} from this checkpoint's "
            f"{describe(source.spec)}: {mismatch}. A warm start needs the same architecture; "
            f"only the neuron kind may differ"
        )
    if classes is not None and list(classes) != ck.classes:
        raise InputError(
            f"{path}: the checkpoint's classes {ck.classes} are not this run's {list(classes)}; "
            f"its readout would score other labels"
        )
    kinds = (source.neuron, model.neuron)
    report = WarmStartReport(
        source=str(path), epoch=ck.epoch, source_arch=describe(source.spec), target_arch=describe(model.spec)
    )
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        for src, tgt in zip(source, model):
            if isinstance(src, Readout):
                tgt.linear.load_state_dict(src.linear.state_dict())
                report.mapped.update(["readout weight", "readout bias"])
                report.rule("readout: weight and bias copied as is")
            elif isinstance(src, AffineUnit):
                map_unit(src, tgt, kinds, report)
    problems = [p for name, tensor in model.state_dict().items() if (p := non_finite(name, tensor)) is not None]
    if problems:
        model.load_state_dict(before)
        raise InputError(
            f"{path}: warm-starting {describe(model.spec)} from it gives non-finite parameters ({problems[0]}): its "
            "finite weights map to NaN or infinity (a negative batch-norm variance, or values too large), so the "
            "checkpoint is damaged or unfit for a warm start"
        )
    return report
