"""Run configuration (``pipelines.config``): presets, the paper's set-up, ``--set`` overrides, errors and
the config.toml round trip. Pure Python: no data, no training."""

from __future__ import annotations

import dataclasses

import pytest
import tomllib

import models
import nsm
from events import SensorSize
from pipelines import cli
from pipelines import config as configs
from pipelines.train_config import AugmentConfig

PRESETS = ("tiny", "tiny-digits", "gestures-allconv18", "gestures-speck", "dvsgesture-allconv18", "nmnist-cnn")


def parts(cfg: configs.Config):
    """Every dataclass of a configuration: the root, its four tables and train.augment."""
    return [cfg, cfg.data, cfg.model, cfg.train, cfg.train.augment, cfg.eval]


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_into_frozen_dataclasses(preset):
    assert set(PRESETS) <= set(configs.list_presets())
    cfg = configs.load_config(preset)
    assert cfg.name == preset and cfg.description
    expected = [
        configs.Config,
        configs.DataConfig,
        configs.ModelConfig,
        configs.TrainConfig,
        AugmentConfig,
        configs.EvalConfig,
    ]
    for part, cls in zip(parts(cfg), expected):
        assert type(part) is cls
        assert cls.__dataclass_params__.frozen
        first = dataclasses.fields(part)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(part, first, getattr(part, first))


def test_dvsgesture_preset_holds_the_papers_setup():
    cfg = configs.load_config("dvsgesture-allconv18")
    d, t = cfg.data, cfg.train
    # six 16 ms frames make one 96 ms clip, one merged polarity channel
    assert d.dataset == "dvsgesture"
    assert (d.time_window_us, d.frames_per_clip, d.polarity) == (16000, 6, "merge")
    assert d.frames_per_clip * d.time_window_us == 96_000
    # 128 x 128 sensor pooled 2 x 2 -> a 64 x 64 input
    assert d.downsample == 2 and d.crop is None
    assert d.frame_spec().output_shape(SensorSize(128, 128, 2)) == (1, 64, 64)
    assert (cfg.model.name, cfg.model.neuron) == ("allconvnet18", "bnsm")
    # Adam at 3e-4 for 200 epochs, the learning rate halved every 100 epochs
    assert t.lr == 3e-4 and t.epochs == 200
    assert t.lr_step_epochs == 100 and t.lr_gamma == 0.5
    # the original code's protocol: the first 108 bins of 16 ms from each gesture's start, 18 clips
    spec = d.frame_spec()
    assert (d.span, spec.span, spec.max_frames) == ("sample", "sample", 108)
    assert spec.max_frames // spec.frames_per_clip == 18


def test_nmnist_preset_holds_the_original_codes_protocol():
    cfg = configs.load_config("nmnist-cnn")
    spec = cfg.data.frame_spec()
    # ON events only, in 10 time bins over each digit: one 34 x 34 channel per bin
    assert (cfg.data.dataset, spec.polarity, spec.n_time_bins, spec.max_frames) == ("nmnist", "on", 10, None)
    assert spec.output_shape(SensorSize(34, 34, 2)) == (1, 34, 34) and spec.frames_per_sample == 10
    # Bernoulli p = 0.25 in the convolutions, 0.5 in the fully connected layer, as the network is built
    m = cfg.model
    assert (m.name, m.neuron, m.noise_p, m.options) == ("nmnist_cnn", "bnsm", 0.5, {"conv_noise_p": 0.25})
    net = models.create_model(m.name, neuron=m.neuron, noise_p=m.noise_p, noise_sigma=m.noise_sigma, **m.options)
    assert [(type(u).__name__, u.noise.p) for u in net if isinstance(u, (nsm.NSMConv2d, nsm.NSMLinear))] == [
        ("NSMConv2d", 0.25),
        ("NSMConv2d", 0.25),
        ("NSMLinear", 0.5),
    ]


