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

LONGEST_FIRST = (  # node id prefix: a group that runs in one worker, and its seconds (--durations, session 20)
    ("test_learning.py::", 300),  # its runs are a module fixture: the group must stay in one worker
    ("test_export.py::test_target_import_matches_the_model_on_200_inputs", 230),
    ("test_demo.py::", 150),
    ("test_export_toolchains.py::test_a_25_cell_readout_pool", 80),
    ("test_train.py::test_the_default_bnsm_recipe_trains_under_torchrun", 66),
    ("test_export.py::test_runtime_mc_of_the_trained_tiny_preset", 59),
    ("test_wheel.py::", 55),
    ("test_export_toolchains.py::test_cli_export_check_spyx", 44),
    ("test_export_toolchains.py::test_spyx_needs_the_stated_steps", 40),
)
"""The suite's longest tests. Started first and shared out among the workers, none of them keeps a worker busy at
the end while the other waits (longest-processing-time-first scheduling)."""


def pytest_collection_modifyitems(config, items):
    """Order the run so that pytest-xdist's work-stealing scheduler, which hands worker i the i-th of
    ``PYTEST_XDIST_WORKER_COUNT`` contiguous shares of the items, finds ``LONGEST_FIRST`` at the head of the shares:
    each group goes to the share with the least time so far (longest first); the other items keep their order and
    fill the shares to the sizes the scheduler cuts. Without workers: the groups first."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    groups, taken = [], set()
    for prefix, seconds in LONGEST_FIRST:
        members = [it for it in items if prefix in it.nodeid and it.nodeid not in taken]
        taken.update(it.nodeid for it in members)
        groups.append((seconds, members))
    rest = [it for it in items if it.nodeid not in taken]
    sizes, left = [], len(items)
    for i in range(workers):  # the scheduler's cut: worker i gets len(pending) // (workers - i)
        sizes.append(left // (workers - i))
        left -= sizes[-1]
    heads, load = [[] for _ in range(workers)], [0] * workers
    for seconds, members in sorted(groups, key=lambda g: -g[0]):
        i = min(range(workers), key=lambda w: load[w])
        heads[i] += members
        load[i] += seconds
    if any(len(head) > size for head, size in zip(heads, sizes)):
        heads, sizes = [[it for _, members in groups for it in members]], [len(items)]  # too few items: groups first
    ordered = []
    for head, size in zip(heads, sizes):
        fill = max(0, size - len(head)) if len(ordered) + size < len(items) else len(rest)
        ordered += head + rest[:fill]
        rest = rest[fill:]
    items[:] = ordered + rest


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
