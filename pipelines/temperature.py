"""One temperature for a run's Monte Carlo prediction, fitted on its validation items (``train.temperature_fit``).

After the last epoch (and the readout fit) the trainer predicts every validation item of the run with the run's
Monte Carlo settings (``eval``: K fixed passes, K = ``eval.samples``; one pass for a network that does not sample)
and fits the temperature T that minimises the NLL of p_T = softmax(log p / T) (``pipelines.calibration.
fit_temperature``; T < 1 sharpens an underconfident average, T > 1 softens an overconfident one, the class ranking
stays). ``best.pt`` records T and the validation NLL and ECE before and after under ``temperature``; ``nsm evaluate``
and ``nsm stream`` predict at T (``nsm.MCSettings.temperature``) and report the figures at T = 1 beside them.
The fit never sees the test split: the validation items are held-out gestures of the training recordings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from events.errors import InputError
from nsm.sampling import MAX_TEMPERATURE, MCSettings, draws_noise, temper

from .calibration import classification_metrics, fit_temperature

BATCH = 64  # validation items per Monte Carlo call


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature and what it did to the validation items' Monte Carlo NLL and ECE."""

    temperature: float
    items: int
    samples: int
    val_nll_before: float
    val_nll_after: float
    val_ece_before: float
    val_ece_after: float

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"temperature {self.temperature:.3f} fitted on {self.items} validation items (Monte Carlo, "
            f"{self.samples} samples: NLL {self.val_nll_before:.3f} -> {self.val_nll_after:.3f}, "
            f"ECE {self.val_ece_before:.3f} -> {self.val_ece_after:.3f})"
        )


def checkpoint_temperature(state: dict, path) -> float:
    """The temperature checkpoint ``path``'s dict records (``fit_run_temperature``), 1 when it records none; a
    ``ValueError`` naming the file when the record is not a temperature in (0, ``MAX_TEMPERATURE``]."""
    fit = state.get("temperature")
    if fit is None:
        return 1.0
    t = fit.get("temperature") if isinstance(fit, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= MAX_TEMPERATURE:
        raise InputError(f"{path}: its temperature record is not a temperature in (0, {MAX_TEMPERATURE:g}]: {fit!r}")
    return float(t)


def monte_carlo_probabilities(
    model, items: Dataset, mc: MCSettings, *, seed: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (N, classes), labels (N,)) of ``mc``'s prediction of every item, the noise seeded by ``seed``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    probs, labels = [], []
    model.eval()
    for x, y in DataLoader(items, batch_size=BATCH):
        probs.append(mc.predict(model, x.to(device), generator=generator).probs.double().cpu())
        labels.append(y)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def fit_run_temperature(model, val_items: Dataset, samples: int, *, seed: int, device: torch.device) -> TemperatureFit:
    """Fit the temperature of ``model``'s Monte Carlo prediction with ``samples`` passes (one for a network that does
    not sample) on ``val_items`` (the module docstring)."""
    if len(val_items) == 0:
        raise InputError("fitting a temperature needs validation items")
    if not draws_noise(model):
        samples = 1
    mc = MCSettings(samples=samples)
    probs, labels = monte_carlo_probabilities(model, val_items, mc, seed=seed, device=device)
    t = fit_temperature(probs, labels)
    tempered = temper(torch.from_numpy(probs), t).numpy()
    before, after = classification_metrics(probs, labels), classification_metrics(tempered, labels)
    return TemperatureFit(t, len(labels), samples, before["nll"], after["nll"], before["ece"], after["ece"])
