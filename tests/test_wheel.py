"""The built wheel works on its own: installed into a fresh virtual environment outside the checkout, its `nsm`
finds the presets (package data), simulates a data set, trains the `tiny` preset for one epoch and exports the
network.

The fresh environment has no packages of its own besides the wheel (installed without dependencies); its
dependencies (torch, numpy, ...) come from the test's own interpreter through a path file, which adds
directories to ``sys.path`` but not the project's editable-install hook, so every project module is the
wheel's copy. The test checks that, then runs the commands from a folder outside the checkout."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("events", "nsm", "models", "pipelines")

pytestmark = pytest.mark.slow


def run(cmd: list, cwd: Path, timeout: int = 300) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    res = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A fresh venv (outside the checkout) holding only the wheel built from a copy of the tracked sources."""
    root = tmp_path_factory.mktemp("wheel")
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    source = root / "source"
    for name in tracked.splitlines():
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    dist = root / "dist"
    run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", dist, source],
        cwd=root,
    )
    wheel = next(dist.glob("nsm_events-*.whl"))
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", wheel], cwd=root)
    fresh_site = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=root).strip())
    ours = {sysconfig.get_path("purelib"), *site.getsitepackages()}
    (fresh_site / "dependencies.pth").write_text("\n".join(sorted(ours)) + "\n")
    return venv


def test_wheel_modules_are_the_installed_copies(installed):
    out = run(
        [
            installed / "bin" / "python",
            "-c",
            f"import {', '.join(PACKAGES)}; print('\\n'.join(m.__file__ for m in ({', '.join(PACKAGES)})))",
        ],
        cwd=installed.parent,
    )
    for path in out.split():
        assert Path(path).is_relative_to(installed), f"{path} is not the wheel's copy"


def test_wheel_lists_presets_and_trains_and_exports(installed):
    nsm = installed / "bin" / "nsm"
    work = installed.parent / "work"
    work.mkdir()
    assert "gestures-allconv18" in run([nsm, "train", "--help"], cwd=work)
    run([nsm, "simulate", "gestures", "--out", "data", "--users", "3", "--per-class", "1", "--quiet"], cwd=work)
    run(
        [
            nsm,
            "train",
            "--config",
            "tiny",
            "--data",
            "data",
            "--out",
            "run",
            "--cache",
            "cache",
            "--epochs",
            "1",
            "--quiet",
            "--set",
            "train.workers=0",
            "--set",
            "train.device=cpu",
        ],
        cwd=work,
    )
    run([nsm, "export", "--checkpoint", "run/best.pt", "--out", "net.nir"], cwd=work)
    assert (work / "run" / "metrics.jsonl").is_file()
    assert (work / "net.nir").stat().st_size > 0