def test_tiny_presets_keep_their_frames_and_one_noise():
    for preset in ("tiny", "tiny-digits"):
        cfg = configs.load_config(preset)
        spec = cfg.data.frame_spec()
        assert (spec.polarity, spec.max_frames) == ("merge", None), preset
        assert "conv_noise_p" not in cfg.model.options and cfg.model.noise_p == 0.5, preset


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.options.conv_noise_p=1.5", "model.options.conv_noise_p must be a finite number in (0, 1), got 1.5"),
        ("model.options.conv_noise_p=0", "model.options.conv_noise_p must be a finite number in (0, 1), got 0"),
        ("data.max_frames=4", "max_frames=4 holds no clip of frames_per_clip=6 frames"),
        ("data.max_frames=0", "max_frames must be None or an integer >= 1"),
        ("data.polarity=split", "polarity must be one of ('both', 'on', 'off', 'merge'), got 'split'"),
        ('train.logit_norm="layer"', "train.logit_norm must be one of ('batch', 'none'), got 'layer'"),
        (
            'train.forward="mean"',
            "train.forward must be one of ('expected', 'mean-input', 'sampled-logit', 'sampled'), got 'mean'",
        ),
        (
            'train.variance="sampled"',
            "train.variance must be one of ('exact', 'window-mean'), got 'sampled'",
        ),
        ("train.sampled_share=1.5", "train.sampled_share must be a finite number in [0, 1], got 1.5"),
        ("train.sampled_lr_factor=0", "train.sampled_lr_factor must be a finite number in (0, 1], got 0"),
        (
            'train.temperature_fit="test"',
            "train.temperature_fit must be one of ('validation', 'none'), got 'test'",
        ),
        ("train.gain_lr_factor=0", "train.gain_lr_factor must be a finite number > 0, got 0.0"),
        (
            'train.lr_schedule="linear"',
            "train.lr_schedule must be one of ('step', 'cosine'), got 'linear'",
        ),
        (
            'train.lr_ramp="linear"',
            "train.lr_ramp must be one of ('warmup', 'none'), got 'linear'",
        ),
        (
            'train.warmup_forward="expected"',
            "train.warmup_forward must be one of ('deterministic', 'mean-input'), got 'expected'",
        ),
    ],
)
def test_protocol_options_are_checked_when_the_config_loads(override, message):
    with pytest.raises(ValueError) as err:
        configs.load_config("dvsgesture-allconv18", [override])
    assert message in str(err.value) and "dvsgesture-allconv18.toml" in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.val_fraction=nan", "data.val_fraction must be a finite number in [0, 1), got nan"),
        ("data.downsample=0", "data: downsample must be an integer >= 1, got 0"),
        ("data.crop=[200, 200]", "data: crop 200x200 is larger than the 128x128 sensor"),
        ("data.frames_per_clip=0", "data: frames_per_clip must be None or an integer >= 1, got 0"),
        ("model.noise_p=nan", "model.noise_p must be a finite number in (0, 1), got nan"),
        ("model.noise_p=1", "model.noise_p must be a finite number in (0, 1), got 1.0"),
        ("model.noise_sigma=inf", "model.noise_sigma must be a finite number > 0, got inf"),
        ("model.options.sn_sigma=0", "model.options.sn_sigma must be a finite number > 0, got 0"),
        ("model.options.channels=[0, 0]", "model.options.channels[0] must be an integer in 1..16777216, got 0"),
        ("model.options.channels=[16, -2]", "model.options.channels[1] must be an integer in 1..16777216, got -2"),
        ("model.options.channels=[1.5, 2]", "model.options.channels[0] must be an integer in 1..16777216, got 1.5"),
        ("model.options.hidden=0", "model.options.hidden must be an integer in 1..16777216, got 0"),
        ("model.options.hidden=16777217", "model.options.hidden must be an integer in 1..16777216, got 16777217"),
        (
            "model.options.hidden=1000000",
            "model.options {'channels': [16, 32], 'hidden': 1000000}: nmnist_cnn would have 813015307 parameters, "
            "more than the 268435456 allowed",
        ),
        ("model.options.sigma=1e30", "model.options.sigma must be a finite number in (0, 1.67772e+07], got 1e+30"),
        (
            "model.options.noise_p=0.5",
            "model.options.noise_p is not an option: noise_p is a key of [model] itself, set model.noise_p instead",
        ),
        ("model.options.neuron='gnsm'", "model.options.neuron is not an option: neuron is a key of [model] itself"),
        ("model.options.num_classes=3", "model.options.num_classes is not an option: the network's num_classes"),
        ("model.options.hidden=1.5", "model 'nmnist_cnn' does not build with model.options"),
        ("model.options.kernel_size=40", "input size (32, 32) is too small for 2 conv40-pool2 stages"),
        ("model.options.width=0.5", "unknown option(s) ['width'] for model 'nmnist_cnn'"),
        ("train.epochs=0", "train.epochs must be an integer >= 1, got 0"),
        ("train.batch_size=-1", "train.batch_size must be an integer >= 1, got -1"),
        ("train.warmup_epochs=-1", "train.warmup_epochs must be an integer >= 0, got -1"),
        ("train.workers=-1", "train.workers must be an integer >= 0, got -1"),
        ("train.seed=-1", "train.seed must be an integer in 0..9223372036854775807, got -1"),
        ("train.lr=nan", "train.lr must be a finite number > 0, got nan"),
        ("train.lr=-1e-3", "train.lr must be a finite number > 0, got -0.001"),
        ("train.lr_gamma=inf", "train.lr_gamma must be a finite number > 0, got inf"),
        ("train.adam_eps=nan", "train.adam_eps must be a finite number >= 0, got nan"),
        ("train.weight_decay=-1", "train.weight_decay must be a finite number in [0, 3.40282e+38], got -1.0"),
        ("train.weight_decay=1e39", "train.weight_decay must be a finite number in [0, 3.40282e+38], got 1e+39"),
        ("train.lr=1e38", "train.lr x train.gain_lr_factor must be at most 3.403e+37"),
        ("train.gain_lr_factor=1e41", "train.lr x train.gain_lr_factor must be at most 3.403e+37"),
        ("train.augment.time_flip=2", "train.augment.time_flip must be a finite number in [0, 1], got 2.0"),
        ("train.augment.polarity_flip=nan", "train.augment.polarity_flip must be a finite number in [0, 1], got nan"),
        ("train.augment.jitter_px=-1", "train.augment.jitter_px must be an integer >= 0, got -1"),
        ("train.augment.jitter_px=32", "train.augment.jitter_px (frames of 32x32 pixels) must be an integer in 0..31"),
        ("eval.threshold=nan", "eval: Monte Carlo threshold must be in (0, 1], got nan"),
        ("eval.batch_size=0", "eval.batch_size must be an integer >= 1, got 0"),
    ],
)
def test_every_value_is_range_checked_when_the_config_loads(override, message):
    """Every number of every table (``tiny``: 32 x 32 frames, nmnist_cnn): finite and in its range, the message
    naming the key and the range; the network is built (on the meta device) so that options it does not take
    are errors before any data are binned."""
    with pytest.raises(ValueError) as err:
        configs.load_config("tiny", [override])
    assert message in str(err.value) and "tiny.toml" in str(err.value) and "\n" not in str(err.value)


