"""The SpikingJelly and Spyx export forms (``pipelines.export.forms``, ``layout``), their importers run in their own
venvs, the target report's three kinds of toolchain rows, and ``check_targets``' per-toolchain interpreters.

The tests that run an importer need the venv ``make target-venvs`` builds (build/targets/spikingjelly,
build/targets/spyx) and skip, naming it, when it is absent. The full check on a trained ``tiny`` and an untrained
allconvnet18, float and 8-bit, is ``test_export.test_target_import_matches_the_model_on_200_inputs``."""

from __future__ import annotations

import re

import nir
import numpy as np
import pytest
import torch
from conftest import importer_python

import models
from pipelines.export import (
    NIRRuntime,
    check_file,
    check_inputs,
    deterministic_logits,
    quantize,
    target_form,
    target_report,
    to_nir,
    write_nir,
)
from pipelines.export.check_targets import interpreters
from pipelines.export.check_targets import main as check_targets_main
from pipelines.export.layout import dense_as_conv, pools_as_conv
from pipelines.export.metadata import decode_metadata


def tiny_like(seed=0, size=32):
    """nmnist_cnn as the ``tiny`` preset builds it (16c5-p2-32c5-p2-256, a dense layer on a 32 x 5 x 5 map)."""
    torch.manual_seed(seed)
    return models.create_model(
        "nmnist_cnn", in_channels=2, input_size=(size, size), num_classes=11, channels=[16, 32], hidden=256
    )


def allconv_40(seed=0):
    """allconvnet18 at width 0.25 on 2 x 40 x 40: its readout sums a 5 x 5 map (25 cells, not a power of two)."""
    torch.manual_seed(seed)
    return models.create_model("allconvnet18", in_channels=2, input_size=(40, 40), num_classes=11, width=0.25)


# ------------------------------------------------------------------------------------ forms, in the float64 runtime


def test_spikingjelly_form_is_if_neurons_with_r_one_at_dt_one_and_uniform_parameters():
    graph = target_form(to_nir(tiny_like(), (2, 32, 32)), "spikingjelly")
    assert float(graph.metadata["dt"]) == 1.0
    neurons = [n for n in graph.nodes.values() if isinstance(n, (nir.IF, nir.LIF))]
    assert neurons and all(isinstance(n, nir.IF) for n in neurons)
    for n in neurons:  # its importer takes one r (= 1/dt), threshold and reset per node
        assert np.all(n.r == 1.0) and np.unique(n.v_threshold).size == 1 and np.all(n.v_reset == 0)
        assert float(n.v_threshold.flat[0]) > 0


def test_spyx_form_has_no_flatten_of_a_map_and_states_its_latency():
    model = tiny_like()
    generic = to_nir(model, (2, 32, 32))
    assert any(isinstance(n, nir.Flatten) and n.input_type["input"][1] == 5 for n in generic.nodes.values())
    for base in (generic, quantize(generic, 8)):
        graph = target_form(base, "spyx")
        flats = [n for n in graph.nodes.values() if isinstance(n, nir.Flatten)]
        assert [tuple(f.input_type["input"]) for f in flats] == [(256, 1, 1)]
        lifs = [n for n in graph.nodes.values() if isinstance(n, nir.LIF)]
        assert all(np.all(n.tau == 1.0) for n in lifs)
        meta = decode_metadata(graph.metadata)
        assert meta["dt"] == 1.0 and meta["steps"] == len(lifs) + 1 == 6
        ors = [n for n in lifs if decode_metadata(n.metadata)["role"] == "or"]
        assert ors and all(np.all(n.v_threshold == 0) for n in ors)


