"""Shared fixtures. The genuine recordings live in ../shared/data/real and are read in place.

A small simulated DVS-Gesture-style set and a ``tiny`` network trained on it are built once per test
session (under pytest-xdist, once for all workers: a file lock lets the first build while the others wait).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest

import events
from pipelines import cli
from pipelines import config as configs

TINY_EPOCHS = 4

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder of genuine recordings; tests that need it skip with a reason when it is absent."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"genuine recordings not found at {REAL_DATA} (expected ../shared/data/real beside the project)")
    return REAL_DATA


def importer_python(toolchain: str) -> str:
    """The interpreter of the importer venv ``make target-venvs`` builds for ``toolchain`` (build/targets/TOOLCHAIN,
    complete once its ``.installed`` stamp is written); a test that needs it skips, naming it, without it."""
    venv = Path(__file__).resolve().parents[1] / "build" / "targets" / toolchain
    if not (venv / ".installed").exists():
        pytest.skip(f"{toolchain} venv not built at {venv}: run make target-venvs (or make check-targets)")
    return str(venv / "bin" / "python")


def shared_once(tmp_path_factory, name: str, build) -> Path:
    """Folder ``name``, made by ``build(folder)`` once per test session and shared by every test worker.

    Under pytest-xdist the folder lives beside the workers' own temporary folders; a file lock lets the
    first worker to arrive build it while the others wait, then reuse it.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent
    folder, done = base / name, base / f"{name}.done"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            build(folder)
            done.touch()
    return folder


def simulated_gestures(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, frame cache folder) of the session's simulated gesture set, binned for ``tiny``."""

    def build(folder):
        data = events.simulate_gestures(folder / "data", seed=0, users=4, per_class=1, progress=False)
        spec = configs.load_config("tiny").data.frame_spec()
        for split in (True, False):
            events.FrameCache(folder / "cache").get(events.DVSGesture(data, train=split), spec, progress=False)

    folder = shared_once(tmp_path_factory, "gestures-u4", build)
    return folder / "data", folder / "cache"


@pytest.fixture(scope="session")
def gestures(tmp_path_factory):
    return simulated_gestures(tmp_path_factory)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: two test workers share two cores, and runs in different processes
    compute bit for bit the same thing (the sampling kernel's noise does not depend on the thread count)."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(scope="session")
def build_once(tmp_path_factory):
    """``build_once(name, build)``: ``shared_once`` for tests that share a folder across workers."""
    return lambda name, build: shared_once(tmp_path_factory, name, build)


@pytest.fixture(scope="session")
def tiny_run(gestures, tmp_path_factory) -> Path:
    """Run folder of ``nsm train --config tiny`` for TINY_EPOCHS epochs on ``gestures`` (CPU, once per session)."""
    data, cache = gestures

    def build(out):
        args = ["train", "--config", "tiny", "--data", str(data), "--out", str(out), "--cache", str(cache), "--quiet"]
        for s in (f"train.epochs={TINY_EPOCHS}", "train.workers=0", "train.device=cpu"):
            args += ["--set", s]
        assert cli.main(args) == 0

    return shared_once(tmp_path_factory, "tiny-run", build)
