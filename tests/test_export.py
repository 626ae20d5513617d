"""NIR export of binary spike networks, the NIR runtime, quantization and the ``nsm export`` job."""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import subprocess
import sys

import nir
import numpy as np
import pytest
import torch
from conftest import importer_python

import models
import nsm
from pipelines.checkpoint import project_version, save_checkpoint
from pipelines.commands.export import add_parser, run
from pipelines.export import (
    INTEGER_THRESHOLD,
    MARGIN,
    TAU,
    ExportError,
    NIRRuntime,
    as_float64,
    check_inputs,
    compare_logits,
    decode_metadata,
    deterministic_logits,
    norse_logits,
    norse_module,
    quantization_report,
    quantize,
    read_nir,
    spike_input,
    target_report,
    to_nir,
    write_nir,
)

SMALL = (2, 32, 32)  # untrained allconvnet18, width 0.25
TASK = (2, 18, 18)  # trained nmnist_cnn: 18 -> 14 -> 7 -> 3 -> 1
CLASSES = ["up", "down", "left", "right"]


def quadrant_task(n: int, seed: int, shape=TASK):
    """Class k = events concentrated in quadrant k over sparse background noise (linearly separable)."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.poisson(torch.full((n, c, h, w), 0.05), generator=g)
    hh, ww = h // 2, w // 2
    for i in range(n):
        r, q = divmod(int(y[i]), 2)
        x[i, :, r * hh : (r + 1) * hh, q * ww : (q + 1) * ww] += torch.poisson(
            torch.full((c, hh, ww), 0.5), generator=g
        )
    return x, y


def small_nmnist(neuron="bnsm", seed=0):
    torch.manual_seed(seed)
    return models.create_model(
        "nmnist_cnn", in_channels=TASK[0], input_size=TASK[1:], num_classes=4, neuron=neuron, channels=(4, 8), hidden=32
    )


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return models.create_model("allconvnet18", in_channels=SMALL[0], input_size=SMALL[1:], num_classes=4, width=0.25)


@pytest.fixture(scope="module")
def trained():
    """nmnist_cnn (4c5-p2-8c5-p2-32-4, bNSM) after 60 Adam steps on the quadrant task.

    Adam at 3e-3: at 1e-2 about one noise draw in six left the network stuck at chance."""
    model = small_nmnist()
    x, y = quadrant_task(256, seed=1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(3)
    for _ in range(60):
        idx = torch.randint(0, 256, (32,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    return model


@pytest.fixture(scope="module")
def task_inputs():
    return quadrant_task(200, seed=2)


def test_trained_fixture_learned_the_task(trained, task_inputs):
    x, y = task_inputs
    acc = (deterministic_logits(trained, x).argmax(1) == y).float().mean()
    assert acc > 0.7, f"fixture model did not learn (deterministic accuracy {acc:.2f})"


# ------------------------------------------------------------------------------------ norse agreement


def _norse_agrees(model, input_shape, x, tmp_path, name):
    path = write_nir(to_nir(model, input_shape), tmp_path / f"{name}.nir")
    got = norse_logits(nir.read(path), x)
    ref = deterministic_logits(model, x)
    result = compare_logits(got, ref)
    assert result.n >= 200
    assert result.top_class_agree == result.n, str(result)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4), str(result)


def test_norse_matches_untrained_allconvnet18_on_200_inputs(untrained, tmp_path):
    _norse_agrees(untrained, SMALL, check_inputs(SMALL, 200, seed=0), tmp_path, "untrained")


def test_norse_matches_trained_model_on_200_inputs(trained, task_inputs, tmp_path):
    x, _ = task_inputs
    _norse_agrees(trained, TASK, torch.cat([x, check_inputs(TASK, 50, seed=5)]), tmp_path, "trained")


def tiny_test_items(tiny_run, gestures, n=200):
    """The trained ``tiny`` preset (conftest ``tiny_run``), its first ``n`` test clips as (n, C, H, W) counts and
    their labels."""
    from pipelines.checkpoint import load_checkpoint
    from pipelines.config import from_dict
    from pipelines.data import test_set

    ck = load_checkpoint(tiny_run / "best.pt")
    data, cache = gestures
    clips = test_set(from_dict(ck.config).data, data, cache, progress=False)
    assert len(clips) >= n
    x = torch.stack([clips[i][0] for i in range(n)])
    return ck.model.eval(), x.flatten(1, 2), torch.tensor([clips[i][1] for i in range(n)])


def tiny_test_clips(tiny_run, gestures, n=200):
    """``tiny_test_items`` without the labels."""
    return tiny_test_items(tiny_run, gestures, n)[:2]


def test_norse_matches_the_trained_tiny_preset_on_200_test_clips(tiny_run, gestures, tmp_path):
    model, x = tiny_test_clips(tiny_run, gestures)
    _norse_agrees(model, tuple(x.shape[1:]), x, tmp_path, "tiny")


def test_export_data_checks_on_the_test_clips_with_their_labels(tiny_run, gestures, tmp_path, capsys):
    """``--data``: the quantization report's accuracy is the deterministic network's on the first N test clips,
    against their labels (computed here from the clips), and the check runs on those clips."""
    from pipelines.cli import main

    data, cache = gestures
    n = 60
    argv = ["export", "--checkpoint", str(tiny_run / "best.pt"), "--out", str(tmp_path / "t.nir"), "--quiet"]
    argv += ["--data", str(data), "--cache", str(cache), "--check-samples", str(n), "--quantize-bits", "8"]
    assert main(argv + ["--check", "--target", "norse"]) == 0
    out = capsys.readouterr().out
    model, x, labels = tiny_test_items(tiny_run, gestures, n=n)
    accuracy = float((deterministic_logits(model, x).argmax(1) == labels).float().mean())
    assert f"on {n} inputs (labels: the labels of {n} test clips of {data})" in out
    assert f"accuracy {100 * accuracy:.2f}% ->" in out
    assert f"check on {n} inputs: top class equal on {n}/{n}" in out


def test_runtime_mc_of_the_trained_tiny_preset_matches_mc_predict(tiny_run, gestures):
    """Per clip, the runtime's MC mean of each class probability differs from nsm.mc_predict's by less than
    5 standard errors of the difference of the two independent K-sample means, each side's variance measured on its
    own samples (K = 256: a small class probability's samples are skewed, rare draws giving it most of the mass, and
    one side's variance alone missed them: 6.6 standard errors on one of 440 entries; with both sides' variances
    the largest of four seed pairs was 3.1)."""
    model, x = tiny_test_clips(tiny_run, gestures, n=40)
    runtime = NIRRuntime(to_nir(model, tuple(x.shape[1:])))
    k = 256
    draws = runtime.sample_probabilities(x, k, generator=torch.Generator().manual_seed(1))  # (K, N, classes)
    ours = runtime.mc_predict(x, samples=k, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours.probs, draws.mean(0), rtol=0, atol=1e-12)
    torch.manual_seed(2)
    with torch.no_grad():
        singles = torch.stack([torch.softmax(model(x), 1) for _ in range(k)]).double()
    se = ((draws.var(0) + singles.var(0)) / k).sqrt().clamp_min(1e-3)
    gap = (ours.probs - singles.mean(0)).abs()
    assert torch.all(gap < 5 * se + 1e-6), (gap / se).max()


def test_negative_beta_flips_units_and_export_still_matches(trained, task_inputs, tmp_path):
    model = copy.deepcopy(trained)
    flipped = {}
    with torch.no_grad():
        for name, layer in model.named_children():
            if isinstance(layer, (nsm.NSMConv2d, nsm.NSMLinear)):
                layer.beta[::2] *= -1.0
                flipped[name] = layer.beta.clone()
    assert all((b < 0).any() for b in flipped.values())
    g_pos, g_neg = to_nir(trained, TASK), to_nir(model, TASK)
    for name, beta in flipped.items():
        w_pos, w_neg = g_pos.nodes[f"syn{name}"].weight, g_neg.nodes[f"syn{name}"].weight
        neg = (beta < 0).numpy()
        np.testing.assert_array_equal(w_neg[neg], -w_pos[neg])  # the unit's sign is flipped
        np.testing.assert_array_equal(w_neg[~neg], w_pos[~neg])
        np.testing.assert_array_equal(decode_metadata(g_neg.nodes[f"lif{name}"].metadata)["beta"], beta.numpy())
    x, _ = task_inputs
    _norse_agrees(model, TASK, x, tmp_path, "negbeta")
    assert compare_logits(NIRRuntime(g_neg).forward(x), deterministic_logits(model, x)).ok


@pytest.mark.parametrize("neuron", ["bd", "wbd", "gnsm", "ste", "bn"])
def test_other_binary_kinds_export_and_match(neuron, tmp_path):
    model = small_nmnist(neuron)
    graph = to_nir(model, TASK)
    meta = decode_metadata(graph.nodes["lif1"].metadata)
    assert meta["neuron"] == neuron
    assert meta["mode"] == ("probability" if neuron in ("gnsm", "ste") else "deterministic")
    _norse_agrees(model, TASK, check_inputs(TASK, 200, seed=1), tmp_path, neuron)


# ------------------------------------------------------------------------------------ threshold semantics


def test_exact_tie_fires_like_the_nsm_unit_despite_strict_threshold():
    """A unit with zero weights and bias has v = 0 exactly: sgn(0) = +1 in PyTorch; the graph must fire too."""
    model = small_nmnist()
    with torch.no_grad():
        model[1].weight[0].zero_()
        model[1].bias[0] = 0.0
    x = check_inputs(TASK, 8, seed=0)
    with nsm.using_mode(model, "deterministic"), torch.no_grad():
        z = model[1](model[0](x))
    assert (z[:, 0] == 1).all()
    graph = to_nir(model, TASK)
    assert float(graph.nodes["lif1"].v_threshold.max()) == -MARGIN
    spikes = NIRRuntime(graph).forward(x, until="lif1")
    torch.testing.assert_close(spikes, ((z + 1) / 2).double())
    # norse's LIF is strict (fires when v > threshold): at threshold 0 the tie would be lost.
    lif = nir.LIF(
        tau=np.full(3, TAU, np.float32),
        r=np.ones(3, np.float32),
        v_leak=np.zeros(3, np.float32),
        v_threshold=np.array([0.0, -MARGIN, -MARGIN], np.float32),
    )
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type={"input": np.array([3])}),
            "lif": lif,
            "output": nir.Output(output_type={"output": np.array([3])}),
        },
        edges=[("input", "lif"), ("lif", "output")],
    )
    out, _ = norse_module(g)(torch.tensor([0.0, 0.0, -1e-30]))
    assert out.tolist() == [0.0, 1.0, 0.0]


# ------------------------------------------------------------------------------------ runtime


def test_runtime_deterministic_equals_model_exactly(untrained, trained, task_inputs):
    x, _ = task_inputs
    for model, shape, inputs in [(untrained, SMALL, check_inputs(SMALL, 200, seed=0)), (trained, TASK, x)]:
        rt = NIRRuntime(to_nir(model, shape))
        result = compare_logits(rt.logits(inputs), deterministic_logits(model, inputs))
        assert result.ok, str(result)


def test_runtime_mc_matches_mc_predict_within_sampling_error(trained, task_inputs, tmp_path):
    """Both average K = 400 softmax draws; per (input, class) the two means differ by N(0, (var_m + var_r)/K).

    Tolerance 5 standard errors (variances estimated from the draws) over 24 x 4 comparisons: a false
    failure has probability below 1e-4.
    """
    x = task_inputs[0][:24]
    k = 400
    path = write_nir(to_nir(trained, TASK), tmp_path / "mc.nir")
    rt = NIRRuntime(path)
    draws_r = rt.sample_probabilities(x, k, generator=torch.Generator().manual_seed(11))
    res_r = rt.mc_predict(x, k, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(res_r.probs, draws_r.mean(0))
    res_m = nsm.mc_predict(trained, x, samples=k, generator=torch.Generator().manual_seed(12))
    with torch.inference_mode(), nsm.using_generator(trained, torch.Generator().manual_seed(13)):
        draws_m = nsm.sample_probabilities(trained, x, k)
    se = ((draws_m.var(0) + draws_r.var(0)) / k).sqrt()
    diff = (res_r.probs - res_m.probs).abs()
    assert (diff <= 5 * se + 1e-6).all(), f"max diff/se {float((diff / (se + 1e-12)).max()):.2f}"
    det = torch.softmax(rt.logits(x), dim=1)
    assert ((res_r.probs - det).abs() > 5 * se + 1e-3).any(), "runtime sampling had no effect: the test has no teeth"
    # a runtime with the sampling switched off is detectably different from the model's MC
    assert ((det - res_m.probs).abs() > 5 * se + 1e-3).any()


def test_runtime_mc_of_deterministic_kind_is_deterministic():
    model = small_nmnist("bn")
    x = check_inputs(TASK, 16, seed=2)
    rt = NIRRuntime(to_nir(model, TASK))
    res = rt.mc_predict(x, 8, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(res.probs, torch.softmax(deterministic_logits(model, x), 1), rtol=1e-4, atol=1e-5)


def test_runtime_rejects_wrong_input_shape(trained):
    rt = NIRRuntime(to_nir(trained, TASK))
    with pytest.raises(ValueError, match="does not match"):
        rt.forward(torch.zeros(1, 3, 18, 18))


# ------------------------------------------------------------------------------------ structure, refusal, metadata


def test_default_allconvnet18_graph_structure():
    torch.manual_seed(0)
    model = models.create_model("allconvnet18")
    graph = to_nir(model, (6, 64, 64))
    kinds = {}
    for node in graph.nodes.values():
        kinds[type(node).__name__] = kinds.get(type(node).__name__, 0) + 1
    assert kinds == {"Input": 1, "Conv2d": 12, "LIF": 15, "SumPool2d": 4, "Flatten": 1, "Affine": 1, "Output": 1}
    assert list(graph.nodes["input"].input_type["input"]) == [6, 64, 64]
    assert list(graph.nodes["lif15"].v_threshold.shape) == [256, 8, 8]
    assert list(graph.nodes["or4"].v_threshold.shape) == [64, 32, 32]
    assert float(graph.nodes["or4"].v_threshold.max()) == 0.5
    assert list(graph.nodes["readout_pool16"].kernel_size) == [8, 8]
    assert graph.nodes["readout"].weight.shape == (11, 256)
    lif = graph.nodes["lif1"]
    assert np.all(lif.tau == TAU) and np.all(lif.r == 1) and np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
    w = as_float64(model)[1].effective_weight()[0].detach().numpy()  # export computes in float64
    np.testing.assert_array_equal(graph.nodes["syn1"].weight, 2 * w)
    np.testing.assert_allclose(graph.nodes["syn1"].bias, -w.reshape(w.shape[0], -1).sum(1), rtol=1e-5, atol=1e-6)
    report = target_report(graph)
    assert "Conv2d 12" in report
    assert "network: 12 neuron layers > 9 cores" in report
    assert re.search(r"Xylo \(rockpool\)\s+not a target: rockpool 3\.1\.0.*this graph has 12 Conv2d", report)
    assert re.search(r"snnTorch\s+not run here .*LIF tau = 1e-4 \(its fixed dt\): FAILED", report)
    assert re.search(r"Loihi 2 \(lava-dl\)\s+not a target: lava-dl 0\.6\.0 has no NIR importer", report)
    assert "accepts" not in report and "verified:" not in report  # nothing was run: nothing is claimed


@pytest.mark.parametrize("neuron", ["dcnn", "sn", "plain"])
def test_refuses_non_binary_networks_naming_the_layer(neuron):
    model = models.create_model(
        "allconvnet18", in_channels=2, input_size=(16, 16), num_classes=4, width=0.25, neuron=neuron
    )
    with pytest.raises(ExportError, match=r"layer 1 \((Real|NoisyRectifier|Plain)Conv2d") as err:
        to_nir(model, (2, 16, 16))
    assert "not a binary spike layer" in str(err.value)


def test_metadata_round_trip(trained, tmp_path):
    frame_spec = {"n_time_bins": 2, "sensor": [34, 34, 2]}
    graph = to_nir(trained, TASK, classes=CLASSES, frame_spec=frame_spec)
    back = read_nir(write_nir(graph, tmp_path / "meta.nir"))
    meta = decode_metadata(back.metadata)
    assert meta["classes"] == CLASSES and meta["frame_spec"] == frame_spec
    assert meta["model"] == "nmnist_cnn" and meta["project_version"] == project_version()
    assert meta["model_spec"] == json.loads(json.dumps(trained.spec)) and meta["format"] == "nsm-events-spike-graph"
    unit = decode_metadata(back.nodes["lif1"].metadata)
    assert unit["neuron"] == "bnsm" and unit["mode"] == "probability" and unit["layer"] == "1"
    assert unit["noise"] == {"kind": "bernoulli", "p": 0.5}
    np.testing.assert_array_equal(unit["beta"], trained[1].beta.detach().numpy())
    assert decode_metadata(back.nodes["or2"].metadata)["role"] == "or"
    assert set(back.nodes) == set(graph.nodes) and sorted(back.edges) == sorted(graph.edges)


def test_metadata_holds_each_layers_own_noise(tmp_path):
    """``conv_noise_p`` (the original N-MNIST code's p = 0.25 in the convolutions, 0.5 in the fully
    connected layer) reaches the file: each unit node carries its layer's noise, and the spec the option."""
    torch.manual_seed(0)
    model = models.create_model(
        "nmnist_cnn",
        in_channels=TASK[0],
        input_size=TASK[1:],
        num_classes=4,
        channels=(4, 8),
        hidden=32,
        noise_p=0.5,
        conv_noise_p=0.25,
    )
    back = read_nir(write_nir(to_nir(model, TASK), tmp_path / "noise.nir"))
    units = sorted(
        (decode_metadata(n.metadata) for n in back.nodes.values() if (n.metadata or {}).get("role") == "unit"),
        key=lambda u: int(u["layer"]),
    )
    assert [(type(model[int(u["layer"])]).__name__, u["noise"]["p"]) for u in units] == [
        ("NSMConv2d", 0.25),
        ("NSMConv2d", 0.25),
        ("NSMLinear", 0.5),
    ]
    assert decode_metadata(back.metadata)["model_spec"]["conv_noise_p"] == 0.25