def test_values_at_the_ends_of_their_ranges_are_accepted():
    cfg = configs.load_config(
        "tiny",
        [
            "train.augment.jitter_px=31",
            "train.augment.time_flip=1",
            "train.augment.polarity_flip=0",
            f"train.seed={2**63 - 1}",
            "train.lr=3e37",
            "train.adam_eps=0",
            "train.workers=0",
            "data.val_fraction=0",
            "eval.threshold=1",
        ],
    )
    assert cfg.train.augment.jitter_px == 31 and cfg.train.seed == 2**63 - 1 and cfg.train.lr == 3e37


def test_set_overrides_parse_values_as_toml():
    cfg = configs.load_config(
        "tiny",
        [
            "train.lr=1e-3",  # float
            "train.epochs=5",  # int
            "train.amp=false",  # bool
            "model.neuron=gnsm",  # a bare word is a string
            'model.name="nmnist_cnn"',  # a quoted TOML string
            "data.crop=[96, 96]",  # array
            "train.augment.jitter_px=3",  # nested table
            "train.augment.time_flip=0.5",
            "model.options.channels=[8, 16]",  # the open table handed to the model builder
            "model.options.hidden=64",
            "description=changed",  # a top-level key
        ],
    )
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.epochs == 5 and isinstance(cfg.train.epochs, int)
    assert cfg.train.amp is False
    assert cfg.model.neuron == "gnsm" and cfg.model.name == "nmnist_cnn"
    assert cfg.data.crop == [96, 96]
    assert cfg.train.augment == AugmentConfig(jitter_px=3, time_flip=0.5, polarity_flip=0.0)
    assert cfg.model.options == {"channels": [8, 16], "hidden": 64}
    assert cfg.description == "changed"
    # untouched keys keep the preset's values, and the preset itself is not changed
    fresh = configs.load_config("tiny")
    assert cfg.train.batch_size == fresh.train.batch_size == 32
    assert (
        fresh.train.lr == 1e-3
        and fresh.train.epochs == 8
        and fresh.model.options == {"channels": [16, 32], "hidden": 256}
    )
    assert fresh.train.augment.jitter_px == 1


