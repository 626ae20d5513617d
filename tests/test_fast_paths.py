"""The fast paths against the reference path: bfloat16 autocast and compiled training steps.

bfloat16 autocast: only the products are rounded, everything around them stays float32.

Under ``torch.autocast("cpu", dtype=torch.bfloat16)`` a unit's convolution reads its input and weights rounded to
bfloat16 (8 significant bits, unit roundoff u = 2^-8 for round-to-nearest), accumulates in float32 and writes a
bfloat16 result. So each term w_j m_j carries a relative error of at most about 2u and the rounded sum one more
u of its magnitude: |x_bf16 - x| <= 3u sum_j |w_j| |m_j| + u |x|, bounded here by 4u sum_j |w_j m_j|. The reference is
computed in float64 from the unrounded operands, independently of the library's moment code.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import models
import nsm
from pipelines import config as configs
from pipelines import runs, training
from pipelines.training import steps

U = 2.0**-8  # bfloat16's unit roundoff (8 significant bits)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def bf16(fn):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return fn()


def test_bf16_autocast_rounds_only_the_expected_units_products():
    torch.manual_seed(0)
    unit = models.create_model("allconvnet18", in_channels=6, input_size=(8, 8), num_classes=3, neuron="bnsm")[1]
    m = torch.rand(2, 6, 8, 8) * 2 - 1  # means of independent states
    w, b = unit.effective_weight()
    mean, var = bf16(lambda: unit.expected_logit(m))
    assert mean.dtype == var.dtype == torch.float32
    m64, w64, b64 = m.double(), w.detach().double(), b.detach().double()
    ref_mean = F.conv2d(F.pad(m64, (1, 1, 1, 1), value=-1.0), w64, b64)
    ref_var = F.conv2d(1 - m64**2, w64**2, padding=1)
    mean_scale = F.conv2d(F.pad(m64.abs(), (1, 1, 1, 1), value=1.0), w64.abs()) + b64.abs()[:, None, None]
    var_scale = F.conv2d(1 - m64**2, w64**2, padding=1)  # all terms are >= 0
    assert bool(((mean.double() - ref_mean).abs() <= 4 * U * mean_scale).all())
    assert bool(((var.double() - ref_var).abs() <= 4 * U * var_scale + 1e-12).all())
    assert bool((mean.double() != ref_mean).any()), "autocast did not round the product"
    states = bf16(lambda: unit.expected_states(m))
    assert states.dtype == torch.float32
    torch.testing.assert_close(states, nsm.moments.expected_sign(mean, var), rtol=0, atol=0)


@pytest.mark.parametrize("neuron", ["bnsm", "dcnn"])
def test_bf16_autocast_keeps_the_networks_logits_and_monte_carlo_average_float32(neuron):
    torch.manual_seed(0)
    net = models.create_model("allconvnet18", in_channels=6, input_size=(16, 16), num_classes=5, neuron=neuron)
    x = torch.randint(0, 3, (4, 6, 16, 16)).float()
    if neuron == "bnsm":
        nsm.set_mode(net, "expected")
    net.eval()
    with torch.no_grad():
        ref = net(x)
        out = bf16(lambda: net(x))
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    assert bool((out != ref).any())  # rounded ...
    assert float((out - ref).abs().max()) <= 0.1 * float(ref.abs().max())  # ... not broken
    nsm.set_mode(net, "probability")
    probs = bf16(lambda: nsm.mc_predict(net, x, samples=2).probs)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(4))


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_autocasts_training_only_on_cpus_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(steps, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    on = configs.TrainConfig(cpu_bf16=True)
    context, scaler = steps.autocast_for(cpu, on)
    assert scaler is None
    assert isinstance(context, torch.autocast) == native
    if native:
        assert context.fast_dtype == torch.bfloat16 and context.device == "cpu"
    context, _ = steps.autocast_for(cpu, configs.TrainConfig(cpu_bf16=False))
    assert not isinstance(context, torch.autocast)


def test_native_bf16_is_read_from_the_cpus_capabilities(monkeypatch):
    for caps, native in (({"avx512_bf16": True}, True), ({"amx_bf16": True}, True), ({"avx2": True}, False)):
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda caps=caps: caps)
        assert runs.cpu_has_native_bf16() is native


@pytest.mark.parametrize("precision, dtype", [("float32", torch.float32), ("bfloat16", torch.bfloat16)])
def test_monte_carlo_precision_sets_the_states_dtype_and_keeps_probabilities_float32(precision, dtype):
    """In bfloat16 the sampled +-1 states travel between layers in bfloat16 (exact), the probabilities stay float32."""
    torch.manual_seed(0)
    net = models.create_model("allconvnet18", in_channels=6, input_size=(16, 16), num_classes=5, neuron="bnsm")
    seen = []
    for module in list(net)[2:]:
        module.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    settings = nsm.MCSettings(samples=3, precision=precision)
    probs = settings.predict(net, torch.randint(0, 3, (2, 6, 16, 16)).float()).probs
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    assert seen and {z.dtype for z in seen} == {dtype}
    assert all(bool(((z == 1) | (z == -1)).all()) for z in seen)
    assert settings.describe() == ("MC 3" if precision == "float32" else "MC 3, bfloat16")


def test_monte_carlo_precision_must_be_known():
    with pytest.raises(ValueError, match=r"precision must be one of \('float32', 'bfloat16', 'int8'\), got 'fp8'"):
        nsm.MCSettings(precision="fp8")


def test_compiled_expected_pass_computes_the_eager_pass():
    """torch.compile's fused kernels: the same logits and gradients as eager execution, to float32 rounding. One
    whole graph (``fullgraph``), compiler errors raised rather than run eagerly: compiled code is compared."""
    torch.manual_seed(0)
    net = models.create_model(
        "allconvnet18", in_channels=6, input_size=(8, 8), num_classes=3, neuron="bnsm", width=0.125, input_levels=[1, 3]
    )
    x, y = torch.randint(0, 5, (4, 6, 8, 8)).float(), torch.tensor([0, 1, 2, 1])
    results = []
    for run in (net, torch.compile(net, fullgraph=True)):
        net.zero_grad()
        with nsm.using_mode(net, "expected"), torch._dynamo.config.patch(suppress_errors=False):
            logits = run(x)
        F.cross_entropy(logits, y).backward()
        results.append((logits.detach(), [p.grad.clone() for p in net.parameters()]))
    (eager, eager_grads), (fused, fused_grads) = results
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-5)
    for a, b in zip(fused_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "neuron, mode, batch, epoch, recording, compiled",
    [
        ("bnsm", "expected", 8, 1, False, True),
        ("bnsm", "expected", 5, 1, False, False),  # the last, smaller batch
        ("bnsm", "expected", 8, 0, False, False),  # the warm-up epoch
        ("bnsm", "expected", 8, 1, True, False),  # a recorded step
        ("bnsm", "probability", 8, 1, False, False),  # sampled states: numba kernels
        ("dcnn", None, 8, 1, False, True),
        ("bd", None, 8, 1, False, False),  # thresholded states: numba kernels
    ],
)
def test_compiled_steps_are_full_batches_after_the_warmup_in_passes_torch_can_trace(
    neuron, mode, batch, epoch, recording, compiled
):
    net = models.create_model("allconvnet18", neuron=neuron, width=0.125)
    tc = configs.TrainConfig(batch_size=8, warmup_epochs=1, compile=True)
    if mode is not None:
        nsm.set_mode(net, mode)
    assert steps.uses_compiled(net, batch, tc, epoch, recording) == compiled


def test_compiled_model_only_when_asked_in_one_process_with_a_compiler(monkeypatch, capsys):
    monkeypatch.setattr(torch._dynamo.config, "suppress_errors", False)  # compiled_model sets it: restored after
    net = models.create_model("allconvnet18", neuron="bnsm", width=0.125)
    one = runs.Process(rank=0, world=1, device=torch.device("cpu"))
    assert steps.compiled_model(net, configs.TrainConfig(compile=False), one) is None
    assert steps.compiled_model(net, configs.TrainConfig(compile=True), one) is not None
    two = runs.Process(rank=0, world=2, device=torch.device("cpu"))
    assert steps.compiled_model(net, configs.TrainConfig(compile=True), two) is None
    assert "distributed runs train eagerly" in capsys.readouterr().out
    monkeypatch.setattr(steps.shutil, "which", lambda name: None)
    assert steps.compiled_model(net, configs.TrainConfig(compile=True), one) is None
    assert "no C++ compiler" in capsys.readouterr().out


@pytest.mark.parametrize("neuron", ["bnsm", "dcnn"])
def test_a_bfloat16_run_trains_and_records_its_activity_for_every_kind(gestures, tmp_path, monkeypatch, neuron):
    """``train.cpu_bf16`` through ``nsm train`` (forced on, as on a CPU with native bf16): finite losses and an
    activity record at every step, whose pre-activations are computed from what the layers passed in bfloat16."""
    monkeypatch.setattr(steps, "cpu_has_native_bf16", lambda: True)
    data, cache = gestures
    sets = ["train.epochs=1", "train.cpu_bf16=true", "train.record_every=1", "train.device=cpu", "train.workers=0"]
    cfg = configs.load_config("tiny", [f"model.neuron={neuron}", *sets])
    history = training.train(cfg, data, tmp_path / "run", cache_dir=cache, progress=False)
    assert history["epoch"] == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "activity.jsonl").read_text().splitlines()]
    assert records and all(r["last_hidden"]["percentiles"] for r in records)
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(metrics["train_loss"])