def test_write_is_atomic_and_bad_files_are_named(trained, tmp_path):
    path = tmp_path / "m.nir"
    path.write_bytes(b"previous")
    write_nir(to_nir(trained, TASK), path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.nir"]  # no temporary file left behind
    bad = tmp_path / "bad.nir"
    bad.write_bytes(b"\x89HDF\r\n" + b"\0" * 10)
    with pytest.raises(ValueError, match="bad.nir"):
        read_nir(bad)


def _free_space_size_field(data: bytes) -> int:
    """The byte offset of the size of the free-space object (index 0) of the first global heap collection in HDF5
    ``data`` (HDF5 file format spec: "GCOL", version, 3 reserved bytes, collection size; then objects of index (2
    bytes), reference count (2), 4 reserved, size (8), data padded to 8 bytes)."""
    heap = data.index(b"GCOL")
    end = heap + int.from_bytes(data[heap + 8 : heap + 16], "little")
    offset = heap + 16
    while offset + 16 <= end:
        if int.from_bytes(data[offset : offset + 2], "little") == 0:
            return offset + 8
        offset += 16 + (int.from_bytes(data[offset + 8 : offset + 16], "little") + 7) // 8 * 8
    raise AssertionError("no free-space object in the global heap")


def test_a_nir_file_with_a_damaged_global_heap_is_an_error_not_a_hang(trained, tmp_path, monkeypatch):
    """NIR keeps its strings in the global heap; libhdf5 2.0.0 loops forever when the collection's free-space object
    claims 8 bytes: the child that reads it first runs out of time, and the error names the file."""
    from events import h5attrs

    path = write_nir(to_nir(trained, TASK), tmp_path / "heap.nir")
    data = bytearray(path.read_bytes())
    field = _free_space_size_field(bytes(data))
    data[field : field + 8] = (8).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    monkeypatch.setattr(h5attrs, "HEAP_READ_TIMEOUT_S", 5.0)
    with pytest.raises(ValueError, match=r"heap.nir: not a readable NIR graph \(reading it did not finish within 5 s"):
        NIRRuntime(path)


# ------------------------------------------------------------------------------------ quantization


def test_quantization_is_integer_exact_and_reports_accuracy(trained, task_inputs, tmp_path):
    x, y = task_inputs
    graph = to_nir(trained, TASK)
    q8 = quantize(graph, 8)
    for name in ("syn1", "syn3", "syn6"):
        w = q8.nodes[name].weight
        assert np.all(w == np.rint(w)) and np.abs(w).max() <= 127 and np.abs(w).max() == 127
        assert np.all(q8.nodes[name].bias == np.rint(q8.nodes[name].bias))
    assert np.all(q8.nodes["lif1"].v_threshold == INTEGER_THRESHOLD)
    # the written quantized graph runs the same in norse as in the runtime, exactly
    back = read_nir(write_nir(q8, tmp_path / "q8.nir"))
    got, ref = norse_logits(back, x), NIRRuntime(q8).forward(x)
    assert torch.equal(got.argmax(1), ref.argmax(1)) and torch.allclose(got, ref, rtol=1e-5, atol=1e-3)
    report = quantization_report(graph, q8, x, y)
    acc = float((deterministic_logits(trained, x).argmax(1) == y).float().mean())
    assert report.accuracy_before == pytest.approx(acc) and report.n == 200 and report.bits == 8
    assert report.agreement >= 0.95  # 8 bits barely perturbs this model
    assert abs(report.accuracy_after - report.accuracy_before) <= 1 - report.agreement + 1e-9
    q2 = quantize(graph, 2)
    assert set(np.unique(q2.nodes["syn1"].weight)) <= {-1.0, 0.0, 1.0}
    assert "8-bit weights" in str(report) and "->" in str(report)
    with pytest.raises(ValueError, match="bits"):
        quantize(graph, 1)


# ------------------------------------------------------------------------------------ CLI


def _parse(argv):
    parser = argparse.ArgumentParser(prog="nsm")
    add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_export_check_from_checkpoint(trained, tmp_path, capsys):
    ck = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(ck, trained, classes=CLASSES, frame_spec={"n_time_bins": 2})
    out = tmp_path / "out" / "model.nir"
    args = _parse(["export", "--checkpoint", str(ck), "--out", str(out), "--check", "--seed", "4"])
    assert args.func is run and args.check_samples == 200
    assert run(args) == 0
    text = capsys.readouterr().out
    assert "norse 1.1.0 check on 200 inputs: top class equal on 200/200" in text and "OK" in text
    assert "toolchains (verified" in text and "neurons" in text and "synapses" in text
    assert re.search(r"norse\s+verified: norse 1\.1\.0 check on 200 inputs", text)
    meta = decode_metadata(read_nir(out).metadata)
    assert meta["classes"] == CLASSES and meta["frame_spec"] == {"n_time_bins": 2}

    args = _parse(
        [
            "export",
            "--checkpoint",
            str(ck),
            "--out",
            str(tmp_path / "q.nir"),
            "--check",
            "--check-samples",
            "50",
            "--quantize-bits",
            "6",
        ]
    )
    assert run(args) == 0
    text = capsys.readouterr().out
    assert "quantization to 6-bit weights" in text and "top class equal on 50/50" in text


def test_input_levels_export_as_a_thermometer_spike_map_that_norse_runs_exactly(tmp_path, capsys):
    """A network whose Binarize codes counts at levels [1, 2, 4]: the graph reads 3 C spike channels, channel k C + c
    spiking where count channel c reaches level k (``spike_input``); the metadata names the levels; norse's import
    and the reference runtime agree with the PyTorch model on count inputs."""
    torch.manual_seed(0)
    net = models.create_model(
        "nmnist_cnn",
        in_channels=2,
        input_size=(18, 18),
        num_classes=4,
        channels=(4, 8),
        hidden=32,
        input_levels=[1, 2, 4],
    )
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, net, classes=CLASSES, frame_spec={"n_time_bins": 2})
    out = tmp_path / "levels.nir"
    assert run(_parse(["export", "--checkpoint", str(ck), "--out", str(out), "--check", "--seed", "1"])) == 0
    assert "top class equal on 200/200" in capsys.readouterr().out
    graph = read_nir(out)
    meta = decode_metadata(graph.metadata)
    assert meta["input_levels"] == [1, 2, 4] and "levels [1, 2, 4]" in meta["input_encoding"]
    assert list(graph.nodes["input"].input_type["input"]) == [6, 18, 18]
    counts = torch.poisson(torch.full((5, 2, 18, 18), 1.5), generator=torch.Generator().manual_seed(2))
    spikes = spike_input(net, counts)
    for k, level in enumerate((1, 2, 4)):
        assert torch.equal(spikes[:, 2 * k : 2 * k + 2], (counts >= level).double())
    torch.testing.assert_close(
        NIRRuntime(graph).outputs(spikes), deterministic_logits(net, counts), rtol=1e-9, atol=1e-9
    )


