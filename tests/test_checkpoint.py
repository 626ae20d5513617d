"""Checkpoints hold only tensors and plain data and load with torch's weights-only unpickler: a file that would
run code when unpickled is refused unrun, by the library and by the ``nsm`` command; so are damaged files and
networks with NaN or infinite weights, each with an error naming the file."""

from __future__ import annotations

import collections
import enum
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import models
from pipelines import cli
from pipelines.checkpoint import FORMAT, VERSION, load_checkpoint, plain_data, project_version, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
CLASSES = [str(d) for d in range(10)]
RUN_CHECKPOINTS = ("checkpoint.pt", "best.pt")


def small_net():
    torch.manual_seed(0)
    return models.create_model("nmnist_cnn", neuron="bnsm", hidden=16)


class TouchOnLoad:
    """Unpickling it creates ``marker``: what a hostile checkpoint could do with any command instead."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (Path(self.marker),)


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint like any other, but for one field whose unpickling creates ``marker``."""
    net = small_net()
    torch.save(
        {
            "format": FORMAT,
            "version": VERSION,
            "project_version": project_version(),
            "model_spec": dict(net.spec),
            "model_state": net.state_dict(),
            "classes": CLASSES,
            "frame_spec": None,
            "config": {"note": TouchOnLoad(marker)},
            "epoch": 1,
        },
        path,
    )
    return path


def test_the_hostile_payload_runs_when_unpickled_unsafely(tmp_path):
    """The refusals below are not vacuous: torch's full unpickler does run the payload."""
    marker = tmp_path / "ran"
    torch.load(hostile_checkpoint(tmp_path / "bad.pt", marker), weights_only=False)
    assert marker.exists()


