"""``nsm train`` and the data bridge on one small simulated DVS Gesture set.

The set (``simulate_gestures(seed=0, users=4, per_class=1)``: 3 training users, 1 test user, 11 classes)
is simulated once per test session and shared by this module and test_evaluate.py (see
``simulated_gestures``). Every run here uses the ``tiny`` preset on the CPU with augmentation on; the
torch thread count is fixed at 1, in this process and in the subprocesses, so that runs in different
processes compute bit for bit the same thing and two test workers do not oversubscribe two cores.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch

import events
import models
import nsm
from events.datasets import GESTURE_CLASSES
from nsm.layers import EXPECTATION_MODES
from pipelines import cli, runs, training
from pipelines import config as configs
from pipelines.analyze import read_activity
from pipelines.checkpoint import load_checkpoint
from pipelines.data import TIME_FLIP_LABELS, augment, load_data, shift, validation_samples, zoom
from pipelines.train_config import AugmentConfig
from pipelines.training import epoch as epoch_steps
from pipelines.training import setup, steps, trainer
from pipelines.training.modes import training_mode
from pipelines.training.schedule import lr_scheduler, parameter_groups, ramp_factor, ramped

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EPOCHS = 3
# augmentation on (tiny's 1-pixel jitter plus time flips), CPU, no loader workers
SETS = [f"train.epochs={EPOCHS}", "train.workers=0", "train.device=cpu", "train.augment.time_flip=0.5"]
TIMING = ("seconds", "samples_per_s")  # metrics that depend on the machine, not on the run


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def train_args(data, cache, out, *extra):
    return [
        "train",
        "--config",
        "tiny",
        "--data",
        str(data),
        "--out",
        str(out),
        "--cache",
        str(cache),
        "--quiet",
        *[a for s in SETS for a in ("--set", s)],
        *extra,
    ]


def subprocess_env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def state(path) -> dict:
    """A checkpoint's dict, read by torch's weights-only unpickler (checkpoints hold only tensors and plain data)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tensors(a: dict, b: dict, what: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{what}: {key} differs"


def assert_same_training_state(got: dict, want: dict) -> None:
    """Model parameters and buffers bit for bit, and the optimizer's moments too."""
    assert got["epoch"] == want["epoch"]
    assert_same_tensors(got["model_state"], want["model_state"], "model state")
    for i, s in want["optimizer_state"]["state"].items():
        assert_same_tensors(got["optimizer_state"]["state"][i], s, f"optimizer state of parameter {i}")
    assert got["scheduler_state"] == want["scheduler_state"]


def metric_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def activity_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "activity.jsonl").read_text().splitlines()]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def reference_run(gestures, build_once):
    """An uninterrupted ``nsm train --config tiny`` run of EPOCHS epochs (the CLI, in-process, once per session)."""
    data, cache = gestures

    def build(folder):
        assert cli.main(train_args(data, cache, folder)) == 0

    return build_once("reference-run", build)


# ----------------------------------------------------------------------------------------------
# the data bridge
# ----------------------------------------------------------------------------------------------


def test_validation_holds_out_whole_gestures(gestures):
    data, cache = gestures
    cfg = configs.load_config("tiny", ["data.val_fraction=0.2"])
    splits = load_data(cfg.data, data, cache, with_test=False, progress=False)
    train, val = splits.train, splits.val
    n_gestures = len(events.DVSGesture(data, train=True))
    held = validation_samples(n_gestures, 0.2, cfg.train.seed)
    assert len(held) == round(0.2 * n_gestures) >= 2
    assert set(val.groups) == set(held)
    assert not set(train.groups) & set(val.groups), "a clip of a validation gesture is in the training set"
    # every clip is in exactly one of the two sets, and each held-out gesture goes whole
    assert sorted(np.concatenate([train.index, val.index])) == list(range(len(train.items)))
    all_groups = np.asarray(train.items.sample_index)
    for g in held:
        assert np.count_nonzero(val.groups == g) == np.count_nonzero(all_groups == g) > 0
    # labels follow their gestures
    for i in range(0, len(val), 7):
        assert val[i][1] == val.labels[i]


def test_augmentation_is_a_pure_function_of_seed_epoch_and_index(gestures):
    data, cache = gestures
    cfg = configs.load_config("tiny")
    aug = AugmentConfig(jitter_px=2, time_flip=0.5, polarity_flip=0.5)
    a = load_data(cfg.data, data, cache, augmentation=aug, seed=3, with_test=False, progress=False).train
    b = load_data(cfg.data, data, cache, augmentation=aug, seed=3, with_test=False, progress=False).train
    order = [5, 0, 17, 5, 40]
    first = {i: a[i] for i in order}
    for i in reversed(order):  # other object, other order: same tensors
        x, y = b[i]
        assert torch.equal(x, first[i][0]) and y == first[i][1]
    assert all(torch.equal(a[i][0], first[i][0]) for i in order)  # same item twice
    a.set_epoch(1)
    changed = [i for i in range(20) if not torch.equal(a[i][0], b[i][0]) or a[i][1] != b[i][1]]
    assert changed, "epoch 1 gave every item the augmentation of epoch 0"
    a.set_epoch(0)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(20))