def test_an_export_removes_the_temporary_files_that_killed_exports_left(trained, tmp_path, capsys):
    """A killed ``nsm export`` leaves ``.model.nir.<pid>.<random>.tmp`` beside its output; the next export to that
    file removes those of dead processes, and keeps a running writer's and other files' temporaries."""
    ck = tmp_path / "checkpoint.pt"
    save_checkpoint(ck, trained, classes=CLASSES, frame_spec={"n_time_bins": 2})
    folder = tmp_path / "out"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = folder / f".model.nir.{dead.pid}.0123abcd.tmp"
    live = folder / f".model.nir.{os.getpid()}.89abcdef.tmp"
    other = folder / f".other.nir.{dead.pid}.0123abcd.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"half a graph")
    assert run(_parse(["export", "--checkpoint", str(ck), "--out", str(folder / "model.nir")])) == 0
    capsys.readouterr()
    assert sorted(p.name for p in folder.iterdir()) == sorted(["model.nir", live.name, other.name])
    assert decode_metadata(read_nir(folder / "model.nir").metadata)["classes"] == CLASSES


def test_cli_refuses_dcnn_checkpoint(tmp_path):
    model = models.create_model(
        "nmnist_cnn", in_channels=2, input_size=(18, 18), num_classes=4, neuron="dcnn", channels=(4, 8), hidden=32
    )
    ck = tmp_path / "dcnn.pt"
    save_checkpoint(ck, model, classes=CLASSES)
    with pytest.raises(ExportError, match="layer 1"):
        run(_parse(["export", "--checkpoint", str(ck), "--out", str(tmp_path / "x.nir")]))
    assert not (tmp_path / "x.nir").exists()