def test_cli_collects_repeated_set_options():
    args = cli.build_parser().parse_args(
        [
            "train",
            "--config",
            "tiny",
            "--data",
            "d",
            "--out",
            "o",
            "--set",
            "train.lr=2e-3",
            "--set",
            "model.options.hidden=32",
        ]
    )
    cfg = configs.load_config(args.config, args.set)
    assert cfg.train.lr == 2e-3 and cfg.model.options["hidden"] == 32


@pytest.mark.parametrize(
    "override, names, valid",
    [
        (
            "train.lrr=1",
            ["train.lrr"],
            [
                "adam_eps",
                "amp",
                "augment",
                "batch_size",
                "epochs",
                "lr",
                "lr_gamma",
                "lr_step_epochs",
                "record_every",
                "seed",
                "weight_decay",
                "workers",
            ],
        ),
        ("train.augment.flip=0.5", ["train.augment.flip"], ["jitter_px", "polarity_flip", "time_flip"]),
        (
            "data.frames=6",
            ["data.frames"],
            ["dataset", "downsample", "frames_per_clip", "n_time_bins", "time_window_us", "val_fraction"],
        ),
        ("eval.k=3", ["eval.k"], ["adaptive", "max_samples", "min_samples", "samples", "threshold"]),
        ("optim.lr=1", ["optim"], ["data", "eval", "model", "train"]),
    ],
)
def test_unknown_keys_and_tables_are_errors_listing_the_valid_ones(override, names, valid):
    with pytest.raises(ValueError) as err:
        configs.load_config("tiny", [override])
    message = str(err.value)
    assert "tiny.toml" in message  # names the configuration it came from
    for name in names + valid:
        assert name in message


def test_unknown_key_in_a_toml_file_is_an_error(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[train]\nepochs = 3\nlearning_rate = 0.1\n")
    with pytest.raises(ValueError, match=r"train\.learning_rate.*valid keys in \[train\]:.*\blr\b") as err:
        configs.load_config(str(path))
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b'[train]\nepochs = 3\nname = "\xff\xfe"\n', b"\x89HDF\r\n\x1a\n\x00\x94"])
def test_a_configuration_file_that_is_not_utf8_toml_is_one_error_naming_it(tmp_path, content):
    """TOML is UTF-8: a file with other bytes (a binary file given by mistake) is an InputError naming it."""
    from events.errors import InputError

    path = tmp_path / "mine.toml"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not valid TOML") as err:
        configs.load_config(str(path))
    assert str(path) in str(err.value)