def test_time_flip_maps_rotation_direction_and_reverses_time_and_polarity(gestures):
    flips = TIME_FLIP_LABELS["dvsgesture"]
    assert flips == {3: 4, 4: 3, 5: 6, 6: 5}
    for a, b in flips.items():
        cw, ccw = sorted((GESTURE_CLASSES[a], GESTURE_CLASSES[b]), key=len)
        assert cw.endswith("_clockwise") and ccw == cw.replace("_clockwise", "_counter_clockwise")
    frames = np.random.default_rng(0).poisson(1.0, size=(4, 2, 5, 6)).astype(np.float32)
    always = AugmentConfig(time_flip=1.0)
    for label in range(len(GESTURE_CLASSES)):
        out, new = augment(frames, label, always, np.random.default_rng(label), flips)
        assert new == flips.get(label, label)
        np.testing.assert_array_equal(out, frames[::-1, ::-1])  # time reversed, ON <-> OFF
    # through the data set: every training clip reversed in time, rotations relabelled
    data, cache = gestures
    cfg = configs.load_config("tiny")
    plain = load_data(cfg.data, data, cache, with_test=False, progress=False).train
    flipped = load_data(cfg.data, data, cache, augmentation=always, with_test=False, progress=False).train
    seen = set()
    for i in range(0, len(plain), 5):
        x, y = plain[i]
        fx, fy = flipped[i]
        assert torch.equal(fx, x.flip(0, 1)) and fy == flips.get(y, y)
        seen.add(y)
    assert seen & set(flips) and seen - set(flips)


def test_zoom_scales_about_the_centre_with_empty_fill():
    frames = np.zeros((2, 1, 9, 9), dtype=np.float32)
    frames[..., 4, 4] = 1  # the centre stays put
    frames[..., 4, 6] = 2  # two pixels right of it
    np.testing.assert_array_equal(zoom(frames, 1.0), frames)
    out = zoom(frames, 2.0)
    assert out[..., 4, 4].min() == 1 and out[..., 4, 8].min() == 2  # twice as far from the centre
    assert not out[..., :3, :].any() and out.shape == frames.shape
    small = zoom(frames, 0.5)
    assert small[..., 4, 4].min() == 1 and small[..., 4, 5].min() == 2  # half as far (4 + 1 / 0.5 = 6)
    shrunk = zoom(np.ones((1, 1, 8, 8), dtype=np.float32), 0.5)
    assert shrunk[..., 2:6, 2:6].all() and shrunk.sum() == 16  # the border left empty
    # augment draws factors within [1 / (1 + s), 1 + s]
    aug = AugmentConfig(scale=0.5)
    factors = set()
    for seed in range(30):
        out, label = augment(frames, 3, aug, np.random.default_rng(seed), {})
        f = np.exp(np.random.default_rng(seed).uniform(-1.0, 1.0) * np.log1p(0.5))
        assert 1 / 1.5 <= f <= 1.5 and label == 3
        np.testing.assert_array_equal(out, zoom(frames, f))
        factors.add(round(f, 3))
    assert len(factors) == 30
    with pytest.raises(ValueError, match="train.augment.scale"):
        AugmentConfig(scale=1.5).validate()


def test_jitter_shifts_with_empty_fill():
    frames = np.arange(2 * 1 * 6 * 7, dtype=np.float32).reshape(2, 1, 6, 7) + 1
    out = shift(frames, 2, -3)
    np.testing.assert_array_equal(out[..., 2:, :4], frames[..., :4, 3:])
    assert not out[..., :2, :].any() and not out[..., :, 4:].any()
    np.testing.assert_array_equal(shift(frames, 0, 0), frames)
    assert not shift(frames, 6, 0).any() and not shift(frames, 0, -7).any()
    # augment draws shifts within +-jitter_px and fills what it uncovers with zeros
    aug = AugmentConfig(jitter_px=2)
    shifts = set()
    for seed in range(40):
        out, label = augment(frames, 7, aug, np.random.default_rng(seed), {})
        match = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if np.array_equal(out, shift(frames, dy, dx))]
        assert match and label == 7
        shifts.add(match[0])
    assert len(shifts) > 10


# ----------------------------------------------------------------------------------------------
# nsm train: the run folder
# ----------------------------------------------------------------------------------------------