# ------------------------------------------------------------------------------------ per-target forms, real importers

from pipelines.export import TARGETS, check_file, speck_violations, target_form  # noqa: E402
from pipelines.export.importers import toolchain_version  # noqa: E402


def _reference(model, graph, x, bits):
    """The graph (quantized if ``bits``) and what its import must give: model logits, or the integer runtime's."""
    if bits is None:
        return graph, deterministic_logits(model, x)
    q = quantize(graph, bits)
    return q, NIRRuntime(q).forward(x)


def _target_cases(tiny_run, gestures, untrained_full):
    model, x = tiny_test_clips(tiny_run, gestures)
    yield "tiny", model, tuple(x.shape[1:]), x
    m, shape = untrained_full
    yield "allconvnet18", m, shape, check_inputs(shape, 200, seed=3)


@pytest.fixture(scope="module")
def untrained_full():
    """An untrained allconvnet18 at width 0.5, 2 x 32 x 32 (the default 6 x 64 x 64 costs minutes per importer)."""
    torch.manual_seed(7)
    shape = (2, 32, 32)
    return models.create_model("allconvnet18", in_channels=2, input_size=shape[1:], num_classes=11, width=0.5), shape


@pytest.mark.parametrize("target", TARGETS)
def test_every_target_form_computes_the_model_exactly_in_the_float64_runtime(target, untrained_full):
    model, shape = untrained_full
    x = check_inputs(shape, 64, seed=1)
    graph = to_nir(model, shape)
    for bits in (None, 8):
        if target == "speck" and bits is None:
            with pytest.raises(ExportError, match="quantize-bits"):
                target_form(graph, target)
            continue
        base, ref = _reference(model, graph, x, bits)
        form = target_form(base, target)
        got = NIRRuntime(form).forward(x)
        assert torch.equal(got.argmax(1), ref.argmax(1))
        assert torch.allclose(got, ref, rtol=1e-9, atol=1e-9) if bits is None else torch.equal(got, ref)


