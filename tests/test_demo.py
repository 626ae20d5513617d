"""``nsm demo`` end to end (on the session's small simulated gesture set, two epochs)."""

from __future__ import annotations

import json
import re

import torch

from pipelines import cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_demo_runs_every_step_and_reports_the_numbers_it_wrote(gestures, tmp_path, capsys):
    data, _ = gestures
    out = tmp_path / "demo"
    out.mkdir()
    (out / "data").symlink_to(data, target_is_directory=True)  # the demo reuses simulated data it finds
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["demo", "--out", str(out), "--epochs", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    for step in ("nsm train", "nsm evaluate", "nsm stream", "nsm export", "report.md"):
        assert step in printed
    for png in (
        "run/curves.png",
        "run/health.png",
        "run/reliability.png",
        "twin/reliability.png",
        "stream/timeline.png",
    ):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
    assert (out / "model.nir").stat().st_size > 0
    assert "-> OK" in printed  # the norse check passed
    report = (out / "report.md").read_text()
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", report):
        assert (out / link).is_file(), link
    metrics = json.loads((out / "run/metrics.json").read_text())
    summary = json.loads((out / "stream/summary.json").read_text())
    mc_row = f"{metrics['predictor']}, T {metrics['temperature']:.3g}"  # at the fitted temperature ...
    assert f"| {mc_row} | {metrics['accuracy']:.1%} | {metrics['nll']:.3f}" in report
    raw = metrics["at_temperature_1"]  # ... and at 1
    assert f"| {metrics['predictor']}, T 1 (the same samples) | {raw['accuracy']:.1%} | {raw['nll']:.3f}" in report
    assert "trains 2 epochs to finish in minutes" in report  # what the preset's full schedule reaches, said
    assert f"{summary['windows']} windows" in report
    assert "expected calibration error" in report
    twin = json.loads((out / "twin/metrics.json").read_text())
    assert metrics["model"] == twin["model"] == "allconvnet18"
    assert (metrics["neuron"], twin["neuron"]) == ("bnsm", "dcnn")
    assert (
        f"| NSM, deterministic network | {metrics['deterministic']['accuracy']:.1%} "
        f"| {metrics['deterministic']['gesture_accuracy']:.1%} |"
    ) in report
    assert f"| twin (dcnn) | {twin['accuracy']:.1%} | {twin['gesture_accuracy']:.1%} |" in report
    fit = torch.load(out / "run/best.pt", weights_only=True)["readout_fit"]  # the NSM's readout fit, reported
    assert f"Monte Carlo NLL: {fit['val_nll_before']:.3f} before the fit, {fit['val_nll_after']:.3f} after" in report
    assert "readout_fit" not in torch.load(out / "twin/best.pt", weights_only=True)  # dcnn does not sample
    for run in ("run", "twin"):
        assert [json.loads(line)["epoch"] for line in (out / run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