def test_malformed_overrides_and_values_are_clear_errors():
    with pytest.raises(ValueError, match="key=value"):
        configs.load_config("tiny", ["train.lr"])
    with pytest.raises(ValueError, match="'lr' is not a table"):
        configs.load_config("tiny", ["train.lr.x=1"])
    with pytest.raises(ValueError, match="train.augment must be a table"):
        configs.load_config("tiny", ["train.augment=3"])
    with pytest.raises(ValueError, match="model.neuron must be one of"):
        configs.load_config("tiny", ["model.neuron=relu"])
    with pytest.raises(ValueError, match="data.val_fraction"):
        configs.load_config("tiny", ["data.val_fraction=1.5"])
    with pytest.raises(FileNotFoundError, match="presets: .*tiny"):
        configs.load_config("no-such-preset")


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.epochs=2.5", "train.epochs must be of type int, got 2.5"),
        ("train.lr=fast", "train.lr must be of type float, got 'fast'"),
        ("train.amp=1", "train.amp must be of type bool, got 1"),
        ("train.augment.jitter_px=true", "train.augment.jitter_px must be of type int, got True"),
        ("data.crop=[1.5, 2]", "data.crop must be of type list[int] | None, got [1.5, 2]"),
        ("model.options=3", "model.options must be of type dict"),
        ("description=[1]", "description must be of type str"),
    ],
)
def test_values_of_the_wrong_type_are_errors_naming_key_and_type(override, message):
    with pytest.raises(ValueError) as err:
        configs.load_config("tiny", [override])
    assert message in str(err.value) and "tiny.toml" in str(err.value)


def test_an_integer_is_accepted_for_a_float():
    cfg = configs.load_config("tiny", ["train.lr=1", "data.val_fraction=0"])
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert cfg.data.val_fraction == 0.0 and isinstance(cfg.data.val_fraction, float)


@pytest.mark.parametrize(
    "preset, overrides",
    [
        ("tiny", []),
        ("tiny-digits", []),
        ("dvsgesture-allconv18", []),
        ("nmnist-cnn", []),
        (
            "tiny",
            [
                "data.crop=[96, 96]",
                "train.augment.time_flip=0.5",
                "model.options.channels=[4, 8]",
                "model.neuron=gnsm",
                "train.lr=2.5e-4",
                "eval.adaptive=true",
            ],
        ),
    ],
)
def test_resolved_config_round_trips_through_toml(preset, overrides, tmp_path):
    cfg = configs.load_config(preset, overrides)
    text = cfg.to_toml()
    assert configs.from_dict(tomllib.loads(text)) == cfg
    # the same through a config.toml file, as a run folder holds it
    path = tmp_path / "config.toml"
    path.write_text(text)
    assert configs.load_config(str(path)) == cfg


def test_each_kind_trains_its_own_epochs_unless_epochs_are_set():
    """``train.kind_epochs``: the preset's twin converges in 30 epochs (docs/training-study.md, section 13); switching
    the preset to it trains that many, an explicit ``train.epochs`` holds for every kind, a kind not named keeps
    ``train.epochs``; and the resolved configuration round-trips."""
    preset = configs.load_config("gestures-allconv18")
    assert (preset.train.epochs, preset.train.kind_epochs) == (24, {"dcnn": 30})
    twin = configs.load_config("gestures-allconv18", ["model.neuron=dcnn"])
    assert (twin.model.neuron, twin.train.epochs) == ("dcnn", 30)
    assert configs.from_dict(tomllib.loads(twin.to_toml())).train.epochs == 30
    explicit = configs.load_config("gestures-allconv18", ["model.neuron=dcnn", "train.epochs=5"])
    assert (explicit.train.epochs, explicit.train.kind_epochs) == (5, {})
    assert preset.with_neuron("dcnn").train.epochs == 30 and preset.with_neuron("gnsm").train.epochs == 24
    assert preset.with_neuron("dcnn").model.neuron == "dcnn"


@pytest.mark.parametrize(
    "table, message",
    [("{foo = 3}", "unknown neuron kind 'foo'"), ("{dcnn = 0}", "kind_epochs.dcnn must be an integer >= 1")],
)
def test_kind_epochs_name_known_kinds_and_whole_epochs(table, message):
    with pytest.raises(ValueError, match=message):
        configs.load_config("gestures-allconv18", [f"train.kind_epochs={table}"])