@pytest.mark.parametrize("target", ["norse", "snntorch", "sinabs", "speck", "spikingjelly", "spyx"])
def test_target_import_matches_the_model_on_200_inputs(target, tiny_run, gestures, untrained_full, tmp_path):
    """Export -> write -> read -> the target's own importer -> the model's outputs, for a trained tiny, an
    untrained allconvnet18 and their 8-bit forms (Spyx: allconvnet18's 8-bit form only): float graphs within 1e-4
    and the same top class on every input, integer graphs exactly equal. sinabs (and speck, run by sinabs),
    SpikingJelly and Spyx run in their own venvs (build/targets/TOOLCHAIN, made by make target-venvs)."""
    toolchain = "sinabs" if target in ("sinabs", "speck") else target
    python = None
    if toolchain_version(toolchain) is None:
        if toolchain in ("norse", "snntorch"):
            pytest.skip(f"{toolchain} is not installed here")
        python = importer_python(toolchain)
    for name, model, shape, x in _target_cases(tiny_run, gestures, untrained_full):
        graph = to_nir(model, shape)
        for bits in (None, 8):
            if target == "speck" and bits is None:
                continue
            if target == "spyx" and bits is None and name == "allconvnet18":
                continue  # CI time: a 50 s JAX compile; Spyx's float path is checked on tiny, allconvnet18's float form
                # by the four other importers, and Spyx's import of allconvnet18 in its integer form below
            base, ref = _reference(model, graph, x, bits)
            path = write_nir(target_form(base, target), tmp_path / f"{name}-{target}-{bits}.nir")
            result = check_file(target, path, x, ref, exact=bits is not None, python=python)
            assert result.n >= 200 and result.ok, f"{name} {bits}: {result}"


