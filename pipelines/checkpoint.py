"""Checkpoints: everything needed to rebuild a trained network without the code that trained it.

A checkpoint is a ``torch.save`` dict:

    format          "nsm-events-checkpoint"        version        1
    model_spec      models.create_model kwargs     model_state    state dict
    classes         class names, in label order    frame_spec     events.FrameSpec.to_dict() or None
    config          the resolved run configuration (dict), or {}
    epoch           epochs completed               project_version
    optimizer_state, scheduler_state, rng_state    training state for --resume (optional)
    init_from       the checkpoint a warm-started run began from (``nsm train --init-from``), or None (optional)
    logit_norm, train_model_state   a run trained with batch-normalized logits (``nsm.normalization``): their
                    running moments and the parameters as trained, for --resume; model_state is the plain NSM

Writes are atomic (temporary file in the same folder, then rename), so a crash never leaves a
half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from torch import nn

import models
from events.atomic import atomic_file

FORMAT = "nsm-events-checkpoint"
VERSION = 1


def project_version() -> str:
    try:
        return version("nsm-events")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class Checkpoint:
    model: nn.Module
    classes: list[str]
    frame_spec: dict | None = None
    config: dict = field(default_factory=dict)
    epoch: int = 0
    state: dict = field(default_factory=dict)  # the raw dict, for optimizer / scheduler / RNG states


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then rename over ``path``."""
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


def save_checkpoint(
    path,
    model: nn.Module,
    *,
    classes,
    frame_spec: dict | None = None,
    config: dict | None = None,
    epoch: int = 0,
    model_state: dict | None = None,
    **training_state,
) -> None:
    """Write ``model`` (which must carry a ``spec``, as every ``models.create_model`` network does), with
    ``model_state`` in place of its state dict when given (a network trained with batch-normalized logits saves
    the plain NSM they fold into)."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("only networks built by models.create_model can be checkpointed (they carry a spec)")
    atomic_torch_save(
        {
            "format": FORMAT,
            "version": VERSION,
            "project_version": project_version(),
            "model_spec": dict(spec),
            "model_state": model.state_dict() if model_state is None else model_state,
            "classes": list(classes),
            "frame_spec": frame_spec,
            "config": dict(config or {}),
            "epoch": int(epoch),
            **training_state,
        },
        path,
    )


def load_checkpoint(path, map_location="cpu") -> Checkpoint:
    """Rebuild the network of a checkpoint; clear errors for missing, foreign or damaged files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint (a run folder holds checkpoint.pt and best.pt)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an nsm-events checkpoint (missing format marker {FORMAT!r})")
    if state.get("version", 0) > VERSION:
        raise ValueError(
            f"{path}: checkpoint version {state['version']} is newer than this nsm-events reads ({VERSION})"
        )
    model = models.create_model(**state["model_spec"])
    model.load_state_dict(state["model_state"])
    return Checkpoint(
        model=model,
        classes=list(state["classes"]),
        frame_spec=state.get("frame_spec"),
        config=state.get("config", {}),
        epoch=state.get("epoch", 0),
        state=state,
    )
