"""Run configuration: TOML presets in ``pipelines/presets/`` (package data) loaded into frozen dataclasses.

A configuration has four tables, each a frozen dataclass below: ``[data]`` (which data set and how
its events become frames), ``[model]`` (``models.create_model`` arguments), ``[train]`` and
``[eval]``. A preset is a TOML file holding any subset of them (missing keys take the defaults
here); ``--set table.key=value`` overrides one key, the value parsed as TOML (``1e-3``,
``true``, ``[16, 32]``, ``"gnsm"``; a bare word is taken as a string). Unknown tables or keys are
an error that lists the valid ones, and a value of another type than the field's annotation an
error naming the key and the type (an integer is taken for a float); ``[model.options]`` is the one
open table: it is handed to the model builder, which validates it.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w
import tomllib
import torch

import events
import models
from events.errors import InputError, MissingInputError
from events.types import check_float, check_int
from models.registry import NEURON_OPTIONS, check_parameter_count
from nsm.neurons import NEURON_KINDS, neuron_kind
from nsm.sampling import MCSettings

from .train_config import TrainConfig

CONFIG_DIR = Path(__file__).resolve().parent / "presets"
DATASETS = ("dvsgesture", "nmnist")


@dataclass(frozen=True)
class DataConfig:
    """The data set and its frames (``events.FrameSpec`` fields: a preset sets exactly one slicing mode,
    ``n_time_bins`` or ``time_window_us``; ``polarity`` is ``"both"``, ``"on"``, ``"off"`` or ``"merge"``;
    with ``frames_per_clip`` each sample is cut into non-overlapping clips of that many frames;
    ``max_frames`` keeps only the first that many frames of each sample, before clips are cut, so a
    sample gives at most ``max_frames // frames_per_clip`` clips). ``val_fraction``: share of the
    training *recordings' samples* (whole gestures or digits, never single clips, so no clip of a
    validation gesture is trained on) held out for validation and ``best.pt``; 0 validates on nothing
    and keeps the epoch with the lowest training loss as best.
    """

    dataset: str = "dvsgesture"
    n_time_bins: int | None = None
    time_window_us: int | None = None
    polarity: str = "merge"
    downsample: int = 1
    crop: list[int] | None = None
    frames_per_clip: int | None = None
    max_frames: int | None = None
    span: str = "events"
    val_fraction: float = 0.1

    def frame_spec(self) -> events.FrameSpec:
        return events.FrameSpec(
            n_time_bins=self.n_time_bins,
            time_window_us=self.time_window_us,
            polarity=self.polarity,
            downsample=self.downsample,
            crop=tuple(self.crop) if self.crop else None,
            frames_per_clip=self.frames_per_clip,
            max_frames=self.max_frames,
            span=self.span,
        )

    def validate(self) -> None:
        """The data set is known, ``val_fraction`` in [0, 1), the frame fields valid (``events.FrameSpec``
        checks them), the crop inside the sensor and the number of frames of an item fixed."""
        if self.dataset not in DATASETS:
            raise InputError(f"data.dataset must be one of {DATASETS}, got {self.dataset!r}")
        check_float("data.val_fraction", self.val_fraction, 0, 1, open_max=True)
        _item_shape(self)


@dataclass(frozen=True)
class ModelConfig:
    """``models.create_model(name, neuron=..., noise_p=..., noise_sigma=..., **options)``; sizes follow from
    the data. ``options`` holds the architecture's keywords and the neuron options without a key here:
    ``conv_noise_p`` (the convolutions' own Bernoulli p, ``noise_p`` then being the fully connected
    units') and ``sn_sigma``. ``validate`` builds the neuron kind, so a bad noise parameter is an error
    when the configuration loads, not after the data are binned."""

    MAX_OPTION = 1 << 24
    """The largest size or scale option (``Config.validate`` then caps the network's parameter count)."""

    name: str = "allconvnet18"
    neuron: str = "bnsm"
    noise_p: float = 0.5
    noise_sigma: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """The model and neuron kind are known; ``noise_p`` and ``conv_noise_p`` are in (0, 1), ``noise_sigma``
        and ``sn_sigma`` finite and > 0; every other option is a size or a scale of the architecture: an integer
        in 1..``MAX_OPTION``, a finite number in (0, ``MAX_OPTION``], or a list of such integers
        (``Config.validate`` then builds the network, which checks that the architecture takes them). An option
        named like a key of ``[model]`` (``noise_p``, ...) or a size the data give (``in_channels``, ...) is
        refused with what to set instead."""
        if self.name not in models.list_models():
            raise InputError(f"model.name must be one of {models.list_models()}, got {self.name!r}")
        if self.neuron not in NEURON_KINDS:
            raise InputError(f"model.neuron must be one of {list(NEURON_KINDS)}, got {self.neuron!r}")
        check_float("model.noise_p", self.noise_p, 0, 1, open_min=True, open_max=True)
        check_float("model.noise_sigma", self.noise_sigma, 0, open_min=True)
        for key, value in self.options.items():
            where = f"model.options.{key}"
            if key in (f.name for f in fields(self)):
                raise InputError(f"{where} is not an option: {key} is a key of [model] itself, set model.{key} instead")
            if key in ("in_channels", "input_size", "num_classes"):
                raise InputError(f"{where} is not an option: the network's {key} follows from the data")
            if key == "conv_noise_p":
                check_float(where, value, 0, 1, open_min=True, open_max=True)
            elif key == "sn_sigma":
                check_float(where, value, 0, open_min=True)
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    check_int(f"{where}[{i}]", v, 1, self.MAX_OPTION)
            elif isinstance(value, int):
                check_int(where, value, 1, self.MAX_OPTION)
            else:
                check_float(where, value, 0, self.MAX_OPTION, open_min=True)
        neuron_kind(
            self.neuron,
            noise_p=self.noise_p,
            noise_sigma=self.noise_sigma,
            **{k: v for k, v in self.options.items() if k in NEURON_OPTIONS},
        )


@dataclass(frozen=True)
class EvalConfig:
    """Monte Carlo prediction (docs/design.md section 3; ``nsm.MCSettings``, whose defaults these are):
    ``samples`` fixed K, or ``adaptive`` with ``threshold``, ``min_samples``, ``max_samples``; ``precision``
    (``nsm.sampling.PRECISIONS``: ``"float32"``, ``"bfloat16"`` for the passes' products under bfloat16 autocast,
    ``"int8"`` for spikes and int8 weights); ``batch_size`` inputs per step."""

    samples: int = MCSettings.samples
    adaptive: bool = MCSettings.adaptive
    threshold: float = MCSettings.threshold
    min_samples: int = MCSettings.min_samples
    max_samples: int = MCSettings.max_samples
    precision: str = MCSettings.precision
    batch_size: int = 64

    @property
    def mc(self) -> MCSettings:
        return MCSettings(
            samples=self.samples,
            adaptive=self.adaptive,
            threshold=self.threshold,
            min_samples=self.min_samples,
            max_samples=self.max_samples,
            precision=self.precision,
        )

    def validate(self) -> None:
        try:
            _ = self.mc  # constructing the settings checks each of them
        except ValueError as err:
            raise InputError(f"eval: {err}") from None
        check_int("eval.batch_size", self.batch_size, 1)


@dataclass(frozen=True)
class Config:
    name: str = "custom"
    description: str = ""
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    def validate(self) -> Config:
        """Each table's own checks, then those across tables: the jitter is smaller than the frames, and the
        network builds for the data's items and classes (on the meta device: no memory, no time) with at most
        ``models.registry.MAX_PARAMETERS`` parameters, so an option the architecture does not take, a value of the
        wrong type, frames too small for it or a network too large is an error here, not after the data are
        binned. Returns ``self``."""
        for part in (self.data, self.model, self.train, self.eval):
            part.validate()
        channels, h, w = _item_shape(self.data)
        classes = len(_dataset(self.data).classes)
        check_int(f"train.augment.jitter_px (frames of {w}x{h} pixels)", self.train.augment.jitter_px, 0, min(h, w) - 1)
        m = self.model
        try:
            with torch.device("meta"):
                net = models.create_model(
                    m.name,
                    in_channels=channels,
                    input_size=(h, w),
                    num_classes=classes,
                    neuron=m.neuron,
                    noise_p=m.noise_p,
                    noise_sigma=m.noise_sigma,
                    **m.options,
                )
        except (TypeError, ValueError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise InputError(f"model {m.name!r} does not build with model.options {m.options}: {first}") from err
        check_parameter_count(net, f"model.options {m.options}")
        if "weight_bits" in m.options and self.train.logit_norm != "none":
            raise InputError(
                'model.options.weight_bits needs train.logit_norm = "none": batch-normalized logits train off the '
                "weight grid (they are folded into the units only after training)"
            )
        return self

    def with_neuron(self, kind: str) -> Config:
        """This configuration for ``kind`` units, trained for ``train.kind_epochs[kind]`` epochs where the table
        names the kind (each kind to its own convergence), else ``train.epochs``."""
        epochs = self.train.kind_epochs.get(kind, self.train.epochs)
        return dataclasses.replace(
            self,
            model=dataclasses.replace(self.model, neuron=kind),
            train=dataclasses.replace(self.train, epochs=epochs),
        ).validate()

    def to_dict(self) -> dict:
        """Plain nested dict (``None`` values omitted, as TOML has no null)."""
        return _drop_none(dataclasses.asdict(self))

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _dataset(data: DataConfig) -> type:
    """The data set class of ``data.dataset``: ``events.DVSGesture`` or ``events.NMNIST`` (their sensor, classes)."""
    return events.DVSGesture if data.dataset == "dvsgesture" else events.NMNIST


def _item_shape(data: DataConfig) -> tuple[int, int, int]:
    """``(channels, height, width)`` of the items ``data`` makes of its data set's recordings (frames per item x
    polarity channels, as ``pipelines.data.load_data`` stacks them); a ``ValueError`` starting ``data:`` for
    invalid frame fields, a crop larger than the sensor, or an item length that depends on the recording."""
    try:
        spec = data.frame_spec()
        p, h, w = spec.output_shape(_dataset(data).sensor_size)
    except ValueError as err:
        raise InputError(f"data: {err}") from None
    frames = spec.frames_per_clip or spec.frames_per_sample
    if frames is None:
        raise InputError("data: the frame spec must fix the number of frames per item (frames_per_clip or n_time_bins)")
    return frames * p, h, w


def _drop_none(d):
    if isinstance(d, dict):
        return {k: _drop_none(v) for k, v in d.items() if v is not None}
    return d


def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def _fits(value, hint) -> bool:
    """Whether ``value`` (parsed TOML) has the annotated type; an integer counts as a float."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, (int, float))
    if origin in (list, dict):
        return isinstance(value, origin) and (origin is dict or all(_fits(v, args[0]) for v in value))
    return isinstance(value, hint)


def _typed(cls, key: str, value, where: str):
    """``value`` checked against the annotation of field ``key`` of ``cls`` (integers for floats made floats)."""
    hint = typing.get_type_hints(cls)[key]
    if not _fits(value, hint):
        name = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
        raise InputError(f"{where} must be of type {name}, got {value!r}")
    return float(value) if hint is float else value


def _build(cls, table: dict, where: str):
    """Instantiate dataclass ``cls`` from ``table``; unknown keys list the valid ones, wrong types are named."""
    if not isinstance(table, dict):
        raise InputError(f"{where} must be a table, got {type(table).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise InputError(
            f"unknown key(s) {', '.join(where + '.' + k for k in unknown)}; "
            f"valid keys in [{where}]: {', '.join(sorted(known))}"
        )
    kw = {}
    for key, value in table.items():
        sub = known[key].default
        if dataclasses.is_dataclass(sub):
            value = _build(type(sub), value, f"{where}.{key}")
        else:
            value = _typed(cls, key, value, f"{where}.{key}")
        kw[key] = value
    return cls(**kw)


def from_dict(d: dict, source: str = "config") -> Config:
    """A validated ``Config`` from a nested dict (a parsed TOML file)."""
    try:
        tables = dict(d)
        top = {f.name: f for f in fields(Config)}
        unknown = sorted(set(tables) - set(top))
        if unknown:
            raise InputError(f"unknown table(s) or key(s) {unknown}; valid: {sorted(top)}")
        kw = {}
        for key, value in tables.items():
            default = top[key].default
            kw[key] = (
                _build(type(default), value, key)
                if dataclasses.is_dataclass(default)
                else _typed(Config, key, value, key)
            )
        return Config(**kw).validate()
    except (TypeError, ValueError) as err:
        raise InputError(f"{source}: {err}") from None


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"train.lr=1e-3"`` -> (["train", "lr"], 0.001); the value is TOML, a bare word a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--set expects key=value (e.g. train.lr=1e-3), got {item!r}")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def apply_overrides(d: dict, overrides: list[str]) -> dict:
    """A copy of nested dict ``d`` with each ``key=value`` override set (tables created as needed)."""
    d = copy.deepcopy(d)
    for item in overrides:
        path, value = parse_override(item)
        node = d
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set {item}: {part!r} is not a table")
        node[path[-1]] = value
    return d


def resolve_source(name_or_path: str) -> Path:
    """A preset name (``tiny``) or a path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise MissingInputError(f"{path}: no such configuration file")
        return path
    preset = CONFIG_DIR / f"{name_or_path}.toml"
    if not preset.is_file():
        raise MissingInputError(
            f"no preset named {name_or_path!r}; presets: {', '.join(list_presets())} (or pass a path to a .toml file)"
        )
    return preset


def load_config(name_or_path: str, overrides: list[str] = ()) -> Config:
    """Load a preset or TOML file, apply ``--set`` overrides, validate."""
    path = resolve_source(name_or_path)
    try:
        d = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not valid TOML ({err})") from None
    d.setdefault("name", path.stem)
    d = apply_overrides(d, list(overrides))
    if any(parse_override(item)[0] == ["train", "epochs"] for item in overrides):
        d.get("train", {}).pop("kind_epochs", None)  # explicit epochs hold for every kind (TrainConfig)
    cfg = from_dict(d, str(path))
    return cfg.with_neuron(cfg.model.neuron) if cfg.model.neuron in cfg.train.kind_epochs else cfg
