"""Fit a trained stochastic network's readout to the states it samples (``train.readout_fit``).

Trained on expected states (``train.forward = "expected"``), the readout learns from the means of the last
layer's states; Monte Carlo prediction feeds it sampled states, whose pooled values f spread around those means.
After the last epoch the trainer refits the readout's weights W and bias b, every other layer fixed, to D draws of
f for each of N training items (as stored, no augmentation):

    minimise over W, b    -(1 / (N D)) sum_n sum_d log softmax(W f_nd + b)[y_n]  +  lambda ||W - W0||^2

the cross-entropy of single samples, the seed's sampled training rule for the readout alone, solved from the trained
readout W0 by L-BFGS; the penalty keeps the fit near W0 (without it the readout fits the training items' draws so
closely that single samples' NLL on held-out users rose from 0.67 to 0.97). The fit is kept only if it also lowers
the Monte Carlo NLL of the run's validation items (on a small set a wide readout can fit the training draws and
nothing else). A readout on a weight grid (``nsm.grid``) is fitted as it computes: the losses use its gridded W and
b, the gradient passing straight through the rounding. The fitted readout predicts from the
states that evaluation, streaming and export see: docs/training-study.md, section 10 measures what it does to Monte
Carlo accuracy, NLL and calibration. Networks without sampling units are left as they are (their readout already
saw the states it predicts from).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

import nsm
from events.errors import InputError
from nsm.grid import readout_on_grid
from nsm.sampling import draws_noise
from nsm.weight_cache import WeightCache

from .epoch import VALIDATION

DRAWS = 2  # sampled passes per training item
MAX_ITEMS = 4096  # training items drawn from (a seeded choice when the set is larger)
ANCHOR = 1e-3  # lambda: the penalty on the squared distance of W from the trained readout's
LBFGS_STEPS = 200  # L-BFGS iterations (each one loss and gradient evaluation or more)
VAL_DRAWS = VALIDATION.samples  # sampled passes per validation item (as the epochs' validation draws), for the
# Monte Carlo NLL that decides whether the fit is kept
BATCH = 64  # items per forward pass (times the draws)


@dataclass(frozen=True)
class ReadoutFit:
    """What the fit did: the single-sample cross-entropy over the training draws (without the penalty) and the Monte
    Carlo NLL of the validation items, each before and after it, and whether the fitted readout was kept: only when it
    lowered both (and is finite), so a readout that fits the training draws at the held-out items' expense is not."""

    items: int
    draws: int
    loss_before: float
    loss_after: float
    val_items: int
    val_nll_before: float
    val_nll_after: float
    kept: bool

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        verdict = "refitted" if self.kept else "kept as trained (the fit did not lower both losses)"
        return (
            f"readout {verdict}: fitted on {self.draws} sampled passes of {self.items} training items (single-sample "
            f"cross-entropy {self.loss_before:.3f} -> {self.loss_after:.3f}), checked on {self.val_items} validation "
            f"items (Monte Carlo NLL with {VAL_DRAWS} samples {self.val_nll_before:.3f} -> {self.val_nll_after:.3f})"
        )


def samples_the_readout(model) -> bool:
    """Whether ``model`` ends in an ``nsm.Readout`` fed by units that sample in their own modes."""
    layers = list(model)
    return isinstance(layers[-1], nsm.Readout) and draws_noise(model)


def sampled_features(
    model, items: Dataset, *, draws: int, generator: torch.Generator, device, progress: bool
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(f (N, draws, C): the readout's pooled input in ``draws`` sampled passes of each item, labels (N,), the number
    of positions the readout pools)."""
    layers = list(model)
    readout, trunk = layers[-1], layers[:-1]
    features, labels, positions = [], [], 1
    model.eval()
    with torch.inference_mode(), nsm.using_generator(model, generator), WeightCache(model):
        loader = DataLoader(items, batch_size=BATCH)
        for x, y in tqdm(loader, desc="fitting the readout", unit="batch", disable=not progress, leave=False):
            h = x.to(device).repeat(draws, *([1] * (x.dim() - 1)))  # draw d of item i is row d * len(x) + i
            for layer in trunk:
                h = layer(h)
            f = readout.pool(h).float().reshape(draws, len(x), -1)
            features.append(f.transpose(0, 1).cpu())
            labels.append(y)
            positions = readout.positions(h)
    return torch.cat(features), torch.cat(labels), positions


def single_sample_loss(weight, bias, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The objective of the module docstring for features (N, D, C) and labels (N,)."""
    logits = features @ weight.T + bias
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.repeat_interleave(features.shape[1]))


def monte_carlo_nll(weight, bias, features: torch.Tensor, labels: torch.Tensor) -> float:
    """-(1/N) sum_n log (1/D) sum_d softmax(W f_nd + b)[y_n] for features (N, D, C) and labels (N,)."""
    log_p = torch.log_softmax(features @ weight.T + bias, dim=-1)
    true = log_p.gather(-1, labels[:, None, None].expand(-1, features.shape[1], 1)).squeeze(-1)  # (N, D)
    return float(-(torch.logsumexp(true, dim=1) - math.log(features.shape[1])).mean())


def fit_readout(
    model, train_items: Dataset, val_items: Dataset, *, seed: int = 0, device=torch.device("cpu"), progress: bool = True
) -> ReadoutFit:
    """Refit ``model``'s readout in place as the module docstring says, keeping the fit only if it lowers the Monte
    Carlo NLL of ``val_items`` too (``samples_the_readout`` must hold; both sets must hold items)."""
    if not samples_the_readout(model):
        raise InputError("fit_readout needs a network whose units sample and that ends in an nsm.Readout")
    if len(train_items) == 0 or len(val_items) == 0:
        raise InputError("fit_readout needs training items to fit on and validation items to check the fit on")
    generator = torch.Generator(device=device).manual_seed(seed)
    if len(train_items) > MAX_ITEMS:
        chosen = torch.randperm(len(train_items), generator=torch.Generator().manual_seed(seed))[:MAX_ITEMS]
        train_items = Subset(train_items, chosen.tolist())
    draw = dict(generator=generator, device=device, progress=progress)
    features, labels, positions = sampled_features(model, train_items, draws=DRAWS, **draw)
    val_features, val_labels, _ = sampled_features(model, val_items, draws=VAL_DRAWS, **draw)
    readout = list(model)[-1]
    linear = readout.linear
    weight = linear.weight.detach().cpu().float().clone().requires_grad_(True)
    bias = linear.bias.detach().cpu().float().clone().requires_grad_(True)
    trained = weight.detach().clone()

    def used(w, b):
        """(W, b) as the readout's forward computes with them: on its weight grid when it has one."""
        return (w, b) if readout.grid is None else readout_on_grid(readout.grid, w, b, positions)

    with torch.no_grad():
        before = float(single_sample_loss(*used(weight, bias), features, labels))
        val_before = monte_carlo_nll(*used(weight, bias), val_features, val_labels)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=LBFGS_STEPS)

    def closure():
        optimizer.zero_grad()
        loss = single_sample_loss(*used(weight, bias), features, labels) + ANCHOR * (weight - trained).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        after = float(single_sample_loss(*used(weight, bias), features, labels))
        val_after = monte_carlo_nll(*used(weight, bias), val_features, val_labels)
        kept = after < before and val_after < val_before  # False when either is NaN
        if kept:
            linear.weight.copy_(weight.to(linear.weight))
            linear.bias.copy_(bias.to(linear.bias))
    return ReadoutFit(len(labels), DRAWS, before, after, len(val_labels), val_before, val_after, kept)