def test_layout_rewrites_keep_the_network_exactly():
    """dense_as_conv and pools_as_conv change the nodes, not what the graph computes (float64 runtime)."""
    for model, shape in ((tiny_like(), (2, 32, 32)), (allconv_40(), (2, 40, 40))):
        graph = to_nir(model, shape)
        x = check_inputs(shape, 64, seed=4)
        ref = NIRRuntime(graph).forward(x)
        for rewrite in (dense_as_conv, pools_as_conv):
            new = rewrite(graph)
            new = nir.NIRGraph(nodes=new.nodes, edges=new.edges, metadata=new.metadata)  # type-checked here
            assert torch.equal(NIRRuntime(new).forward(x), ref)
    pooled = pools_as_conv(to_nir(allconv_40(), (2, 40, 40)))
    assert isinstance(pooled.nodes["readout_pool16"], nir.Conv2d)  # 5 x 5
    assert isinstance(pooled.nodes["sumpool4"], nir.SumPool2d)  # 2 x 2 stays a pool


def test_lppool_of_a_25_cell_window_miscounts_spikes_which_is_why_such_pools_become_convolutions():
    """nirtorch 2.6 maps SumPool2d to LPPool2d(norm_type=1): float32 average times area. A 5 x 5 window of k spikes
    does not always come back as k (torch CPU); a 2 x 2 window always does."""
    for k, wrong in ((2, False), (5, True)):
        x = torch.zeros(k * k + 1, 1, k, k)
        for s in range(k * k + 1):
            x[s].view(-1)[:s] = 1.0
        counts = torch.nn.LPPool2d(1, k)(x).reshape(-1)
        assert bool((counts != torch.arange(k * k + 1, dtype=torch.float32)).any()) is wrong


# ------------------------------------------------------------------------------------ the importers, in their venvs


@pytest.mark.parametrize("target", ["spikingjelly", "spyx", "sinabs", "norse", "snntorch"])
def test_a_25_cell_readout_pool_is_exact_through_the_importer_for_integer_graphs(target, tmp_path):
    """Before the pool rewrite, norse, snnTorch and sinabs changed logits (by up to 4.9e-4) and SpikingJelly outputs."""
    python = importer_python(target) if target in ("spikingjelly", "spyx", "sinabs") else None
    if python is None:
        pytest.importorskip(target)
    model, shape = allconv_40(), (2, 40, 40)
    x = check_inputs(shape, 200, seed=6)
    q = quantize(to_nir(model, shape), 8)
    path = write_nir(target_form(q, target), tmp_path / f"{target}.nir")
    result = check_file(target, path, x, NIRRuntime(q).forward(x), exact=True, python=python)
    assert result.ok and result.exact, str(result)


def test_spyx_needs_the_stated_steps_the_control(tmp_path):
    """The control: read one step early, the Spyx import's output is not yet the network's (one step of latency per
    neuron layer); at ``steps`` it is."""
    python = importer_python("spyx")
    model, shape = tiny_like(), (2, 32, 32)
    x = check_inputs(shape, 24, seed=2)
    ref = deterministic_logits(model, x)
    graph = target_form(to_nir(model, shape), "spyx")
    steps = int(graph.metadata["steps"])
    early = nir.NIRGraph(nodes=graph.nodes, edges=graph.edges, metadata={**graph.metadata, "steps": steps - 1})
    good = check_file("spyx", write_nir(graph, tmp_path / "g.nir"), x, ref, exact=False, python=python)
    bad = check_file("spyx", write_nir(early, tmp_path / "e.nir"), x, ref, exact=False, python=python)
    assert good.ok, str(good)
    assert not bad.ok and not bad.missing, str(bad)


def test_cli_export_check_spyx_and_spikingjelly_end_to_end(tmp_path, capsys):
    from pipelines.checkpoint import save_checkpoint
    from pipelines.cli import main

    ck = tmp_path / "ck.pt"
    save_checkpoint(ck, tiny_like(), classes=[f"c{i}" for i in range(11)], frame_spec={"n_time_bins": 2})
    for target, name in (("spikingjelly", "SpikingJelly"), ("spyx", "Spyx")):
        python = importer_python(target)
        for bits in ([], ["--quantize-bits", "8"]):
            out = tmp_path / f"{target}{len(bits)}.nir"
            argv = ["export", "--checkpoint", str(ck), "--out", str(out), "--target", target, "--check"]
            assert main([*argv, "--check-samples", "40", "--importer-python", python, *bits]) == 0
            text = capsys.readouterr().out
            rule = "exactly equal" if bits else "within rtol = atol = 1e-4"
            assert re.search(
                rf"{name}\s+verified: {target} \S+ \(under .*\) check on 40 inputs: top class equal on "
                rf"40/40, max \|logit difference\| \S+ \(logits {re.escape(rule)}: yes\) -> OK",
                text,
            )