def test_generic_form_through_snntorch_is_wrong_and_the_report_says_so(untrained_full, tmp_path):
    """The control: snnTorch's fixed dt = 1e-4 scales the generic graph's thresholds (tau = 2^-10)."""
    if toolchain_version("snntorch") is None:
        pytest.skip("snntorch is not installed here")
    model, shape = untrained_full
    x = check_inputs(shape, 40, seed=2)
    path = write_nir(to_nir(model, shape), tmp_path / "generic.nir")
    result = check_file("snntorch", path, x, deterministic_logits(model, x), exact=False)
    assert not result.ok
    assert "LIF tau = 1e-4 (its fixed dt): FAILED" in target_report(read_nir(path))


def test_a_missing_toolchain_is_reported_not_passed(trained, tmp_path, monkeypatch):
    from pipelines.export import importers

    monkeypatch.setattr(importers, "toolchain_version", lambda name: None)
    path = write_nir(target_form(to_nir(trained, TASK), "sinabs"), tmp_path / "s.nir")
    x = check_inputs(TASK, 4, seed=0)
    result = check_file("sinabs", path, x, deterministic_logits(trained, x), exact=False)
    assert not result.ok and "NOT RUN" in str(result) and "not installed" in str(result)


# ------------------------------------------------------------------------------------ Speck rules


def _speck_net(plan, size=16, in_channels=2, bits=8):
    from models.allconvnet import build_allconv
    from nsm.neurons import neuron_kind

    torch.manual_seed(0)
    layers = build_allconv(plan, in_channels, (size, size), 4, neuron_kind("bnsm"))
    model = torch.nn.Sequential(*layers)
    shape = (in_channels, size, size)
    return target_form(quantize(to_nir(model, shape), bits), "speck"), shape


def test_speck_rule_check_passes_a_network_that_fits():
    """Three 3x3 layers, 5-bit weights (at 8 bits this net's integer biases need more than 8 bits: a violation)."""
    graph, _ = _speck_net([(8, 3), (8, 3), (16, 3)], bits=5)
    assert speck_violations(graph) == []
    assert "fits every rule checked" in target_report(graph)


