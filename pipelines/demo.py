"""``nsm demo``: the whole path from an event camera to calibrated predictions, in a few minutes on a CPU.

1. simulate a small DVS-Gesture-style data set in the original IBM layout (AEDAT 3.1 + label CSVs);
2. bin each labelled gesture into 16 ms frames (one merged polarity, 128 -> 32 pixels) through the HDF5
   frame cache, and cut 96 ms clips of six frames;
3. train a narrow ``allconvnet18`` of Bernoulli NSM units for a short while;
4. predict the held-out users' clips with Monte Carlo sampling (fixed K and adaptive) and with the
   deterministic network, and print accuracy, confidence and samples used.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

import events
import models
import nsm

SPEC = events.FrameSpec(time_window_us=16_000, polarity="merge", downsample=4, frames_per_clip=6, span="sample")


def collate(batch):
    frames = np.stack([f for f, _ in batch]).astype(np.float32)             # (B, T, P, H, W) event counts
    return torch.from_numpy(frames), torch.tensor([label for _, label in batch])


def evaluate(net, loader, **mc) -> dict:
    correct, conf, used, n = 0, 0.0, 0.0, 0
    for x, y in loader:
        res = nsm.mc_predict(net, x, **mc)
        correct += int((res.prediction == y).sum())
        conf += float(res.confidence.sum())
        used += float(res.samples_used.sum())
        n += len(y)
    return {"accuracy": correct / n, "confidence": conf / n, "samples": used / n}


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="simulate, train and predict end to end in a few minutes",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--epochs", type=int, default=3, help="training epochs over the simulated clips")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulation and the training")
    p.set_defaults(func=run)


def run(args) -> int:
    out = Path(args.out)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    data = out / "data"
    if not (data / "trials_to_train.txt").is_file():
        print(f"[1/4] simulating DVS-Gesture-style recordings into {data}")
        events.simulate_gestures(data, seed=args.seed, users=6, per_class=2)
    cache = events.FrameCache(out / "cache")
    train = cache.get(events.DVSGesture(data, train=True), SPEC).clips()
    test = cache.get(events.DVSGesture(data, train=False), SPEC).clips()
    print(f"[2/4] {len(train)} training and {len(test)} test clips of 6 x 16 ms frames at 32x32")

    net = models.create_model("allconvnet18", in_channels=6, input_size=(32, 32), num_classes=11, width=0.25)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loader = DataLoader(train, batch_size=32, shuffle=True, collate_fn=collate)
    print(f"[3/4] training allconvnet18 (width 0.25, Bernoulli NSM units) for {args.epochs} epochs")
    for epoch in range(args.epochs):
        net.train()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", unit="batch")
        for x, y in bar:
            loss = torch.nn.functional.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            bar.set_postfix(loss=f"{loss.item():.3f}")

    print("[4/4] Monte Carlo predictions on the held-out users")
    test_loader = DataLoader(test, batch_size=64, collate_fn=collate)
    rows = [("1 sample", evaluate(net, test_loader, samples=1)),
            ("MC, 16 samples", evaluate(net, test_loader, samples=16)),
            ("MC, adaptive (0.9)", evaluate(net, test_loader, adaptive=True, threshold=0.9, max_samples=32))]
    with nsm.using_mode(net, "deterministic"):
        rows.append(("deterministic", evaluate(net, test_loader, samples=1)))
    print(f"\n{'prediction':<20} {'accuracy':>9} {'mean confidence':>16} {'mean samples':>13}")
    for name, r in rows:
        print(f"{name:<20} {r['accuracy']:>9.1%} {r['confidence']:>16.3f} {r['samples']:>13.1f}")
    print(f"\nchance is {1 / 11:.1%}; finished in {time.perf_counter() - started:.0f} s; data and cache in {out}")
    return 0
