"""What a run fits after its last epoch on its ``best.pt``: the readout (``train.readout_fit``) and the Monte Carlo
temperature (``train.temperature_fit``)."""

from __future__ import annotations

import torch

from ..checkpoint import load_checkpoint, rewrite_checkpoint
from ..runs import RunFolder
from ..temperature import fit_run_temperature
from .readout_fit import fit_readout, samples_the_readout


def fit_best_readout(run: RunFolder, train_items, val_items, seed: int, device: torch.device, progress: bool) -> None:
    """Refit the readout of the run's ``best.pt`` (``readout_fit``) and rewrite it with the fit's figures under
    ``readout_fit``; nothing when it has no such network or has been fitted (a resumed finished run), and a note when
    there are no validation items to check a fit on."""
    if not run.best.exists():
        return
    ck = load_checkpoint(run.best)
    if ck.state.get("readout_fit") is not None or not samples_the_readout(ck.model):
        return
    if val_items is None or len(val_items) == 0:
        print("readout not refitted: no validation items to check a fit on (data.val_fraction is 0)", flush=True)
        return
    ck.model.to(device)
    fit = fit_readout(ck.model, train_items, val_items, seed=seed, device=device, progress=progress)
    rewrite_checkpoint(ck, run.best, readout_fit=fit.to_dict())
    print(fit, flush=True)


def fit_best_temperature(run: RunFolder, val_items, samples: int, seed: int, device: torch.device) -> None:
    """Fit the Monte Carlo temperature of the run's ``best.pt`` (``pipelines.temperature``) and rewrite it with the
    fit under ``temperature``; nothing when there is no ``best.pt`` or it has one (a resumed finished run), a note
    when there are no validation items."""
    if not run.best.exists():
        return
    ck = load_checkpoint(run.best)
    if ck.state.get("temperature") is not None:
        return
    if val_items is None or len(val_items) == 0:
        print("no temperature fitted: no validation items (data.val_fraction is 0)", flush=True)
        return
    fit = fit_run_temperature(ck.model.to(device), val_items, samples, seed=seed, device=device)
    rewrite_checkpoint(ck, run.best, temperature=fit.to_dict())
    print(fit, flush=True)