def test_each_speck_rule_has_a_network_that_breaks_it_named_by_layer():
    graph, _ = _speck_net([(8, 3), (8, 3), (16, 3)], bits=5)
    # nine cores: 10 convolution layers
    many, _ = _speck_net([(4, 3)] * 10)
    assert "network: 10 neuron layers > 9 cores" in speck_violations(many)
    # kernel memory: 200 -> 256 channels of 3x3 need 200 * 2^(4 + 8) entries > 64 Ki
    big, _ = _speck_net([(256, 3)], in_channels=200, size=4)
    assert any(v.startswith("layer 1: kernel memory") for v in speck_violations(big))
    # neuron memory: 32 channels on 64 x 64 need 32 * 2^12 > 64 Ki
    wide, _ = _speck_net([(32, 3)], size=64)
    assert any(v.startswith("layer 1: neuron memory") for v in speck_violations(wide))
    # pooling between cores only: the max-pool's OR neuron
    pooled, _ = _speck_net([(8, 3), "pool", (8, 3)])
    assert any(v.startswith("layer 2 (max-pool)") for v in speck_violations(pooled))

    def broken(**changes):
        g = copy.deepcopy(graph)
        for key, value in changes.items():
            node_key, field = key.split("__")
            setattr(g.nodes[node_key], field, value(getattr(g.nodes[node_key], field)))
        return speck_violations(g)

    # one positive integer threshold per core
    assert any("layer 2: thresholds" in v for v in broken(lif2__v_threshold=lambda t: t * 0 + 0.5))
    two = broken(lif2__v_threshold=lambda t: np.concatenate([t[:1] * 0 + 2, t[1:]]))
    assert any("layer 2: thresholds" in v for v in two)
    # 8-bit biases and weights
    assert any("layer 3: biases not 8-bit" in v for v in broken(syn3__bias=lambda b: b + 500))
    assert any("layer 1: weights not 8-bit" in v for v in broken(syn1__weight=lambda w: w * 10))
    # IF neurons only: the generic float form
    torch.manual_seed(0)
    generic = speck_violations(to_nir(_speck_model([(8, 3)]), (2, 16, 16)))
    assert any("layer 1: LIF neuron" in v for v in generic)


def _speck_model(plan):
    from models.allconvnet import build_allconv
    from nsm.neurons import neuron_kind

    return torch.nn.Sequential(*build_allconv(plan, 2, (16, 16), 4, neuron_kind("bnsm")))


# ------------------------------------------------------------------------------------ hostile outputs and options


@pytest.fixture
def small_checkpoint(tmp_path):
    """An untrained bNSM nmnist_cnn for 2 x 18 x 18 inputs, saved as ``nsm train`` saves one."""
    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, small_nmnist(), classes=CLASSES, frame_spec={"n_time_bins": 2})
    return ck


def _one_line_error(capsys, argv, expected: str) -> str:
    """``nsm *argv`` ends with status 2 and one stderr line ``nsm export: error: ...`` holding ``expected``."""
    from pipelines.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nsm export: error: ") and expected in err[0], err
    return err[0]


def test_export_data_without_check_or_quantize_bits_is_one_line_and_writes_nothing(small_checkpoint, tmp_path, capsys):
    out = tmp_path / "m.nir"
    argv = ["export", "--checkpoint", str(small_checkpoint), "--out", str(out), "--data", str(tmp_path)]
    _one_line_error(capsys, argv, f"--data {tmp_path}: the test clips are inputs for --check and --quantize-bits")
    assert not out.exists()


def test_export_data_of_a_checkpoint_without_a_run_configuration_is_one_line(small_checkpoint, tmp_path, capsys):
    argv = ["export", "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "m.nir"), "--check"]
    _one_line_error(capsys, argv + ["--data", str(tmp_path)], "holds no run configuration, so --data cannot be binned")


def test_export_refuses_an_output_that_is_the_checkpoint_or_not_a_regular_file(small_checkpoint, tmp_path, capsys):
    """``--out`` the checkpoint itself (or through a symbolic or hard link, or ``dir/..``), a FIFO, a folder or a
    device: one line naming the output, before the checkpoint is read; the checkpoint and the special file stay."""
    ck = small_checkpoint
    data = ck.read_bytes()
    (tmp_path / "soft.pt").symlink_to(ck)
    os.link(ck, tmp_path / "hard.pt")
    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "fifo.nir")
    cases = [(out, f"same file as --checkpoint {ck}") for out in (ck, tmp_path / "soft.pt", tmp_path / "hard.pt")]
    cases += [(tmp_path / "folder" / ".." / "ck.pt", f"same file as --checkpoint {ck}")]
    cases += [
        (tmp_path / "fifo.nir", "a FIFO (named pipe), not a regular file"),
        (tmp_path / "folder", "Is a directory"),
    ]
    cases += [("/dev/null", "a character device, not a regular file")]
    for out, why in cases:
        for extra in ([], ["--check", "--quantize-bits", "6"]):
            line = _one_line_error(capsys, ["export", "--checkpoint", str(ck), "--out", str(out), *extra], why)
            assert line.startswith(f"nsm export: error: could not write {out}: ")
    assert ck.read_bytes() == data and (tmp_path / "hard.pt").read_bytes() == data
    assert (tmp_path / "soft.pt").is_symlink() and os.stat(tmp_path / "fifo.nir").st_mode & 0o170000 == 0o010000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt", "fifo.nir", "folder", "hard.pt", "soft.pt"]


