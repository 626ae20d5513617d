"""The harness of docs/training-study.md: why allconvnet18 of binary units did not learn, measured.

Three commands, all on a DVS-Gesture-style data set (``nsm simulate gestures --out g12 --users 12 --per-class 2
--seed 3``) binned as the ``gestures-allconv18`` preset bins it (six 16 ms frames, 32x32):

  signal   how much of each layer's states depends on the input, at initialisation: per layer, the share of
           the states' variance that is across inputs rather than across noise draws of the same input
           (K draws of 32 training clips), and the share of +1 states;
  probe    how much the readout's input says about the class at initialisation, per forward pass (``--modes``):
           a linear probe (softmax regression) fitted on the global-average-pooled last layer of 2000 training
           clips, its accuracy on the test users' clips, and the features' spread across inputs;
  run      a short training run of one variant, printing the held-out users' accuracy after every epoch
           (Monte Carlo with 8 samples and the deterministic network) and the layers' rates of +1 states.

The variants a ``run`` can take are the library's own settings (``--init``, ``--warmup``, ``--lr``,
``--lr-step``, ``--neuron``, ``--gain``, ``--pool-rate``, ``--weight-scale``, and ``--center batch``: the
batch-normalized firing logits of ``nsm.normalization``) and changes that exist only here, tried and not kept:
``--pool-grad product`` (the OR-pool's backward pass is the gradient of the OR written as 1 - prod_k (1 - z_k)/2),
``--pool-grad expected`` (the gradient of the expected OR, 1 - prod(1 - P_k), from the firing probabilities;
``max``, the default, is max-pooling's own rule: all of a window's gradient to its first +1, or to its first input
when none is on), ``--pool-logits`` (max-pool the firing logits, then sample) and ``--center mean|full|renorm``
(subtract each unit's batch mean of the firing logit; for ``full`` also divide by its batch standard deviation, as
batch normalization does, beta then unused; ``renorm``: batch-normalize, then map back to the running moments).

    python scripts/training_study.py signal --data g12 --cache cache --gain 1 2 3 5
    python scripts/training_study.py probe --data g12 --cache cache --modes deterministic mean-input --seed 2
    python scripts/training_study.py run --data g12 --cache cache --neuron bn --epochs 8
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

import nsm
from nsm import functional as nsmf
from nsm.initialization import data_init
from pipelines import config as configs
from pipelines.data import load_data
from pipelines.training.setup import build_model, init_batch

PRESET = "gestures-allconv18"


def setup(args, with_test: bool):
    """(the data splits, a function building a fresh model with the run's seed)."""
    overrides = [f"model.neuron={args.neuron}", f"model.options.width={args.width}"]
    # binarized input, as the preset had it in sections 1-12 (a four-level code since section 16)
    cfg = configs.load_config(PRESET, overrides + ["model.options.input_levels=[1]"])
    splits = load_data(
        cfg.data,
        args.data,
        args.cache,
        augmentation=cfg.train.augment,
        seed=args.seed,
        with_test=with_test,
        progress=False,
    )

    def fresh_model():
        torch.manual_seed(args.seed)
        return build_model(cfg, splits)

    return splits, fresh_model


def signal(args) -> None:
    """Per layer and gain: variance of the states across inputs / total variance, at initialisation."""
    splits, fresh_model = setup(args, with_test=False)
    for gain in args.gain:
        model = fresh_model()
        x = init_batch(splits.train, torch.device("cpu"), args.seed)
        if args.init == "data":
            data_init(model, x, gain=gain, pool_rate=args.pool_rate)
        items, k = x[:32], args.draws
        h = items.repeat(k, *([1] * (items.dim() - 1)))
        shares, rates = [], []
        with torch.no_grad():
            for layer in model:
                h = layer(h)
                if h.dim() == 4 and not isinstance(layer, nsm.Binarize):
                    z = h.reshape(k, len(items), *h.shape[1:])
                    total = z.var(dim=(0, 1)).mean()
                    across = (z.mean(0).var(dim=0) - z.var(dim=0).mean(0) / k).mean()  # finite-K corrected
                    pool = "pool " if isinstance(layer, torch.nn.MaxPool2d) else ""
                    shares.append(f"{pool}{float(across / total):.2f}")
                    rates.append(f"{pool}{float((z > 0).float().mean()):.2f}")
        print(f"gain {gain:g}: input-dependent share  " + "  ".join(shares), flush=True)
        print(f"gain {gain:g}: share of +1 states     " + "  ".join(rates), flush=True)


def pooled_features(model, items, mode: str, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(the readout's pooled input, the labels) of the (frames, label) ``items``, the units in ``mode``."""
    taken = []
    hook = model[-1].register_forward_pre_hook(lambda m, i: taken.append(i[0].mean(dim=(2, 3))))
    labels = []
    try:
        with torch.no_grad(), nsm.using_mode(model, mode):
            for k in range(0, len(items), batch):
                chunk = items[k : k + batch]
                model(torch.stack([x for x, _ in chunk]))
                labels += [int(y) for _, y in chunk]
    finally:
        hook.remove()
    return torch.cat(taken), torch.tensor(labels)


def linear_probe(f_train, y_train, f_test, y_test) -> tuple[float, float]:
    """(training, test) accuracy of a softmax regression (L2 1e-3, L-BFGS) fitted on (f_train, y_train)."""
    w = torch.zeros(f_train.shape[1], int(y_train.max()) + 1, requires_grad=True)
    b = torch.zeros(w.shape[1], requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=300)

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(f_train @ w + b, y_train) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        train_acc = float(((f_train @ w + b).argmax(1) == y_train).float().mean())
        return train_acc, float(((f_test @ w + b).argmax(1) == y_test).float().mean())


def probe(args) -> None:
    """Per mode: a softmax regression on the initialised network's pooled last layer, trained on 2000 training
    clips (standardized features, L2 1e-3, L-BFGS), tested on the test users' clips."""
    splits, fresh_model = setup(args, with_test=True)
    x = init_batch(splits.train, torch.device("cpu"), args.seed)
    chosen = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(1))[:2000]
    train_items = [splits.train[int(i)] for i in chosen]
    test_items = [splits.test[i] for i in range(len(splits.test))]
    for mode in args.modes:
        model = fresh_model()
        if args.init == "data":
            with nsm.using_mode(model, mode):
                data_init(model, x, gain=args.gain[0], pool_rate=args.pool_rate)
        model.eval()
        f_train, y_train = pooled_features(model, train_items, mode)
        f_test, y_test = pooled_features(model, test_items, mode)
        mean, spread = f_train.mean(0), f_train.std(0).clamp_min(1e-6)
        fit, held = linear_probe((f_train - mean) / spread, y_train, (f_test - mean) / spread, y_test)
        print(
            f"{mode}: probe accuracy {held:.1%} on the test users ({fit:.1%} on its training clips); "
            f"the features' spread across inputs {float(spread.mean()):.3f}",
            flush=True,
        )


class ExpectedOrPool(torch.nn.Module):
    """``--pool-grad expected`` / ``--pool-logits``: an NSM unit and the max-pool after it as one module."""

    def __init__(self, unit, pool_logits: bool):
        super().__init__()
        self.unit, self.pool_logits = unit, pool_logits

    def forward(self, h):
        v = self.unit.logit(h)
        if self.pool_logits:
            return self.unit.states_from_logit(F.max_pool2d(v, 2))
        with torch.no_grad():
            z = nsmf.draw_states(v) if self.unit.mode != "deterministic" else nsmf.sign_states(v)
            pooled = F.max_pool2d(z, 2)
        log_off = F.avg_pool2d(torch.log(0.5 * torch.erfc(v).clamp_min(1e-12)), 2) * 4  # log prod(1 - P_k)
        expected = 1 - 2 * torch.exp(log_off)
        return pooled + expected - expected.detach()


class ProductOrPool(torch.nn.Module):
    """``--pool-grad product``: the OR of +-1 states written as 1 - 2 prod_k (1 - z_k)/2 (exact for states), so the
    backward pass gives input k the window's gradient times prod_{j != k} (1 - z_j)/2 (all of it when the others
    are all -1, else none): unbiased for prod_{j != k} (1 - P_j) when the states are independent draws."""

    def forward(self, z):
        b, c, h, w = z.shape
        off = ((1 - z) / 2).reshape(b, c, h // 2, 2, w // 2, 2)
        return 1 - 2 * off.prod(5).prod(3)


def fuse_pools(model, pool_logits: bool):
    layers, out, i = list(model), [], 0
    while i < len(layers):
        if i + 1 < len(layers) and isinstance(layers[i + 1], torch.nn.MaxPool2d) and hasattr(layers[i], "logit"):
            out.append(ExpectedOrPool(layers[i], pool_logits))
            i += 2
        else:
            out.append(layers[i])
            i += 1
    return torch.nn.Sequential(*out)


def center_logits(unit, full: bool, init_mean: torch.Tensor) -> None:
    """``--center``: v <- (beta w/||w||.z - batch mean) [/ batch std] + b_eff, running statistics in evaluation;
    the bias is first set so that b_eff is the unit's initial mean logit (which keeps the OR-pool target)."""
    logit = unit.logit
    with torch.no_grad():
        unit.bias.copy_(init_mean * math.sqrt(2) * unit.noise.std * nsmf.weight_norm(unit.weight))
    unit.register_buffer("run_mean", torch.zeros(unit.out_features))
    unit.register_buffer("run_var", torch.ones(unit.out_features))

    def centered(z):
        b = unit.effective_weight()[1].reshape(1, -1, 1, 1)
        v = logit(z) - b
        if unit.training:
            mean, var = v.mean((0, 2, 3)), v.var((0, 2, 3))
            with torch.no_grad():
                unit.run_mean.lerp_(mean, 0.1)
                unit.run_var.lerp_(var, 0.1)
        else:
            mean, var = unit.run_mean, unit.run_var
        v = v - mean.reshape(1, -1, 1, 1)
        if full:
            v = v / (var.reshape(1, -1, 1, 1) + 1e-5).sqrt()
        return v + b

    unit.logit = centered


def renormalize_logits(unit, momentum: float = 0.1) -> None:
    """``--center renorm``: in training, v = beta (sigma_R (a - mu_B) / sigma_B + mu_R) + b_eff with a = (w/||w||).z,
    mu_B, sigma_B its batch moments per unit and mu_R, sigma_R their running averages (constants to autograd);
    in evaluation v = beta a + b_eff, the unit's own logit. Equal where the batch moments are the running ones."""
    logit = unit.logit
    unit.moments = None

    def renormalized(z):
        if not unit.training:
            return logit(z)
        w_eff, b_eff = unit.effective_weight()
        shape = (1, -1, 1, 1) if z.dim() == 4 else (1, -1)
        dims = (0, 2, 3) if z.dim() == 4 else (0,)
        a = unit.affine(z, unit.weight / nsmf.weight_norm(unit.weight).reshape((-1,) + (1,) * (unit.weight.dim() - 1)))
        mean, var = a.mean(dims), a.var(dims)
        with torch.no_grad():
            if unit.moments is None:
                unit.moments = [mean.detach().clone(), var.detach().clone()]
            else:
                unit.moments[0].lerp_(mean, momentum)
                unit.moments[1].lerp_(var, momentum)
        run_mean, run_var = unit.moments
        n = (a - mean.reshape(shape)) * ((run_var + 1e-5) / (var + 1e-5)).sqrt().reshape(shape) + run_mean.reshape(
            shape
        )
        v = n * unit.beta.reshape(shape)
        return v if b_eff is None else v + b_eff.reshape(shape)

    unit.logit = renormalized


def accuracy(model, test, samples: int = 8) -> tuple[float, float]:
    """(Monte Carlo, deterministic) accuracy on ``test``; ``samples = 0``: the deterministic one twice (a network
    without sampling units, such as ``bn``, gives the same answer every draw)."""
    model.eval()
    mc = det = n = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=64):
            with nsm.using_mode(model, "deterministic"):
                det += int((model(x).argmax(1) == y).sum())
            mc += int((nsm.mc_predict(model, x, samples=samples).probs.argmax(1) == y).sum()) if samples else 0
            n += len(y)
    model.train()
    return mc / n, det / n


def run(args) -> None:
    splits, fresh_model = setup(args, with_test=True)
    model = fresh_model()
    x = init_batch(splits.train, torch.device("cpu"), args.seed)
    with torch.no_grad():
        for unit in model:
            if hasattr(unit, "logit"):
                unit.weight.mul_(args.weight_scale)
    if args.init == "data":
        with nsm.using_mode(model, "deterministic") if args.warmup else contextlib.nullcontext():
            data_init(model, x, gain=args.gain[0], pool_rate=args.pool_rate)
    if args.center == "batch":
        with nsm.using_mode(model, "deterministic") if args.warmup else contextlib.nullcontext():
            nsm.LogitNormalization.attach(model, x)
    elif args.center == "renorm":
        for unit in model:
            if hasattr(unit, "logit"):
                renormalize_logits(unit)
    elif args.center != "none":
        means = {}
        hooks = [
            u.register_forward_hook(lambda m, i, o: means.__setitem__(m, m.logit(i[0]).mean((0, 2, 3))))
            for u in model
            if hasattr(u, "logit")
        ]
        with torch.no_grad():
            model(x)
        for h in hooks:
            h.remove()
        for unit, mean in means.items():
            center_logits(unit, args.center == "full", mean)
    if args.pool_grad == "product":
        model = torch.nn.Sequential(*[ProductOrPool() if isinstance(m, torch.nn.MaxPool2d) else m for m in model])
    elif args.pool_grad == "expected" or args.pool_logits:
        model = fuse_pools(model, args.pool_logits)
    loader = torch.utils.data.DataLoader(splits.train, batch_size=args.batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    probe = x[:128]
    log, started = [], time.perf_counter()
    for epoch in range(args.epochs):
        splits.train.set_epoch(epoch)
        nsm.set_mode(model, "deterministic" if epoch < args.warmup or args.neuron == "bn" else "probability")
        losses = []
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if args.lr_step and (epoch + 1) % args.lr_step == 0:
            for group in optimizer.param_groups:
                group["lr"] *= 0.5
        if args.neuron != "bn":
            nsm.set_mode(model, "probability")
        with torch.no_grad():
            h, rates = probe, []
            for layer in model:
                h = layer(h)
                if h.dim() == 4 and not isinstance(layer, nsm.Binarize):
                    rates.append(f"{'P' if isinstance(layer, torch.nn.MaxPool2d) else ''}{(h > 0).float().mean():.2f}")
        mc, det = accuracy(model, splits.test, samples=0 if args.neuron == "bn" else 8)
        mc = det if args.neuron == "bn" else mc
        log.append(dict(epoch=epoch + 1, loss=float(np.mean(losses)), mc8=mc, deterministic=det))
        print(
            f"epoch {epoch + 1}: loss {np.mean(losses):.3f}, held-out MC8 {mc:.3f}, deterministic {det:.3f} "
            f"({time.perf_counter() - started:.0f} s); +1 rates {' '.join(rates)}",
            flush=True,
        )
    print(json.dumps(dict(vars(args), log=log)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("signal", "probe", "run"))
    p.add_argument("--data", required=True, help="DVS-Gesture-style data set folder")
    p.add_argument("--cache", required=True, help="frame cache folder")
    p.add_argument("--neuron", default="bnsm")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", choices=("data", "none"), default="data")
    p.add_argument("--gain", type=float, nargs="+", default=[1.0])
    p.add_argument(
        "--pool-rate",
        type=float,
        default=0.5,
        help="data init: OR-pool output rate sought (15/16 is what units firing half the time give)",
    )
    p.add_argument(
        "--weight-scale",
        type=float,
        default=1.0,
        help="run: multiply the initial weights (their norm sets how far Adam turns their direction per step)",
    )
    p.add_argument("--draws", type=int, default=8, help="signal: noise draws per input")
    p.add_argument(
        "--modes", nargs="+", default=["deterministic", "mean-input"], choices=nsm.MODES, help="probe: forward passes"
    )
    p.add_argument("--warmup", type=int, default=0, help="run: epochs with deterministic forward passes")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-step", type=int, default=0, help="run: halve the learning rate every this many epochs")
    p.add_argument("--pool-grad", choices=("max", "product", "expected"), default="max")
    p.add_argument("--pool-logits", action="store_true")
    p.add_argument("--center", choices=("none", "mean", "full", "renorm", "batch"), default="none")
    args = p.parse_args()
    torch.set_num_threads(2)
    {"signal": signal, "probe": probe, "run": run}[args.command](args)


if __name__ == "__main__":
    main()