def test_train_writes_the_run_folder(reference_run, gestures):
    run = reference_run
    for name in ("checkpoint.pt", "best.pt", "config.toml", "metrics.jsonl", "curves.png", "activity.jsonl"):
        assert (run / name).is_file(), name
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert (run / "curves.png").read_bytes()[:8] == PNG_MAGIC
    cfg = configs.load_config("tiny", SETS)
    assert configs.from_dict(tomllib.loads((run / "config.toml").read_text())) == cfg
    metrics = metric_lines(run)
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1))
    for m in metrics:
        assert np.isfinite(m["train_loss"]) and 0 <= m["train_accuracy"] <= 1 and 0 <= m["val_accuracy"] <= 1
        assert m["lr"] == cfg.train.lr
    ck = load_checkpoint(run / "checkpoint.pt")
    assert ck.epoch == EPOCHS and ck.config == cfg.to_dict() and ck.classes == list(GESTURE_CLASSES)
    best_epoch = 1 + int(np.argmax([m["val_accuracy"] for m in metrics]))  # first epoch of the best
    best = load_checkpoint(run / "best.pt")
    assert best.epoch == best_epoch
    fit = best.state["temperature"]  # train.temperature_fit = "validation": fitted on the validation items
    assert 0.01 <= fit["temperature"] <= 100 and fit["samples"] == cfg.eval.samples
    assert fit["val_nll_after"] <= fit["val_nll_before"] and fit["items"] > 0
    # activity: one record every record_every steps, readable by nsm analyze
    data, cache = gestures
    n_train = len(load_data(cfg.data, data, cache, with_test=False, progress=False).train)
    steps = EPOCHS * -(-n_train // cfg.train.batch_size)
    activity = read_activity(run)
    assert activity.neuron == "bnsm"
    assert activity.steps == list(range(0, steps, cfg.train.record_every))
    assert [r["step"] for r in activity_lines(run)] == activity.steps  # no duplicate lines


def test_train_refuses_to_overwrite_a_run(reference_run, gestures, capsys):
    data, cache = gestures
    before = {p.name: digest(p) for p in reference_run.iterdir()}
    assert cli.main(train_args(data, cache, reference_run)) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "Traceback" not in err
    assert {p.name: digest(p) for p in reference_run.iterdir()} == before


def test_resume_without_a_run_is_an_error(gestures, tmp_path, capsys):
    data, cache = gestures
    for out in (tmp_path / "missing", tmp_path):  # no folder; a folder without a checkpoint
        assert cli.main(["train", "--resume", "--data", str(data), "--out", str(out), "--cache", str(cache)]) == 2
        err = capsys.readouterr().err
        assert "nothing to resume" in err and "without --resume" in err
    assert not (tmp_path / "missing").exists()


# ----------------------------------------------------------------------------------------------
# resuming
# ----------------------------------------------------------------------------------------------


def test_resumed_run_ends_with_exactly_the_uninterrupted_parameters(reference_run, gestures, tmp_path, monkeypatch):
    """Interrupted (Ctrl-C) after epoch 1 of 3, then ``--resume``: bnsm noise and augmentation repeat."""
    data, cache = gestures
    out = tmp_path / "run"
    plot = trainer.plot_curves

    def interrupt_after_first_epoch(history, path):
        plot(history, path)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "plot_curves", interrupt_after_first_epoch)
    assert cli.main(train_args(data, cache, out)) == 130
    assert state(out / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(trainer, "plot_curves", plot)
    assert (
        cli.main(["train", "--resume", "--data", str(data), "--out", str(out), "--cache", str(cache), "--quiet"]) == 0
    )
    assert_same_training_state(state(out / "checkpoint.pt"), state(reference_run / "checkpoint.pt"))
    assert without_timing(metric_lines(out)) == without_timing(metric_lines(reference_run))
    assert activity_lines(out) == activity_lines(reference_run)


def test_checkpoints_hold_the_plain_nsm_of_the_normalized_training(reference_run):
    """The tiny preset trains its NSM units on batch-normalized logits (the default): checkpoint.pt keeps the
    parameters as trained and the running moments for --resume, and both files' model_state is the plain NSM
    that ``LogitNormalization`` folds them into."""
    ck, best = state(reference_run / "checkpoint.pt"), state(reference_run / "best.pt")
    assert ck["config"]["train"]["logit_norm"] == "batch" and ck["logit_norm"]
    assert "logit_norm" not in best and "train_model_state" not in best
    net = models.create_model(**ck["model_spec"])
    net.load_state_dict(ck["train_model_state"])
    folded = nsm.LogitNormalization.resume(net, ck["logit_norm"]).folded_state_dict()
    assert_same_tensors(folded, ck["model_state"], "model_state")
    normalized = [f"{name}.beta" for name in ck["logit_norm"]]
    assert normalized and all(not torch.equal(ck["model_state"][k], ck["train_model_state"][k]) for k in normalized)


def test_sigkilled_run_resumes_to_the_uninterrupted_parameters(reference_run, gestures, tmp_path):
    data, cache = gestures
    out = tmp_path / "run"
    log = tmp_path / "train.log"
    checkpoint = out / "checkpoint.pt"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pipelines.cli", *train_args(data, cache, out)],
            cwd=REPO,
            env=subprocess_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists():
            assert proc.poll() is None, f"training ended before its first checkpoint:\n{log.read_text()}"
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.02)
        epoch = state(checkpoint)["epoch"]
        assert epoch >= 1
        assert proc.poll() is None, "the run finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed_at = load_checkpoint(checkpoint).epoch  # still a whole, loadable checkpoint
    assert epoch <= killed_at < EPOCHS
    assert (
        cli.main(["train", "--resume", "--data", str(data), "--out", str(out), "--cache", str(cache), "--quiet"]) == 0
    )
    assert_same_training_state(state(checkpoint), state(reference_run / "checkpoint.pt"))
    metrics = metric_lines(out)
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1)), "metrics lines duplicated or lost"
    assert without_timing(metrics) == without_timing(metric_lines(reference_run))
    assert [r["step"] for r in activity_lines(out)] == [r["step"] for r in activity_lines(reference_run)]