def test_a_checkpoint_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    bad = hostile_checkpoint(tmp_path / "bad.pt", marker)
    with pytest.raises(ValueError) as info:
        load_checkpoint(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: holds objects other than tensors and plain data")
    assert "pathlib" in message and "could run code" in message
    assert not marker.exists()


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_nsm_refuses_a_checkpoint_that_would_run_code_in_one_line(tmp_path, capsys, command):
    marker = tmp_path / "ran"
    if command == "evaluate":
        bad = hostile_checkpoint(tmp_path / "bad.pt", marker)
        argv = ["evaluate", "--checkpoint", str(bad), "--data", str(tmp_path / "data")]
    else:  # --resume reads the run folder's checkpoint.pt
        (tmp_path / "run").mkdir()
        bad = hostile_checkpoint(tmp_path / "run" / "checkpoint.pt", marker)
        argv = ["train", "--resume", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nsm {command}: error: {bad}: holds objects other than tensors and plain data")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not marker.exists()


def test_the_nsm_command_refuses_it_in_a_fresh_process(tmp_path):
    marker = tmp_path / "ran"
    bad = hostile_checkpoint(tmp_path / "bad.pt", marker)
    out = tmp_path / "model.nir"
    res = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "export", "--checkpoint", str(bad), "--out", str(out)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.startswith(f"nsm export: error: {bad}: holds objects other than tensors and plain data")
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    assert not marker.exists() and not out.exists()


def test_the_trainers_checkpoints_are_plain_data(tiny_run):
    """Both of a run's checkpoints come through the safe loader, checkpoint.pt's training state included."""
    states = {name: torch.load(tiny_run / name, map_location="cpu", weights_only=True) for name in RUN_CHECKPOINTS}
    for name, state in states.items():
        assert state["format"] == FORMAT
        assert load_checkpoint(tiny_run / name).epoch == state["epoch"]
    for field in ("optimizer_state", "scheduler_state", "rng_state", "config", "frame_spec"):
        assert states["checkpoint.pt"][field], field


def test_a_checkpoint_written_before_the_safe_loader_still_loads(tmp_path):
    """What save_checkpoint wrote before it converted to plain data: torch.save of its dict as it was given."""
    net = small_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2)
    net(torch.rand(2, net.spec["in_channels"], *net.spec["input_size"])).sum().backward()
    optimizer.step()
    scheduler.step()
    old, rng = tmp_path / "old.pt", torch.get_rng_state()
    torch.save(
        {
            "format": FORMAT,
            "version": VERSION,
            "project_version": "0.1.0",
            "model_spec": dict(net.spec),
            "model_state": net.state_dict(),
            "classes": CLASSES,
            "frame_spec": {"n_time_bins": 2, "binary": False},
            "config": {"train": {"lr": 1e-3, "epochs": 2}},
            "epoch": 1,
            "optimizer_state": optimizer.state_dict(),
            "scheduler_state": scheduler.state_dict(),
            "rng_state": {"torch": rng},
            "best_accuracy": -float("inf"),
            "scaler_state": None,
            "logit_norm": None,
            "train_model_state": None,
            "init_from": None,
        },
        old,
    )
    ck = load_checkpoint(old)  # nor a checksum: it loads unchecked
    assert "tensor_sha256" not in ck.state
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in ck.model.state_dict().items())
    assert ck.state["optimizer_state"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert torch.equal(ck.state["rng_state"]["torch"], rng)


class Mode(enum.Enum):
    FAST = "fast"


Pair = collections.namedtuple("Pair", "low high")


def test_save_turns_what_it_is_given_into_plain_data(tmp_path):
    given = {
        "path": Path("/runs/a"),
        "mode": Mode.FAST,
        "scale": np.float64(0.5),
        "count": np.int64(3),
        "table": np.arange(3),
        "range": Pair(1, 2),
    }
    path = tmp_path / "ck.pt"
    save_checkpoint(path, small_net(), classes=CLASSES, config=given, init_from=Path("/runs/source.pt"))
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = state["config"]
    assert config["path"] == "/runs/a" and config["mode"] == "fast" and state["init_from"] == "/runs/source.pt"
    assert type(config["scale"]) is float and type(config["count"]) is int and config["range"] == (1, 2)
    assert type(config["range"]) is tuple and torch.equal(config["table"], torch.arange(3))
    assert state["model_state"]._metadata == small_net().state_dict()._metadata  # module versions kept


def test_save_refuses_what_has_no_plain_form_and_writes_nothing(tmp_path):
    path = tmp_path / "ck.pt"
    with pytest.raises(TypeError, match=r"cannot write config\.train\.hook\.1 \(builtins\.object\)"):
        save_checkpoint(path, small_net(), classes=CLASSES, config={"train": {"hook": [1, object()]}})
    assert not path.exists()
    assert plain_data({"a": (1, [None, True, "x"])}) == {"a": (1, [None, True, "x"])}


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_with_the_parameter_named(tmp_path, bad):
    net = small_net()
    state = net.state_dict()
    name = list(state)[2]
    state[name].view(-1)[1] = bad
    path = tmp_path / "ck.pt"
    save_checkpoint(path, net, classes=CLASSES, model_state=state)
    what = "1 NaN" if bad != bad else "1 infinite"
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: the network's {name} has {what} values")


def flip_one_bit(path: Path, pick) -> None:
    """Flip the lowest bit of one element of the float32 tensor ``pick(state)`` of the saved file (finite still) and
    save it back with torch.save, the checksum left as it was."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    pick(state).view(torch.int32).view(-1)[3] ^= 1
    torch.save(state, path)


FLIPPED = {
    "a weight": lambda state: state["model_state"]["1.weight"],
    "the optimizer's state": lambda state: state["optimizer_state"]["state"][0]["exp_avg"],
}


@pytest.mark.parametrize("where", list(FLIPPED))
def test_a_flipped_bit_in_any_tensor_is_refused_naming_the_file(tmp_path, where, capsys):
    net = small_net()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.rand(2, net.spec["in_channels"], *net.spec["input_size"])).sum().backward()
    optimizer.step()
    path = tmp_path / "ck.pt"
    save_checkpoint(path, net, classes=CLASSES, optimizer_state=optimizer.state_dict())
    load_checkpoint(path)
    flip_one_bit(path, FLIPPED[where])
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: damaged checkpoint (its tensors do not match the tensor_sha256")
    out = tmp_path / "model.nir"
    assert cli.main(["export", "--checkpoint", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"nsm export: error: {path}: damaged checkpoint")
    assert not out.exists()


def test_every_save_and_rewrite_writes_the_checksum_of_what_it_holds(tmp_path):
    from pipelines.checkpoint import CHECKSUM_FIELD, rewrite_checkpoint, tensor_checksum

    path, again = tmp_path / "ck.pt", tmp_path / "again.pt"
    save_checkpoint(path, small_net(), classes=CLASSES, extra={"table": torch.arange(4)})
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state[CHECKSUM_FIELD] == tensor_checksum(state)
    ck = load_checkpoint(path)
    with torch.no_grad():
        next(ck.model.parameters()).add_(1.0)
    rewrite_checkpoint(ck, again, temperature={"t": 1.5})
    rewritten = torch.load(again, map_location="cpu", weights_only=True)
    assert rewritten[CHECKSUM_FIELD] == tensor_checksum(rewritten) != state[CHECKSUM_FIELD]
    assert load_checkpoint(again).state["temperature"] == {"t": 1.5}
    rewritten["extra"]["table"][0] = 7  # a tensor outside the network counts too
    assert tensor_checksum(rewritten) != rewritten[CHECKSUM_FIELD]


def test_a_model_spec_too_large_to_build_is_refused_before_anything_is_allocated(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, small_net(), classes=CLASSES)
    state = torch.load(path, weights_only=True)
    state["model_spec"]["hidden"] = 10**9  # 1.6 TB of weights, were it built
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    with torch.device("meta"):
        n = sum(p.numel() for p in models.create_model(**state["model_spec"]).parameters())
    assert n > 10**9 and str(info.value) == (
        f"{path}: its model_spec: nmnist_cnn would have {n} parameters, more than the 268435456 allowed"
    )


def test_nsm_export_refuses_nan_weights_in_one_line(tmp_path, capsys):
    net = small_net()
    state = net.state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name].fill_(float("nan"))
    path = tmp_path / "ck.pt"
    save_checkpoint(path, net, classes=CLASSES, model_state=state)
    out = tmp_path / "model.nir"
    assert cli.main(["export", "--checkpoint", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"nsm export: error: {path}: the network's {name} has ") and "NaN" in err
    assert not out.exists()


def damaged_pickle(good: Path, path: Path) -> Path:
    """``good``'s zip archive with its pickle overwritten by bytes that are no pickle at all."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, b"\xff" * len(data) if info.filename.endswith("data.pkl") else data)
    return path


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "pickle"])
def test_damaged_files_are_refused_naming_the_file(tmp_path, damage):
    good = tmp_path / "good.pt"
    save_checkpoint(good, small_net(), classes=CLASSES)
    data = good.read_bytes()
    path = tmp_path / "bad.pt"
    if damage == "pickle":
        damaged_pickle(good, path)
    else:
        path.write_bytes(
            {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a checkpoint" * 64}[damage]
        )
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: not a readable checkpoint (")


@pytest.mark.parametrize(
    "change, problem",
    [
        ({"name": "resnet"}, "unknown model 'resnet'"),
        ({"weight_bits": 1000}, "weight_bits must be a whole number from 2 to 16"),
        ({"channels": [16, -2]}, "negative dimension -2"),
        ({"surprise": 1}, "unknown option(s) ['surprise']"),
    ],
)
def test_a_model_spec_that_does_not_build_is_one_error_naming_the_file(tmp_path, change, problem):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, small_net(), classes=CLASSES)
    state = torch.load(path, weights_only=True)
    state["model_spec"].update(change)
    torch.save(state, path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    assert str(info.value).startswith(f"{path}: its model_spec does not build a network (") and problem in str(
        info.value
    )