def test_check_samples_is_bounded_by_count_and_by_the_memory_of_the_inputs(small_checkpoint, tmp_path, capsys):
    """``--check-samples`` at most ``MAX_CHECK_SAMPLES`` where it is parsed (and said in --help), and at most what
    fits in ``CHECK_INPUT_BYTES`` for the network's input before anything is allocated or written."""
    from pipelines.export import check as check_module
    from pipelines.export.write import export_checkpoint

    most = check_module.MAX_CHECK_SAMPLES
    from pipelines.cli import main

    for n in (most + 1, 1_000_000_000):  # refused where parsed: one line, exit status 2
        with pytest.raises(SystemExit) as exit_:
            main(["export", "--checkpoint", "ck", "--out", "o", "--check-samples", str(n)])
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_.value.code == 2 and err == [
            f"nsm export: error: --check-samples must be an integer in 1..{most}, got {n}"
        ]
    parser = argparse.ArgumentParser(prog="nsm")
    add_parser(parser.add_subparsers(dest="command"))
    help_text = " ".join(parser._subparsers._group_actions[0].choices["export"].format_help().split())
    assert f"at most {most} and at most as many as fit in 512 MiB" in help_text
    for n in (0, most + 1):  # the library checks it too
        with pytest.raises(ValueError, match=rf"--check-samples must be an integer in 1\.\.{most}, got {n}"):
            export_checkpoint(small_checkpoint, tmp_path / "m.nir", check=True, check_samples=n)
    assert check_module.max_check_samples(TASK) == most  # 648 floats an input: the count bounds it
    assert check_module.max_check_samples((2, 128, 128)) == 4096  # 128 KiB an input: memory bounds it
    assert check_module.max_check_samples((1, 1 << 16, 1 << 16)) == 1  # one input always fits the rule
    per_input = 4 * int(np.prod(TASK))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(check_module, "CHECK_INPUT_BYTES", 100 * per_input)
        mp.setattr(check_module, "check_inputs", lambda *a: pytest.fail("inputs allocated before the check"))
        for extra in (["--check"], ["--quantize-bits", "6"]):
            line = _one_line_error(
                capsys,
                ["export", "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "m.nir"), *extra]
                + ["--check-samples", "101"],
                "--check-samples 101: that many random inputs of shape (2, 18, 18)",
            )
            assert "at most 100 fit" in line
        assert not (tmp_path / "m.nir").exists()
    assert run(_parse(["export", "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "m.nir")])) == 0
    capsys.readouterr()  # without --check or --quantize-bits no inputs are made: the memory rule does not apply


def test_an_importer_python_that_cannot_run_is_one_line_naming_it_before_the_export(small_checkpoint, tmp_path, capsys):
    """Missing, a dangling link, a folder, a FIFO, not executable, a bare name not on PATH: refused before anything
    is written, naming ``--importer-python`` and the path."""
    plain = tmp_path / "plain.py"
    plain.write_text("print('not executable')\n")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    cases = [
        (tmp_path / "missing" / "python", "no such file"),
        (tmp_path / "dangling", "no such file (a dangling symbolic link)"),
        (tmp_path, "it is a directory, not an interpreter"),
        (tmp_path / "fifo", "it is a FIFO (named pipe), not an interpreter"),
        (plain, "not executable"),
        ("no-such-python-here", "no such program on PATH"),
    ]
    out = tmp_path / "m.nir"
    for python, why in cases:
        argv = ["export", "--checkpoint", str(small_checkpoint), "--out", str(out), "--check", "--target", "sinabs"]
        _one_line_error(capsys, [*argv, "--importer-python", str(python)], f"--importer-python {python}: {why}")
    assert not out.exists()


def _script(tmp_path, name: str, body: str):
    path = tmp_path / name
    path.write_text(body)
    path.chmod(0o755)
    return str(path)


def test_an_importer_that_exits_0_without_a_usable_result_is_a_check_not_passed(
    small_checkpoint, tmp_path, capsys, monkeypatch
):
    """An interpreter that runs but writes no outputs, garbage, outputs of another shape, or a file that is not a
    program at all: the check is reported not run with the reason (exit status 1), never a traceback."""
    from pipelines.cli import main
    from pipelines.export import importers

    monkeypatch.setattr(importers, "toolchain_version", lambda name: None)
    shebang = f"#!{sys.executable}\nimport sys, numpy as np\n"
    cases = [
        (_script(tmp_path, "true.sh", "#!/bin/sh\nexit 0\n"), "exited 0 but produced no result"),
        (_script(tmp_path, "garbage.sh", '#!/bin/sh\necho garbage > "$5"\n'), "exited 0 but wrote an unreadable"),
        (_script(tmp_path, "text.py", shebang + "np.save(sys.argv[5], np.array(['a'] * 4))\n"), "not (4, outputs)"),
        (_script(tmp_path, "rows.py", shebang + "np.save(sys.argv[5], np.zeros((3, 4)))\n"), "not (4, outputs)"),
        (
            _script(tmp_path, "cols.py", shebang + "np.save(sys.argv[5], np.zeros((4, 3)))\n"),
            "shape (4, 3), not (4, 4)",
        ),
        (_script(tmp_path, "not-a-program", "\x7fELF garbage"), "could not be started"),
    ]
    path = write_nir(target_form(to_nir(small_nmnist(), TASK), "sinabs"), tmp_path / "s.nir")
    x = check_inputs(TASK, 4, seed=0)
    for python, why in cases:
        result = check_file("sinabs", path, x, deterministic_logits(small_nmnist(), x), exact=False, python=python)
        assert not result.ok and "NOT RUN" in str(result) and why in str(result), str(result)
    argv = ["export", "--checkpoint", str(small_checkpoint), "--out", str(tmp_path / "m.nir"), "--target", "sinabs"]
    assert main([*argv, "--check", "--check-samples", "4", "--importer-python", cases[0][0]]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert f"sinabs check NOT RUN: --importer-python {cases[0][0]} ran the sinabs importer, which exited 0 but " in (
        captured.out
    )


def test_the_runtime_runs_many_inputs_in_batches_with_the_same_outputs(trained):
    """``NIRRuntime.outputs`` (what the quantization report and the check's reference use, so that memory holds
    one batch's activations) gives exactly what one ``forward`` over all inputs gives."""
    graph = quantize(to_nir(trained, TASK), 8)
    x = check_inputs(TASK, 300, seed=2)
    runtime = NIRRuntime(graph)
    assert torch.equal(runtime.outputs(x, max_batch=128), runtime.forward(x))
    assert torch.equal(runtime.outputs(x[:5]), runtime.forward(x[:5]))
