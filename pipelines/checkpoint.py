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
    tensor_sha256   the checksum of every tensor in the checkpoint (``tensor_checksum``), written by every save and
                    checked by every load; checkpoints written before it have none and load unchecked

Only tensors and plain data. A checkpoint holds tensors, dicts (state dicts stay ``OrderedDict``s), lists,
tuples, str, int, float, bool and None, and nothing else, so it is read with torch's weights-only unpickler
(``torch.load(..., weights_only=True)``) and loading a file can never run code. ``save_checkpoint`` passes
what it writes through ``plain_data``, which turns paths into str, enums into their values, numpy scalars
into Python numbers, numpy arrays and tensor subclasses into tensors and other dict and tuple subclasses
(named tuples, ...) into dicts and tuples, and refuses anything else with a ``TypeError`` naming the field.

``load_checkpoint`` raises a ``ValueError`` naming the file for a file that holds any other object (the
weights-only unpickler refuses it before anything in it runs, and it is not loaded), for one that is not the
zip archive ``torch.save`` writes (truncated, damaged, or not a checkpoint; torch's legacy format of before
1.6 included, which this project never wrote), for one without the format marker or a required field, and
for a network whose parameters hold NaN or infinite values; also for one whose tensors are not the ones it was
saved with (``tensor_sha256``: a flipped bit in a weight, which torch's reader does not notice). Every field
this project has written since version 1 was already plain data, so checkpoints written before the weights-only
loader (or before the checksum) load unchanged.

Writes are atomic (temporary file in the same folder, then rename), so a crash never leaves a
half-written checkpoint in place of a good one.
"""

from __future__ import annotations

import enum
import hashlib
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch
from torch import nn

import models
from events.atomic import atomic_file
from events.errors import InputError, MissingInputError
from models.registry import check_parameter_count

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


def plain_data(obj, where: str = ""):
    """``obj`` as tensors and plain data only, which torch's weights-only unpickler reads (module docstring).

    Containers are rebuilt (an ``OrderedDict`` stays one and keeps a state dict's ``_metadata``, the module
    versions ``load_state_dict`` reads); tensors are not copied. ``where``, the dotted path of ``obj`` in the
    checkpoint, names it in the ``TypeError`` for a value that has no plain form.
    """
    if obj is None or type(obj) in (str, int, float, bool):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj if type(obj) is torch.Tensor else obj.detach().as_subclass(torch.Tensor)
    if isinstance(obj, enum.Enum):
        return plain_data(obj.value, where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return plain_data(obj.item(), where)
    if isinstance(obj, np.ndarray):
        return torch.tensor(obj)
    if isinstance(obj, Mapping):
        ordered = isinstance(obj, OrderedDict)
        out = (OrderedDict if ordered else dict)(
            (plain_data(key, where), plain_data(value, f"{where}.{key}" if where else str(key)))
            for key, value in obj.items()
        )
        if ordered and hasattr(obj, "_metadata"):
            out._metadata = plain_data(obj._metadata, f"{where}._metadata")
        return out
    if isinstance(obj, (list, tuple)):
        items = [plain_data(value, f"{where}.{i}") for i, value in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    raise TypeError(
        f"cannot write {where or 'the payload'} ({type(obj).__module__}.{type(obj).__qualname__}) into a "
        "checkpoint: it holds only tensors and plain data (dict, list, tuple, str, int, float, bool, None)"
    )


CHECKSUM_FIELD = "tensor_sha256"
HEADER_FIELDS = (
    "format",
    "version",
    "project_version",
    "model_spec",
    "model_state",
    "classes",
    "frame_spec",
    "config",
    "epoch",
    CHECKSUM_FIELD,
)  # what save_checkpoint writes from its own arguments, or computes


def _tensors(obj, where: str = ""):
    """Every tensor in the plain data ``obj`` with its path (dict keys and list positions, by ``repr``)."""
    if isinstance(obj, torch.Tensor):
        yield where, obj
    elif isinstance(obj, Mapping):
        for key, value in obj.items():
            yield from _tensors(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _tensors(value, f"{where}[{i}]")


def tensor_checksum(payload: Mapping) -> str:
    """SHA-256 (hex) of every tensor in a checkpoint's ``payload`` but the checksum field, in the order of their
    paths (``["model_state"]['conv1.weight']``, ...): each path, dtype and shape, then the tensor's bytes."""
    digest = hashlib.sha256()
    tensors = sorted(_tensors({k: v for k, v in payload.items() if k != CHECKSUM_FIELD}), key=lambda item: item[0])
    for where, tensor in tensors:
        digest.update(f"{where} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


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
    the plain NSM they fold into). Everything is written as tensors and plain data (``plain_data``); a value
    without a plain form is a ``TypeError`` naming its field, and nothing is written."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise InputError("only networks built by models.create_model can be checkpointed (they carry a spec)")
    payload = {
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
    }
    payload = plain_data(payload)
    payload[CHECKSUM_FIELD] = tensor_checksum(payload)
    atomic_torch_save(payload, path)


def rewrite_checkpoint(ck: Checkpoint, path, **fields) -> None:
    """Write ``ck`` to ``path`` with its model's current parameters and everything else it held (metadata, training
    state), ``fields`` added or replaced."""
    kept = {k: v for k, v in ck.state.items() if k not in HEADER_FIELDS}
    save_checkpoint(
        path, ck.model, classes=ck.classes, frame_spec=ck.frame_spec, config=ck.config, epoch=ck.epoch, **kept, **fields
    )


def read_checkpoint(path: Path, map_location="cpu") -> dict:
    """The dict of checkpoint file ``path``, read by torch's weights-only unpickler.

    ``FileNotFoundError`` for a missing file; ``ValueError`` naming the file for one that is not a zip archive
    written by ``torch.save`` or is damaged inside, for one holding objects other than tensors and plain data
    (refused unbuilt: loading it could run code), for one without the format marker or a required field, and for
    one whose tensors do not match the checksum they were saved with (``tensor_checksum``; none: not checked).
    """
    if not path.is_file():
        raise MissingInputError(f"{path}: no such checkpoint (a run folder holds checkpoint.pt and best.pt)")
    with open(path, "rb") as f:
        archive = zipfile.is_zipfile(f)
    if not archive:
        raise InputError(f"{path}: not a readable checkpoint (truncated, damaged, or not a file written by torch.save)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # the weights-only unpickler met an object it does not build
        raise InputError(refusal(path)) from None
    except Exception as err:  # torch raises several types for a damaged archive
        raise InputError(f"{path}: not a readable checkpoint ({type(err).__name__}: {one_line(err)})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"{path}: not an nsm-events checkpoint (missing format marker {FORMAT!r})")
    version = state.get("version", 0)
    if not isinstance(version, int):
        raise InputError(f"{path}: damaged checkpoint (its version {version!r} is not a number)")
    if version > VERSION:
        raise InputError(f"{path}: checkpoint version {version} is newer than this nsm-events reads ({VERSION})")
    for name, kind in (("model_spec", Mapping), ("model_state", Mapping), ("classes", list)):
        if not isinstance(state.get(name), kind):
            raise InputError(f"{path}: damaged checkpoint (its {name} is missing or not a {kind.__name__})")
    saved = state.get(CHECKSUM_FIELD)
    if saved is not None and saved != tensor_checksum(state):
        raise InputError(
            f"{path}: damaged checkpoint (its tensors do not match the {CHECKSUM_FIELD} checksum they were saved "
            "with: a weight or a training state changed on disk or in a copy); it was not loaded"
        )
    return state


def one_line(err: Exception, limit: int = 300) -> str:
    """``err``'s message on one line (torch's span several), cut to ``limit`` characters."""
    text = " ".join(str(err).split()) or "no detail"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def refusal(path: Path) -> str:
    """The message for a checkpoint file that the weights-only unpickler refused: a damaged pickle (one that
    cannot even be disassembled) is not readable; any other holds objects other than tensors and plain data,
    and the classes and functions it names that the loader does not allow are listed."""
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception as err:  # the static read fails on a damaged pickle, with several types
        return f"{path}: not a readable checkpoint (its pickle is damaged: {type(err).__name__}: {one_line(err)})"
    found = f" ({', '.join(names)})" if names else ""
    return (
        f"{path}: holds objects other than tensors and plain data{found}; it was not loaded, because loading it "
        "could run code"
    )


def non_finite(name: str, tensor: torch.Tensor) -> str | None:
    """``"<name> has <n> NaN values (of <numel>)"`` (or infinite, or NaN or infinite) for a floating or complex
    ``tensor`` holding such values, else None."""
    if not (tensor.is_floating_point() or tensor.is_complex()) or bool(torch.isfinite(tensor).all()):
        return None
    nan, bad = int(torch.isnan(tensor).sum()), int((~torch.isfinite(tensor)).sum())
    what = f"{nan} NaN" if nan == bad else f"{bad} NaN or infinite" if nan else f"{bad} infinite"
    return f"{name} has {what} values (of {tensor.numel()})"


def check_finite(path: Path, model_state: Mapping) -> None:
    """Refuse a ``model_state`` that is not a state dict of tensors, or holds NaN or infinite values (such a
    network predicts NaN): the ``ValueError`` names the file and the first offending entry."""
    for name, tensor in model_state.items():
        if not isinstance(tensor, torch.Tensor):
            raise InputError(f"{path}: damaged checkpoint (model_state[{name!r}] is not a tensor)")
        problem = non_finite(name, tensor)
        if problem is not None:
            raise InputError(f"{path}: the network's {problem}; a network with non-finite weights is not loaded")


def load_checkpoint(path, map_location="cpu") -> Checkpoint:
    """Rebuild the network of a checkpoint (``read_checkpoint``'s errors for missing, foreign, unsafe or damaged
    files; a ``ValueError`` naming the file for NaN or infinite weights, ``check_finite``, or for a ``model_spec`` that
    does not build a network (an unknown model or option, a value out of its range) or whose network would exceed
    ``models.registry.MAX_PARAMETERS``, checked on the meta device before anything is allocated)."""
    path = Path(path)
    state = read_checkpoint(path, map_location)
    check_finite(path, state["model_state"])
    try:
        with torch.device("meta"):
            shape_only = models.create_model(**state["model_spec"])
    except (TypeError, ValueError, RuntimeError) as err:  # RuntimeError: torch's, e.g. a negative size
        raise InputError(f"{path}: its model_spec does not build a network ({one_line(err)})") from None
    check_parameter_count(shape_only, f"{path}: its model_spec")
    model = models.create_model(**state["model_spec"])
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as err:
        raise InputError(f"{path}: its model_state does not fit its model_spec ({one_line(err)})") from None
    return Checkpoint(
        model=model,
        classes=list(state["classes"]),
        frame_spec=state.get("frame_spec"),
        config=state.get("config", {}),
        epoch=state.get("epoch", 0),
        state=state,
    )