# ----------------------------------------------------------------------------------------------
# several processes
# ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def even_split(data, cache) -> tuple[str, int]:
    """A ``data.val_fraction`` override that leaves a multiple of 4 training clips (so that half of them split
    evenly over two processes), and that number."""
    cfg = configs.load_config("tiny")
    for fraction in (0.1, 0.11, 0.12, 0.13, 0.14, 0.15, 0.16, 0.17, 0.18, 0.19, 0.2):
        d = dataclasses.replace(cfg.data, val_fraction=fraction)
        n = len(load_data(d, data, cache, with_test=False, progress=False).train)
        if n % 4 == 0:
            return f"data.val_fraction={fraction}", n
    raise AssertionError("no validation fraction leaves a multiple of 4 training clips")


def torchrun(args: list[str]) -> subprocess.CompletedProcess:
    """``nsm ARGS`` under torchrun in 2 CPU processes (gloo on the loopback device); it must succeed."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"]
    cmd += ["--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "pipelines.cli", *args]
    env = subprocess_env()
    if sys.platform == "linux":  # gloo on the loopback device, whatever the host name resolves to
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def test_two_process_ddp_matches_a_single_process(gestures, tmp_path):
    """torchrun, 2 CPU processes (gloo), against one process on the same data: one epoch of two steps, each
    global batch (half the training set) split 2 x half of it.

    The noise-free binary kind ``bn`` is used, without batch-normalized logits: noisy kinds (bnsm, gnsm, ste, sn)
    draw different noise in each process, and batch normalization (dcnn's, and the NSM units' normalized logits)
    sees per-process batch statistics, so neither can match a single process. The training set has an even number of
    clips, so the sampler's even split drops nothing, and
    each global batch is the same set of clips in both runs.

    Tolerance: the runs differ only in float32 rounding (the gradient of a batch summed in one pass, or as
    two halves averaged by all-reduce: ~1e-6 relative). Adam with eps 1e-4 (the paper presets' value) turns
    a gradient difference dg into a step difference of at most about lr * dg / eps, so after two steps the
    parameters agree to ~1e-7 (measured). A wrong split (other clips, per-process instead of global batches,
    gradients not averaged) changes steps by up to lr = 1e-3 each; atol = 1e-5 lies between the two. Longer
    runs are not compared: a binary unit whose input lies within rounding of its threshold flips, after which
    the runs part by O(lr) per step (seen after ten steps of batch 64), a property of sign networks rather
    than of the data-parallel code.
    """
    data, cache = gestures
    split, n_train = even_split(data, cache)
    sets = [
        "model.neuron=bn",
        "train.logit_norm=none",
        "train.epochs=1",
        f"train.batch_size={n_train // 2}",
        "train.adam_eps=1e-4",
        split,
    ]
    extra = [a for s in sets for a in ("--set", s)]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    res = torchrun(train_args(data, cache, ddp, *extra))
    assert "2 process(es)" in res.stdout
    assert res.stdout.count("epoch 1/1:") == 1  # only rank 0 reports
    assert cli.main(train_args(data, cache, single, *extra)) == 0

    got, want = state(ddp / "checkpoint.pt"), state(single / "checkpoint.pt")
    assert got["epoch"] == want["epoch"] == 1
    assert got["model_state"].keys() == want["model_state"].keys()
    for key, w in want["model_state"].items():
        torch.testing.assert_close(got["model_state"][key], w, rtol=0, atol=1e-5, msg=key)
    # and training moved the parameters far beyond that tolerance (the initial ones are seeded)
    cfg = configs.load_config("tiny", SETS + sets)
    torch.manual_seed(cfg.train.seed)
    init = setup.build_model(cfg, load_data(cfg.data, data, cache, with_test=False, progress=False)).state_dict()
    assert max(float((w - init[k]).abs().max()) for k, w in want["model_state"].items()) > 1e-3
    # only rank 0 wrote: one metrics line per epoch, one activity line per record
    ddp_metrics, single_metrics = metric_lines(ddp), metric_lines(single)
    assert [m["epoch"] for m in ddp_metrics] == [m["epoch"] for m in single_metrics] == [1]
    for a, b in zip(ddp_metrics, single_metrics):  # over the whole epoch, not rank 0's half
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["train_accuracy"] == b["train_accuracy"] and a["val_accuracy"] == b["val_accuracy"]
    assert [r["step"] for r in activity_lines(ddp)] == [r["step"] for r in activity_lines(single)]
    assert not [p.name for p in ddp.iterdir() if p.name.endswith(".tmp")]


def test_the_default_bnsm_recipe_trains_under_torchrun_and_resumes_to_the_uninterrupted_run(gestures, tmp_path):
    """torchrun, 2 CPU processes, with the library's default recipe for bnsm (the ``tiny`` preset: a smooth warm-up
    epoch, then expected states, batch-normalized logits whose statistics are each process's own): the run trains
    (the loss falls, the best network is fitted and loads), and one stopped after epoch 1 of 2 and resumed under
    torchrun ends with the parameters, normalization moments and optimizer state of the uninterrupted one.

    Both runs see the same per-process batches (the distributed sampler's order is seeded by epoch), the expected
    pass draws no noise, and the resumed processes restore the random state rank 0 saved, which equals rank 1's
    (both seeded alike, both drew the same number of values: batches of equal size), so the two runs differ only
    where float sums are reordered; here they agree to 1e-6."""
    data, cache = gestures
    extra = ["--set", "train.epochs=2", "--set", "train.augment.time_flip=0"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    torchrun(train_args(data, cache, whole, *extra))
    torchrun(train_args(data, cache, cut, *extra, "--epochs", "1"))
    assert load_checkpoint(cut / "checkpoint.pt").epoch == 1
    resume = ["train", "--resume", "--epochs", "2", "--out", str(cut), "--data", str(data), "--cache", str(cache)]
    res = torchrun([*resume, "--quiet"])  # the cut run's config says 1 epoch: --epochs extends it
    assert "2 process(es)" in res.stdout

    a, b = state(whole / "checkpoint.pt"), state(cut / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["logit_norm"] is not None
    for part in ("model_state", "train_model_state"):
        for key, w in a[part].items():
            torch.testing.assert_close(b[part][key], w, rtol=0, atol=1e-6, msg=f"{part} {key}")
    for key, w in a["logit_norm"].items():
        torch.testing.assert_close(b["logit_norm"][key], w, rtol=0, atol=1e-6, msg=f"logit_norm {key}")
    moments = [v for v in a["optimizer_state"]["state"].values()]
    assert moments and all(
        torch.allclose(m["exp_avg"], n["exp_avg"], rtol=0, atol=1e-6)
        for m, n in zip(moments, b["optimizer_state"]["state"].values())
    )
    losses = [m["train_loss"] for m in metric_lines(whole)]
    assert [m["epoch"] for m in metric_lines(cut)] == [1, 2] and losses[1] < losses[0]
    best = load_checkpoint(whole / "best.pt")  # folded into a plain NSM, the readout and temperature fitted
    assert best.model.spec["neuron"] == "bnsm" and "temperature" in best.state


@pytest.mark.parametrize(
    "neuron, forward, modes",
    [
        ("bnsm", "expected", ["mean-input", "expected", "expected"]),
        ("gnsm", "expected", ["mean-input", "expected", "expected"]),
        ("bnsm", "mean-input", ["mean-input", "mean-input", "mean-input"]),
        ("bnsm", "sampled", ["mean-input", "probability", "probability"]),
        ("bnsm", "sampled-logit", ["mean-input", "sampled-logit", "sampled-logit"]),
        ("ste", "expected", ["deterministic", "probability", "probability"]),  # no expectations: its own rule
        ("bn", "expected", ["deterministic", "deterministic", "deterministic"]),
        ("bnsm", "expected/deterministic", ["deterministic", "expected", "expected"]),
        ("gnsm", "sampled/deterministic", ["deterministic", "probability", "probability"]),
        ("ste", "expected/deterministic", ["deterministic", "probability", "probability"]),
        ("bn", "expected/deterministic", ["deterministic", "deterministic", "deterministic"]),
    ],
)
def test_units_train_in_the_warmup_mode_then_in_the_mode_train_forward_picks(neuron, forward, modes):
    """``forward`` is ``train.forward``, or ``train.forward/train.warmup_forward``."""
    forward, _, warmup = forward.partition("/")
    cfg = configs.load_config(
        "gestures-allconv18",
        [f"model.neuron={neuron}", f"train.forward={forward}", "train.warmup_epochs=1"]
        + ([f"train.warmup_forward={warmup}"] if warmup else []),
    )
    model = models.create_model(
        "allconvnet18", in_channels=6, input_size=(16, 16), num_classes=11, neuron=neuron, width=0.25
    )
    for epoch, mode in enumerate(modes):
        with training_mode(model, epoch, cfg.train):
            assert {m.mode for m in model.modules() if isinstance(m, nsm.NSMConv2d)} == {mode}
            pools = {m.mode for m in model.modules() if isinstance(m, nsm.BinaryMaxPool2d)}
            if mode in EXPECTATION_MODES:
                assert pools == {mode}  # the OR-pools take expectations with the units
            else:
                assert not pools & set(EXPECTATION_MODES)
    assert {m.mode for m in model.modules() if isinstance(m, nsm.NSMConv2d)} == {
        "deterministic" if neuron == "bn" else "probability"
    }


def test_expectation_epochs_compute_the_variance_by_train_variance_and_restore_the_units_rule():
    cfg = configs.load_config("gestures-allconv18", ["train.variance=window-mean", "train.warmup_epochs=1"])
    model = models.create_model("allconvnet18", in_channels=6, input_size=(16, 16), num_classes=11, width=0.25)
    units = [m for m in model.modules() if isinstance(m, nsm.NSMConv2d)]
    with training_mode(model, 1, cfg.train):
        assert {u.variance_rule for u in units} == {"window-mean"}
    assert {u.variance_rule for u in units} == {"exact"}
    with training_mode(model, 0, cfg.train):  # the warm-up's mean-input pass has no input variance
        assert {u.variance_rule for u in units} == {"exact"}


# ----------------------------------------------------------------------------------------------
# divergence
# ----------------------------------------------------------------------------------------------


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(gestures, tmp_path, monkeypatch):
    data, cache = gestures
    out = tmp_path / "run"
    compute_loss = steps.compute_loss
    kept = {}

    def nan_from_second_epoch(logits, labels):
        loss = compute_loss(logits, labels)
        if (out / "checkpoint.pt").exists():  # epoch 1 is done: we are in epoch 2
            kept.setdefault("checkpoint", digest(out / "checkpoint.pt"))
            kept.setdefault("best", digest(out / "best.pt"))
            return loss * float("nan")
        return loss

    monkeypatch.setattr(epoch_steps, "compute_loss", nan_from_second_epoch)
    cfg = configs.load_config("tiny", SETS)
    with pytest.raises(training.TrainingDiverged, match="the loss became nan at epoch 2, step 1") as err:
        training.train(cfg, data, out, cache_dir=cache, progress=False)
    assert isinstance(err.value, ValueError)
    assert "still holds epoch 1" in str(err.value)
    assert load_checkpoint(out / "checkpoint.pt").epoch == 1
    assert digest(out / "checkpoint.pt") == kept["checkpoint"] and digest(out / "best.pt") == kept["best"]
    assert [m["epoch"] for m in metric_lines(out)] == [1]


def test_cli_exits_with_status_2_when_the_loss_diverges(gestures, tmp_path, monkeypatch, capsys):
    data, cache = gestures
    compute_loss = steps.compute_loss
    monkeypatch.setattr(epoch_steps, "compute_loss", lambda logits, labels: compute_loss(logits, labels) + float("inf"))
    assert cli.main(train_args(data, cache, tmp_path / "run")) == 2
    err = capsys.readouterr().err
    assert "nsm train: error: the loss became inf at epoch 1, step 1" in err
    assert "no epoch had completed" in err and "train.lr" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_warm_started_run_that_diverges_names_its_initial_checkpoint(gestures, tmp_path, monkeypatch):
    """A NaN loss after --init-from may come from the checkpoint rather than the rate: the message names both."""
    data, cache = gestures
    cfg = configs.load_config("tiny", [*SETS, "train.epochs=1"])
    training.train(cfg, data, tmp_path / "first", cache_dir=cache, progress=False)
    compute_loss = steps.compute_loss
    monkeypatch.setattr(epoch_steps, "compute_loss", lambda logits, labels: compute_loss(logits, labels) * float("nan"))
    source = tmp_path / "first" / "best.pt"
    with pytest.raises(training.TrainingDiverged) as err:
        training.train(cfg, data, tmp_path / "warm", cache_dir=cache, progress=False, init_from=source)
    message = str(err.value)
    assert f"started from --init-from {source}" in message and "may be damaged" in message
    assert "a lower train.lr" in message


def test_fresh_run_drops_records_left_by_a_run_killed_in_its_first_epoch(gestures, tmp_path, monkeypatch):
    """A run killed before its first checkpoint leaves metrics/activity lines but no checkpoint; starting
    again (without --resume) must not append to them. The new run is stopped by a NaN at its second step,
    after exactly one activity record (step 0) and no metrics line."""
    data, cache = gestures
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "train_loss": 9.0}) + "\n")
    stale = {"epoch": 0.0, "step": 0, "neuron": "bnsm", "stale": True}
    (out / "activity.jsonl").write_text(json.dumps(stale) + "\n" + '{"epoch": 0.5, "st')
    compute_loss = steps.compute_loss
    calls = []

    def nan_at_second_step(logits, labels):
        calls.append(1)
        return compute_loss(logits, labels) * (float("nan") if len(calls) == 2 else 1.0)

    monkeypatch.setattr(epoch_steps, "compute_loss", nan_at_second_step)
    with pytest.raises(training.TrainingDiverged, match="epoch 1, step 2"):
        training.train(configs.load_config("tiny", SETS), data, out, cache_dir=cache, progress=False)
    assert (out / "metrics.jsonl").read_text() == ""
    records = activity_lines(out)
    assert [r["step"] for r in records] == [0] and "stale" not in records[0]


def test_stale_temporary_files_of_killed_writers_are_removed(tmp_path):
    """A writer killed between creating its temporary file and the rename leaves ``.name.pid.hex.tmp``; the
    next run removes those of dead processes and keeps a live writer's."""
    from events.atomic import remove_dead_temps

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".checkpoint.pt.{dead.pid}.0123abcd.tmp"
    live = tmp_path / f".metrics.jsonl.{os.getpid()}.89abcdef.tmp"
    other = tmp_path / "notes.tmp"
    for p in (stale, live, other):
        p.write_text("x")
    assert remove_dead_temps(tmp_path) == [stale]
    assert not stale.exists() and live.exists() and other.exists()


def test_flushing_denormals_flushes_inside_and_restores_after():
    tiny = torch.tensor([1e-39], dtype=torch.float32)  # subnormal in float32 (below 2^-126)
    assert (tiny * 1.0).item() != 0.0
    with runs.flushing_denormals():
        assert (tiny * 1.0).item() == 0.0
    assert (tiny * 1.0).item() != 0.0


@pytest.mark.parametrize("neuron, gain", [("bnsm", "beta"), ("gnsm", "beta"), ("wbd", "g")])
def test_gain_lr_factor_gives_the_units_gains_their_own_rate(neuron, gain):
    model = models.create_model(
        "nmnist_cnn", in_channels=2, input_size=(18, 18), num_classes=4, neuron=neuron, hidden=8
    )
    tc = configs.TrainConfig(lr=1e-3, gain_lr_factor=10)
    rest, gains = parameter_groups(model, tc)
    named = {id(p): name for name, p in model.named_parameters()}
    assert {named[id(p)].rsplit(".", 1)[-1] for p in gains["params"]} == {gain}
    assert gain not in {named[id(p)].rsplit(".", 1)[-1] for p in rest["params"]}
    assert len(rest["params"]) + len(gains["params"]) == len(list(model.parameters()))
    assert gains["lr"] == pytest.approx(1e-2) and "lr" not in rest
    assert len(parameter_groups(model, configs.TrainConfig(gain_lr_factor=1))) == 1


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ({"lr_schedule": "step", "lr_step_epochs": 2, "lr_gamma": 0.5}, [1.0, 1.0, 0.5, 0.5]),
        ({"lr_schedule": "cosine"}, [(1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
    ],
)
def test_lr_schedules_set_each_epochs_rate_for_every_parameter_group(schedule, expected):
    tc = configs.TrainConfig(lr=1e-3, epochs=4, gain_lr_factor=10, **schedule)
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([{"params": [a]}, {"params": [b], "lr": 1e-2}], lr=tc.lr)
    scheduler = lr_scheduler(optimizer, tc)
    rates = []
    for _ in range(4):
        rates += [group["lr"] for group in optimizer.param_groups]
        optimizer.step()
        scheduler.step()
    assert rates == pytest.approx([rate * f for f in expected for rate in (1e-3, 1e-2)])


@pytest.mark.parametrize(
    "epochs, share, warmup, sampled",
    [(30, 0.2, 1, 6), (8, 0.2, 1, 2), (2, 0.2, 1, 0), (10, 0.25, 1, 3), (4, 1.0, 1, 3), (5, 0.0, 1, 0)],
)
def test_the_sampled_phase_is_the_rounded_share_of_the_epochs_after_the_warmup(epochs, share, warmup, sampled):
    tc = configs.TrainConfig(epochs=epochs, sampled_share=share, warmup_epochs=warmup)
    assert tc.sampled_epochs == sampled


@pytest.mark.parametrize("neuron, phase_mode", [("bnsm", "probability"), ("gnsm", "probability"), ("bn", None)])
def test_sampling_units_train_on_sampled_states_in_the_sampled_phase(neuron, phase_mode):
    """Epochs 0 (warm-up), 1-2 (``train.forward``), 3-4 (the sampled phase: 0.4 of 5 epochs)."""
    cfg = configs.load_config(
        "gestures-allconv18",
        [f"model.neuron={neuron}", "train.epochs=5", "train.sampled_share=0.4", "train.forward=expected"],
    )
    model = models.create_model(
        "allconvnet18", in_channels=6, input_size=(16, 16), num_classes=11, neuron=neuron, width=0.25
    )
    modes = []
    for epoch in range(5):
        with training_mode(model, epoch, cfg.train):
            modes.append({m.mode for m in model.modules() if isinstance(m, nsm.NSMConv2d)})
    if phase_mode is None:  # units that do not sample: deterministic throughout
        assert modes == [{"deterministic"}] * 5
    else:
        assert modes == [{"mean-input"}, {"expected"}, {"expected"}, {phase_mode}, {phase_mode}]


@pytest.mark.parametrize("schedule", ["cosine", "step"])
def test_the_sampled_phase_restarts_the_rate_at_its_factor_and_anneals_it_to_zero(schedule):
    """6 epochs, 2 of them sampled: the first 4 follow ``lr_schedule`` as a 4-epoch run would, then
    lr f (1 + cos(pi k / 2)) / 2 for k = 0, 1 with f = ``sampled_lr_factor``."""
    tc = configs.TrainConfig(
        lr=1e-3, epochs=6, sampled_share=1 / 3, sampled_lr_factor=0.2, lr_schedule=schedule, lr_step_epochs=2
    )
    plain = dataclasses.replace(tc, epochs=4, sampled_share=0.0)
    rates = []
    for config in (tc, plain):
        w = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.Adam([w], lr=config.lr)
        scheduler = lr_scheduler(optimizer, config)
        run = []
        for _ in range(config.epochs):
            run.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        rates.append(run)
    assert rates[0][:4] == pytest.approx(rates[1])
    assert rates[0][4:] == pytest.approx([2e-4, 1e-4])


def test_lr_ramp_rises_linearly_over_the_warmup_then_holds_and_leaves_the_scheduled_rates():
    tc = configs.TrainConfig(lr=1e-3, warmup_epochs=2, lr_ramp="warmup")  # 2 epochs of 2 steps
    assert [ramp_factor(tc, k, steps_per_epoch=2) for k in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert ramp_factor(configs.TrainConfig(lr_ramp="none"), 0, steps_per_epoch=2) == 1.0
    assert ramp_factor(configs.TrainConfig(warmup_epochs=0), 0, steps_per_epoch=2) == 1.0
    w = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.Adam([w], lr=1e-3)
    w.grad = torch.tensor([1.0, -2.0, 0.5])
    with ramped(optimizer, ramp_factor(tc, 0, steps_per_epoch=2)):
        optimizer.step()  # Adam's first step moves every coordinate by its rate, against the gradient's sign
    torch.testing.assert_close(w.detach(), torch.tensor([-2.5e-4, 2.5e-4, -2.5e-4]))
    assert optimizer.param_groups[0]["lr"] == 1e-3


def test_compare_trains_each_kind_for_its_own_epochs_and_tabulates_them(gestures, tmp_path, capsys):
    """``nsm compare`` with ``train.kind_epochs``: bnsm for 1 epoch, dcnn for 2, each evaluated; the table and the
    JSON give each kind's epochs and metrics, and each run folder holds that many epochs."""
    data, cache = gestures
    out = tmp_path / "compare"
    args = ["compare", "--config", "tiny", "--data", str(data), "--cache", str(cache), "--out", str(out)]
    args += ["--neurons", "bnsm,dcnn", "--quiet"]
    for s in ["train.workers=0", "train.device=cpu", "train.kind_epochs={bnsm = 1, dcnn = 2}"]:
        args += ["--set", s]
    assert cli.main(args) == 0
    rows = json.loads((out / "comparison.json").read_text())["rows"]
    assert [(r["neuron"], r["epochs"]) for r in rows] == [("bnsm", 1), ("dcnn", 2)]
    for r in rows:
        assert [m["epoch"] for m in metric_lines(out / "runs" / r["neuron"])] == list(range(1, r["epochs"] + 1))
        assert 0 <= r["accuracy"] <= 1 and r["mean_samples"] >= 1
    table = (out / "comparison.md").read_text()
    assert "| neuron | epochs | error % |" in table and "| dcnn | 2 |" in table
