"""``nsm evaluate``: accuracy and calibration of a trained network on the test split.

Three predictors of the same network are compared on every test item:

  Monte Carlo     the mean softmax of K stochastic forward passes (``--samples K``), or adaptive
                  sampling (``--adaptive``: per input, stop once the running mean's top probability
                  reaches ``--threshold`` after ``--min-samples``, never beyond ``--max-samples``)
  1 sample        a single stochastic forward pass
  deterministic   the mean-field network (every unit z = sgn(E u)), the one export writes out

Monte Carlo predicts at the temperature that ``nsm train`` fitted on the run's validation items and recorded in
the checkpoint (``pipelines.temperature``; 1 when none); ``metrics.json`` then also holds the same samples' figures
at temperature 1 (``at_temperature_1``), so calibration is reported before and after the fit.

``metrics.json`` holds the Monte Carlo predictor's accuracy, NLL, Brier score, expected
calibration error (15 equal-width confidence bins) and mean samples used, the same for the other
two predictors, the reliability bins and, for DVS Gesture, the per-gesture accuracy (every clip of
a gesture combined by averaging its probabilities). ``reliability.png`` draws all three. Noise is
drawn from a generator seeded by ``--seed``, so an evaluation repeats exactly.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import nsm
from events.atomic import check_output, write_text_atomic
from events.errors import InputError
from nsm.sampling import MCSettings, draws_noise, temper

from . import config as configs
from .calibration import classification_metrics, group_accuracy, reliability_bins
from .checkpoint import load_checkpoint
from .data import item_shape, open_dataset, test_set
from .figures import plot_reliability
from .runs import DEFAULT_CACHE, EVALUATION, RELIABILITY, select_device
from .temperature import checkpoint_temperature


def predict(
    model, loader, *, mc: MCSettings, seed: int = 0, device=torch.device("cpu"), progress: bool = True
) -> dict[str, np.ndarray]:
    """Probabilities of the three predictors for every item of ``loader`` (Monte Carlo as ``mc`` says, one
    sample in ``mc``'s precision, the deterministic network in float32), with labels and samples used."""
    stochastic = draws_noise(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    if not stochastic:  # a deterministic network: one pass is the prediction (at the temperature asked for)
        mc = dataclasses.replace(mc, samples=1, adaptive=False)
    single = MCSettings(samples=1, precision=mc.precision)
    out = {k: [] for k in ("mc", "single", "deterministic", "labels", "samples_used")}
    model.eval()
    with torch.inference_mode(), nsm.using_generator(model, generator):
        for x, y in tqdm(loader, desc="evaluating", unit="batch", disable=not progress, leave=False):
            x = x.to(device)
            res = mc.predict(model, x, generator=generator)  # sets the units' generator
            out["mc"].append(res.probs.float().cpu())
            out["samples_used"].append(res.samples_used.cpu())
            out["single"].append(
                single.predict(model, x, generator=generator).probs.float().cpu()
                if stochastic
                else res.probs.float().cpu()
            )
            with nsm.using_mode(model, "deterministic"):
                out["deterministic"].append(torch.softmax(model(x).float(), dim=1).cpu())
            out["labels"].append(y)
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def check_data_fits(ck, checkpoint, shape: tuple[int, tuple[int, int]], classes, data_root) -> None:
    """Refuse, before anything is binned or run, data whose items the checkpoint's network cannot take: a
    ``ValueError`` naming the checkpoint and the data folder and saying what differs (input channels, input size,
    number of classes) when the items of ``data_root`` with the checkpoint's frame settings (``shape``:
    ``data.item_shape``) or the number of the data set's ``classes`` are not what ``ck.model`` was built for."""
    spec = ck.model.spec
    want = (int(spec["in_channels"]), tuple(int(s) for s in spec["input_size"]), int(spec["num_classes"]))
    have = (int(shape[0]), tuple(int(s) for s in shape[1]), len(classes))
    names = ("input channels", "input size", "number of classes")
    differs = [
        f"{name} {_shown(a)} in the network, {_shown(b)} in the data" for name, a, b in zip(names, want, have) if a != b
    ]
    if differs:
        raise InputError(
            f"{checkpoint}: its network does not fit the test items of {data_root} (with the checkpoint's frame "
            f"settings): {'; '.join(differs)}. Evaluate it on the data set it was trained on"
        )


def checked_test_set(ck, checkpoint, cfg, data_root, cache_dir, progress: bool = True):
    """The test split under ``data_root`` binned with the run's frame settings ``cfg.data`` (a ``FrameSet``, through
    the frame cache ``cache_dir``), once :func:`check_data_fits` has passed, before anything is binned;
    ``ValueError`` when the split has no items."""
    dataset = open_dataset(cfg.data, data_root, train=False)
    check_data_fits(ck, checkpoint, item_shape(cfg.data, dataset), dataset.classes, data_root)
    test = test_set(cfg.data, data_root, cache_dir, progress=progress, dataset=dataset)
    if len(test) == 0:
        raise InputError(f"{data_root}: the test split has no items for this run's frame settings")
    return test


def _shown(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def evaluate(
    checkpoint,
    data_root,
    out=None,
    *,
    seed: int = 0,
    cache_dir=DEFAULT_CACHE,
    device: str = "auto",
    progress: bool = True,
    **mc,
) -> dict:
    """Evaluate ``checkpoint`` on the test split under ``data_root``; write metrics.json and reliability.png into
    ``out`` (default: the checkpoint's folder).

    Monte Carlo as the run's eval settings say (``cfg.eval.mc``), at the checkpoint's fitted temperature; ``mc``:
    the settings to change from them, by ``nsm.MCSettings`` field (``samples=K``, ``adaptive=True``, ``threshold``,
    ``min_samples``, ``max_samples``, ``precision``; ``None`` values: not given; ``MCSettings.overridden``).

    Before anything is binned: an output that is the checkpoint itself or exists and is not a regular file is an
    ``OutputError`` (``events.atomic.check_output``), and data whose items the network cannot take a ``ValueError``
    saying what differs (:func:`check_data_fits`)."""
    ck = load_checkpoint(checkpoint)
    cfg = configs.from_dict(ck.config, str(checkpoint)) if ck.config else None
    if cfg is None:
        raise InputError(f"{checkpoint}: the checkpoint holds no run configuration (was it written by nsm train?)")
    temperature = checkpoint_temperature(ck.state, checkpoint)
    mc = dataclasses.replace(cfg.eval.mc.overridden(**mc), temperature=temperature)
    out = Path(checkpoint).parent if out is None else Path(out)
    for path in (out / EVALUATION, out / RELIABILITY):
        check_output(path, {"--checkpoint": checkpoint})
    test = checked_test_set(ck, checkpoint, cfg, data_root, cache_dir, progress)
    dev = select_device(device)
    model = ck.model.to(dev)
    loader = DataLoader(test, batch_size=cfg.eval.batch_size)
    p = predict(model, loader, mc=mc, seed=seed, device=dev, progress=progress)
    labels = p["labels"]
    mc_name = mc.describe()
    metrics = {
        "checkpoint": str(checkpoint),
        "epoch": ck.epoch,
        "model": ck.model.spec["name"],
        "neuron": ck.model.spec["neuron"],
        "split": "test",
        "classes": len(ck.classes),
        "predictor": mc_name,
        **classification_metrics(p["mc"], labels),
        "mean_samples": float(p["samples_used"].mean()),
        "temperature": mc.temperature,
    }
    if mc.temperature != 1.0:  # the same samples at temperature 1 (temper inverts exactly)
        raw = temper(torch.from_numpy(p["mc"]).double(), 1.0 / mc.temperature).numpy()
        metrics["at_temperature_1"] = classification_metrics(raw, labels)
    metrics["single_sample"] = classification_metrics(p["single"], labels)
    metrics["deterministic"] = classification_metrics(p["deterministic"], labels)
    if cfg.data.dataset == "dvsgesture" and cfg.data.frames_per_clip:
        for part, key in (
            (metrics, "mc"),
            (metrics["single_sample"], "single"),
            (metrics["deterministic"], "deterministic"),
        ):
            part["gesture_accuracy"] = group_accuracy(p[key], labels, test.groups)
        metrics["gestures"] = int(len(np.unique(test.groups)))
    conf = p["mc"].max(1)
    metrics["reliability"] = reliability_bins(conf, p["mc"].argmax(1) == labels).to_dict()
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / EVALUATION, json.dumps(metrics, indent=2) + "\n")
    plot_reliability(
        {"1 sample": (p["single"], labels), mc_name: (p["mc"], labels), "deterministic": (p["deterministic"], labels)},
        out / RELIABILITY,
        title=f"{metrics['model']} ({metrics['neuron']}), {len(labels)} test items",
    )
    return metrics


def predictor_table(metrics: dict) -> str:
    """A Markdown table of the three predictors of ``metrics.json``."""
    name, t, k = metrics["predictor"], metrics.get("temperature", 1.0), f"{metrics['mean_samples']:.1f}"
    rows = [(name if t == 1.0 else f"{name}, T {t:.3g}", metrics, k)]
    if "at_temperature_1" in metrics:
        rows.append((f"{name}, T 1 (the same samples)", metrics["at_temperature_1"], k))
    rows += [
        ("1 sample", metrics["single_sample"], "1"),
        ("deterministic", metrics["deterministic"], "1"),
    ]
    lines = ["| prediction | accuracy | NLL | Brier | ECE | mean samples |", "|---|---|---|---|---|---|"]
    for name, m, k in rows:
        lines.append(f"| {name} | {m['accuracy']:.1%} | {m['nll']:.3f} | {m['brier']:.3f} | {m['ece']:.3f} | {k} |")
    return "\n".join(lines)


def summary(metrics: dict) -> str:
    """The predictor table, and the per-gesture accuracy when there is one."""
    text = predictor_table(metrics)
    if "gesture_accuracy" in metrics:
        text += (
            f"\n\nper-gesture accuracy ({metrics['gestures']} gestures, clips combined): "
            f"{metrics['gesture_accuracy']:.1%}"
        )
    return text
