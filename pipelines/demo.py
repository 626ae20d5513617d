"""``nsm demo``: the whole product in a few minutes on a CPU, from an event camera to neuromorphic hardware.

1. simulate a small DVS-Gesture-style data set in the original IBM layout (AEDAT 3.1 + label CSVs);
2. train the ``gestures-allconv18`` preset (the 18-layer all-convolutional network of Bernoulli NSM
   units at CPU size) on it, through the HDF5 frame cache, and its deterministic twin (the same network
   of real-valued ReLU units with batch normalization, ``dcnn``) the same way;
3. evaluate both on the held-out users, the NSM with Monte Carlo sampling: accuracy per clip and per
   gesture, calibration (ECE, NLL, Brier) and a reliability diagram;
4. stream one held-out recording window by window, as a live camera would feed it, and draw the
   class probabilities over time;
5. export the network to NIR and check the file in norse against the PyTorch model;
6. write ``report.md`` that links the figures and says what each number means.

Each step prints the ``nsm`` command that does the same and runs it through the library, writing into
``--out`` (``runs/demo`` by default); steps whose results are already there are reused, so a
second run is quick. On a machine with a GPU, training and evaluation use it.
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import events
from events.atomic import write_text_atomic
from events.errors import InputError

from . import config as configs
from .checkpoint import read_checkpoint
from .evaluate import evaluate, predictor_table, summary
from .export import export_checkpoint
from .replay import replay
from .runs import CURVES, EVALUATION, RELIABILITY, RunFolder, read_records
from .training import train

PRESET = "gestures-allconv18"  # the network the demo trains
DEMO_EPOCHS = 8  # the demo's short schedule (the preset's own runs to convergence: FULL_SCHEDULE says what it reaches)
FULL_SCHEDULE = (
    "The preset's own schedule trains to convergence ({epochs} epochs); on 12 simulated users it reached "
    "88.8-89.9 % per clip with 16 Monte Carlo samples at seeds 0-2 (its dcnn twin, 30 epochs: 91.1-92.2 %; "
    "docs/training-study.md, section 16). The demo trains {demo} epochs to finish in minutes."
)
TWIN = "dcnn"  # the neuron kind of its deterministic twin


def _step(argv: list) -> str:
    """Print the ``nsm`` command line that does what the next step does (the step itself calls the library)."""
    line = f"nsm {' '.join(shlex.quote(str(a)) for a in argv)}"
    print(f"\n$ {line}", flush=True)
    return line


def held_out_recording(data: Path) -> tuple[Path, Path]:
    """The first test recording of an IBM-layout folder and its labels CSV."""
    names = [n.strip() for n in (data / "trials_to_test.txt").read_text().split() if n.strip()]
    if not names:
        raise InputError(f"{data / 'trials_to_test.txt'} lists no recordings")
    rec = data / names[0]
    return rec, rec.with_name(rec.stem + "_labels.csv")


def twin_table(m: dict, twin: dict) -> str:
    """Markdown: per-clip and per-gesture accuracy of the NSM's predictors beside its deterministic twin's."""
    rows = [
        (f"NSM, {m['predictor']}", m),
        ("NSM, 1 sample", m["single_sample"]),
        ("NSM, deterministic network", m["deterministic"]),
        (f"twin ({twin['neuron']})", twin),
    ]
    lines = ["| network | per clip | per gesture |", "|---|---|---|"]
    for name, r in rows:
        gesture = f"{r['gesture_accuracy']:.1%}" if r.get("gesture_accuracy") is not None else "-"
        lines.append(f"| {name} | {r['accuracy']:.1%} | {gesture} |")
    return "\n".join(lines)


def readout_fit_sentence(fit: dict | None) -> str:
    """What ``nsm train``'s readout fit (``pipelines.training.readout_fit``) did, as recorded in ``best.pt`` ("" without
    one)."""
    if fit is None:
        return ""
    verdict = "refitted to" if fit["kept"] else "kept as trained after a fit to"
    return (
        f" After the last epoch the readout of `best.pt` was {verdict} the states the network samples (docs/design.md, "
        f"eq. 10c; the validation clips' Monte Carlo NLL: {fit['val_nll_before']:.3f} before the fit, "
        f"{fit['val_nll_after']:.3f} after it)."
    )


def report(out: Path, run: Path, twin: Path, stream_dir: Path, nir_path: Path, seconds: float) -> str:
    """The Markdown report of a demo run (numbers read back from the files the steps wrote)."""
    history = read_records(RunFolder(run).metrics)
    m = json.loads((run / EVALUATION).read_text())
    t = json.loads((twin / EVALUATION).read_text())
    s = json.loads((stream_dir / "summary.json").read_text())
    chance = 1 / m["classes"]
    last = history[-1]
    rel = lambda p: Path(p).resolve().relative_to(out.resolve()).as_posix()  # noqa: E731
    lines = [
        "# nsm demo report",
        "",
        f"Finished in {seconds:.0f} s. Everything below was produced by the `nsm` commands printed during the run, "
        f"on simulated DVS-Gesture-style recordings (11 gestures, chance = {chance:.1%}).",
        "",
        f"## Training (`nsm train --config {PRESET}`)",
        "",
        f"{last['epoch']} epochs of the `{PRESET}` preset ({m['model']}, {m['neuron']} units). Last epoch: training "
        f"loss {last['train_loss']:.3f}, training accuracy {last['train_accuracy']:.1%}"
        + (
            f", validation accuracy {last['val_accuracy']:.1%} (held-out training gestures)"
            if last.get("val_accuracy") is not None
            else ""
        )
        + f", {last['samples_per_s']:.0f} clips/s."
        + readout_fit_sentence(read_checkpoint(RunFolder(run).best).get("readout_fit"))
        + (
            " " + FULL_SCHEDULE.format(epochs=configs.load_config(PRESET).train.epochs, demo=last["epoch"])
            if last["epoch"] < configs.load_config(PRESET).train.epochs
            else ""
        ),
        "",
        f"![training curves]({rel(run / CURVES)})",
        "",
        "## Evaluation on the held-out users (`nsm evaluate`)",
        "",
        f"Each 96 ms clip (six 16 ms frames) of the test users' gestures is classified ({m['n']} clips). "
        "*Accuracy* is the share of clips whose most probable class is right; *NLL* the mean negative log "
        "probability of the true class (lower is better); *Brier* the mean squared error of the probability "
        "vector; *ECE* the expected calibration error: the gap between confidence and accuracy, averaged over "
        "15 confidence bins (0 = perfectly calibrated). Monte Carlo averages the softmax of several stochastic "
        "passes; the deterministic network is the mean-field one that export writes out.",
        "",
        predictor_table(m),
    ]
    if "gesture_accuracy" in m:
        lines += [
            "",
            f"Combining all clips of a gesture (averaging their probabilities), {m['gesture_accuracy']:.1%} "
            f"of the {m['gestures']} test gestures are recognised.",
        ]
    lines += [
        "",
        f"![reliability diagram]({rel(run / RELIABILITY)})",
        "",
        "The reliability diagram plots accuracy against confidence per bin: points on the diagonal are "
        "calibrated, above it under-confident, below it over-confident.",
        "",
        "## Beside its deterministic twin",
        "",
        f"The same network with real-valued ReLU units and batch normalization (`--set model.neuron="
        f"{t['neuron']}`), trained the same way and evaluated on the same clips:",
        "",
        twin_table(m, t),
        "",
        "## Streaming a held-out recording (`nsm stream`)",
        "",
        f"`{s.get('source', 'the recording')}` replayed in chunks as a camera would deliver it: "
        f"{s['windows']} windows ({s['empty_windows']} empty), mean {s['mean_samples']:.1f} MC samples a window, "
        + (
            f"per-window accuracy {s['window_accuracy']:.1%} on windows inside a labelled gesture, per-gesture "
            f"accuracy {s['gesture_accuracy']:.1%}, "
            if s.get("window_accuracy") is not None
            else ""
        )
        + (
            f"real-time factor {s['real_time_factor']:.1f} (recording time / processing time), "
            if s.get("real_time_factor") is not None
            else ""
        )
        + (
            f"latency p50 {s['latency_ms_p50']:.1f} ms / p99 {s['latency_ms_p99']:.1f} ms per window."
            if s.get("latency_ms_p50") is not None
            else ""
        ),
        "",
        f"![timeline]({rel(stream_dir / 'timeline.png')})",
        "",
        "The timeline shows each class's probability per window; shaded bands are the true gestures.",
        "",
        "## Export to neuromorphic hardware (`nsm export --target norse --check`)",
        "",
        f"The deterministic network was written as a binary spike graph to `{rel(nir_path)}` (NIR, HDF5) "
        "in norse's form (each unit split so that float32 rounding can barely flip it), read back, imported with "
        "norse and run sample by sample; the check passed (same top class as the PyTorch model on every input "
        "checked, logits equal within float tolerance).",
        "",
    ]
    return "\n".join(lines)


def run_demo(out, *, epochs: int | None = DEMO_EPOCHS, seed: int = 0) -> Path:
    """Run the demo into the folder ``out`` (module docstring), training ``epochs`` epochs (None: the preset's own
    schedule); return the report's path."""
    out = Path(out)
    started = time.perf_counter()
    data, cache, run_dir, twin_dir = out / "data", out / "cache", RunFolder(out / "run"), RunFolder(out / "twin")
    stream_dir, nir_path = out / "stream", out / "model.nir"
    print(f"[1/6] simulated DVS-Gesture-style recordings in {data}", flush=True)
    if not (data / "trials_to_test.txt").is_file():
        events.simulate_gestures(data, seed=seed, users=6, per_class=2)

    print(f"[2/6] training the {PRESET} preset into {run_dir.out} and its {TWIN} twin into {twin_dir.out}", flush=True)
    # Compiled steps pay their minute or two of compiling back over the preset's full schedule, not over a short one.
    short = ["train.compile=false"] if epochs is not None and epochs < configs.load_config(PRESET).train.epochs else []
    for folder, overrides in ((run_dir, short), (twin_dir, [f"model.neuron={TWIN}", *short])):
        resume = folder.checkpoint.is_file()
        argv = ["train", "--data", data, "--out", folder.out, "--cache", cache]
        argv += ["--resume"] if resume else ["--config", PRESET, *[a for o in overrides for a in ("--set", o)]]
        _step(argv + (["--epochs", epochs] if epochs else []))
        cfg = configs.Config() if resume else configs.load_config(PRESET, overrides)
        train(cfg, data, folder.out, cache_dir=cache, resume=resume, epochs=epochs)

    print("[3/6] evaluating both on the held-out users, the NSM with Monte Carlo sampling", flush=True)
    for folder in (run_dir, twin_dir):
        _step(["evaluate", "--checkpoint", folder.best, "--data", data, "--cache", cache])
        print(summary(evaluate(folder.best, data, cache_dir=cache)))

    recording, labels = held_out_recording(data)
    print(f"[4/6] streaming the held-out recording {recording.name}", flush=True)
    stream = dict(
        predictions=stream_dir / "predictions.jsonl",
        timeline=stream_dir / "timeline.png",
        summary_path=stream_dir / "summary.json",
    )
    _step(
        [
            "stream",
            "--checkpoint",
            run_dir.best,
            "--events",
            recording,
            "--labels",
            labels,
            "--adaptive",
            "--decay",
            "0.9",
            "--out",
            stream["predictions"],
            "--timeline",
            stream["timeline"],
            "--summary",
            stream["summary_path"],
            "--quiet",
        ]
    )
    replay(run_dir.best, recording, labels=labels, mc={"adaptive": True}, decay=0.9, progress=False, **stream)

    print("[5/6] exporting to NIR and checking the file in norse", flush=True)
    line = _step(["export", "--checkpoint", run_dir.best, "--out", nir_path, "--target", "norse", "--check"])
    result = export_checkpoint(run_dir.best, nir_path, check=True, target="norse")
    if not result.ok:
        raise InputError(f"the export check failed: {line}")

    seconds = time.perf_counter() - started
    write_text_atomic(out / "report.md", report(out, run_dir.out, twin_dir.out, stream_dir, nir_path, seconds))
    print(
        f"\n[6/6] report: {out / 'report.md'}\n"
        f"  run folder (checkpoints, metrics, curves.png, health.png, reliability.png): {run_dir.out}\n"
        f"  the deterministic twin's run folder: {twin_dir.out}\n"
        f"  streaming predictions and timeline.png: {stream_dir}\n"
        f"  NIR graph: {nir_path}\n  simulated data: {data}   frame cache: {cache}\n"
        f"finished in {seconds:.0f} s",
        flush=True,
    )
    return out / "report.md"