# ------------------------------------------------------------------------------------ the report


def test_report_says_verified_rules_only_and_not_a_target():
    graph = to_nir(tiny_like(), (2, 32, 32))
    report = target_report(graph)
    assert re.search(
        r"SpikingJelly\s+not run here \(--check --target spikingjelly runs it\); .*LIF tau/dt > 1: FAILED", report
    )
    assert re.search(r"Spyx\s+not run here .*1 Flatten of a map: FAILED.*OR neurons in \[0, 1/2\)\): FAILED", report)
    assert re.search(r"Speck \(DYNAP-CNN\)\s+rules only", report)
    assert re.search(
        r"Xylo \(rockpool\)\s+not a target: rockpool 3\.1\.0's from_nir maps only LI, LIF, CubaLIF, "
        r"Linear and Affine \(measured: NotImplementedError on Conv2d, SumPool2d, Flatten and IF\); this "
        r"graph has 2 Conv2d, 1 Flatten, 2 SumPool2d",
        report,
    )
    assert re.search(
        r"Loihi 2 \(lava-dl\)\s+not a target: lava-dl 0\.6\.0 has no NIR importer, and requires Python "
        r"< 3\.11",
        report,
    )
    sj = target_report(target_form(graph, "spikingjelly"))
    assert re.search(
        r"SpikingJelly\s+not run here .*IF r = 1/dt \(dt = 1\): ok; one threshold, r and reset per node: "
        r"ok; SumPool2d windows of 2\^k cells .*: ok",
        sj,
    )
    spyx = target_report(target_form(graph, "spyx"))
    line = next(ln for ln in spyx.splitlines() if ln.strip().startswith("Spyx"))
    assert "FAILED" not in line and "LIF tau = dt (dt = 1, memoryless): ok" in line


def test_report_of_a_checked_export_names_the_toolchain_verified():
    from pipelines.export import CheckResult

    graph = target_form(to_nir(tiny_like(), (2, 32, 32)), "spyx")
    ok = CheckResult(200, 200, 0.0, True, toolchain="spyx", version="1.0.0", exact=True)
    report = target_report(graph, ok)
    assert re.search(r"Spyx\s+verified: spyx 1\.0\.0 check on 200 inputs", report)
    assert re.search(r"SpikingJelly\s+not run here", report)


# ------------------------------------------------------------------------------------ check_targets' interpreters


def test_check_targets_takes_one_interpreter_per_toolchain_and_a_default():
    got = interpreters(["spyx=/a/bin/python", "spikingjelly=/b/bin/python", "/c/bin/python"])
    assert got == {"spyx": "/a/bin/python", "spikingjelly": "/b/bin/python", None: "/c/bin/python"}
    assert interpreters(None) == {}
    with pytest.raises(SystemExit, match=r"--importer-python lava=/x/python: no toolchain 'lava'; choose one of"):
        interpreters(["lava=/x/python"])
    with pytest.raises(SystemExit, match="--importer-python spyx=: no interpreter given"):
        interpreters(["spyx="])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "foo"], "--models foo: choose from tiny, allconvnet18, specknet (got foo)"),
        (["--targets", "norse,bogus"], "--targets norse,bogus: choose from generic,"),
        (["--seeds", "0,x"], "--seeds 0,x: give whole numbers"),
        (["--seeds=-1"], "--seeds -1: give whole numbers"),
    ],
)
def test_check_targets_refuses_unknown_models_targets_and_seeds_before_any_work(args, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        check_targets_main([*args, "--out", str(tmp_path / "runs")])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
