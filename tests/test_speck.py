"""The Speck-sized NSM (``specknet``, preset ``gestures-speck``) and its deployment form: the chip's rules checked on
the graph (``targets.speck_violations``, ``speck_memory``), 8-bit weights with biases bounded for the chip
(``quantize(..., bias_limit)``), and sinabs' own DYNAP-CNN backend mapping the exported file onto cores
(``chip.map_onto_speck``, ``speck_mapping.py``): an independent implementation of the memory formulas and the core
matching.

The tests that run sinabs need the venv ``make target-venvs`` builds (build/targets/sinabs) and skip, naming it,
when it is absent; the chip configuration (``make_config``) needs the real samna and skips without it."""

from __future__ import annotations

import dataclasses
import os
import subprocess

import nir
import numpy as np
import pytest
import torch
from conftest import importer_python

import models
from pipelines import config as configs
from pipelines.export import (
    NIRRuntime,
    check_inputs,
    importers,
    quantize,
    speck_memory,
    speck_violations,
    spike_input,
    target_form,
    target_report,
    to_nir,
    write_nir,
)
from pipelines.export.chip import map_onto_speck
from pipelines.export.targets import SPECK_BIAS_LIMIT, SPECK_BITS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (6, 32, 32)


def speck_graph(name="specknet", seed=0, bits=SPECK_BITS, **kw):
    """(model, its 8-bit graph with biases bounded for the chip, that graph's speck form), as the preset builds the
    model (``input_levels`` [1, 2, 4, 8]: 24 spike channels) unless ``kw`` says otherwise."""
    torch.manual_seed(seed)
    kw.setdefault("input_levels", configs.load_config("gestures-speck").model.options["input_levels"])
    model = models.create_model(name, **kw)
    shape = (model[0].out_channels(SHAPE[0]), *SHAPE[1:])
    q = quantize(to_nir(model, shape), bits, bias_limit=SPECK_BIAS_LIMIT)
    return model, q, target_form(q, "speck")


def unit_synapses(graph):
    return [n for n in graph.nodes.values() if isinstance(n, nir.Conv2d)]


def test_the_speck_preset_trains_specknet_with_allconv18s_recipe_and_input_code_on_the_chips_weight_grid():
    speck, allconv = configs.load_config("gestures-speck"), configs.load_config("gestures-allconv18")
    assert (speck.model.name, speck.model.neuron) == ("specknet", "bnsm")
    same_recipe = dataclasses.replace(allconv.train, kind_epochs={})  # the twin's epochs are measured for allconv18
    assert speck.data == allconv.data and speck.train == same_recipe and speck.eval == allconv.eval
    assert speck.model.options["input_levels"] == allconv.model.options["input_levels"]
    # on the chip's weight grid: its 8-bit export is the network trained and evaluated
    assert (speck.model.options["weight_bits"], speck.model.options["bias_limit"]) == (SPECK_BITS, SPECK_BIAS_LIMIT)


def test_specknet_fits_speck_by_the_rules_and_allconvnet18_does_not():
    _, _, graph = speck_graph()
    assert speck_violations(graph) == []
    assert "fits every rule checked" in target_report(graph)
    _, _, big = speck_graph("allconvnet18", width=0.5)
    problems = "\n".join(speck_violations(big))
    assert "max-pool" in problems and "12 neuron layers > 9 cores" in problems


def test_speck_weights_and_biases_are_8_bit_integers_and_the_form_computes_the_quantized_network():
    model, q, graph = speck_graph(seed=3)
    for syn in unit_synapses(graph):
        w, b = np.asarray(syn.weight), np.asarray(syn.bias)
        assert np.array_equal(w, np.rint(w)) and np.abs(w).max() <= 2 ** (SPECK_BITS - 1) - 1
        assert np.array_equal(b, np.rint(b)) and -(2 ** (SPECK_BITS - 1)) <= b.min() and b.max() < 2 ** (SPECK_BITS - 1)
    spikes = spike_input(model, check_inputs(SHAPE, 64, seed=1))
    assert torch.equal(NIRRuntime(graph).outputs(spikes), NIRRuntime(q).outputs(spikes))


def test_the_bias_limit_bounds_every_unit_bias_and_leaves_unbounded_units_as_they_were():
    torch.manual_seed(0)
    g = to_nir(models.create_model("specknet"), SHAPE)
    free, bounded = quantize(g, 8), quantize(g, 8, bias_limit=20)
    for a, b in zip(unit_synapses(free), unit_synapses(bounded)):
        assert np.abs(np.asarray(b.bias)).max() <= 20
        small = np.abs(np.asarray(a.bias)) < 20  # units whose bias already fit (before rounding) keep their scale
        assert np.array_equal(np.asarray(a.weight)[small], np.asarray(b.weight)[small])
    with pytest.raises(ValueError, match="bias limit >= 1"):
        quantize(g, 8, bias_limit=0)


def test_sinabs_maps_specknet_onto_distinct_cores_with_the_memories_the_rules_compute(tmp_path):
    python = importer_python("sinabs")
    _, _, graph = speck_graph()
    path = write_nir(graph, tmp_path / "speck.nir")
    mapping = map_onto_speck(path, python)
    assert mapping.ok, str(mapping)
    assert mapping.layers == 9 and len(set(mapping.cores.values())) == 9
    ours = speck_memory(graph)
    assert [mapping.memory["kernel"][str(i)] for i in range(9)] == [k for k, _ in ours]
    assert [mapping.memory["neuron"][str(i)] for i in range(9)] == [n for _, n in ours]


def test_sinabs_refuses_allconvnet18s_or_pools_as_the_rules_say(tmp_path):
    python = importer_python("sinabs")
    _, _, graph = speck_graph("allconvnet18", width=0.25)
    mapping = map_onto_speck(write_nir(graph, tmp_path / "allconv.nir"), python)
    assert not mapping.ok and mapping.refused and "SumPool2d" in mapping.refused, str(mapping)


def test_the_mapping_fails_on_integers_beyond_the_chips_ranges_the_control(tmp_path):
    """10-bit weights (and their biases) do not fit the chip's 8 bits: mapped, but the check must fail, naming them."""
    python = importer_python("sinabs")
    torch.manual_seed(0)
    graph = target_form(quantize(to_nir(models.create_model("specknet"), SHAPE), 10), "speck")
    mapping = map_onto_speck(write_nir(graph, tmp_path / "ten.nir"), python)
    assert mapping.cores is not None and not mapping.ok, str(mapping)
    assert "layer 0: weights not 8-bit integers" in mapping.out_of_range and "OUT OF the chip's ranges" in str(mapping)


def test_a_network_on_speck_weight_grid_maps_with_its_integers_as_they_are(tmp_path):
    """A power-of-two grid leaves a layer's largest integer below 127, which sinabs' own discretization would rescale
    (it makes each layer's largest weight 127): passed as they are, the integers are in range and the mapping
    passes."""
    python = importer_python("sinabs")
    torch.manual_seed(0)
    model = models.create_model(
        "specknet", input_levels=[1, 2, 4, 8], weight_bits=SPECK_BITS, bias_limit=SPECK_BIAS_LIMIT
    )
    graph = target_form(quantize(to_nir(model, (24, 32, 32)), SPECK_BITS, bias_limit=SPECK_BIAS_LIMIT), "speck")
    largest = [float(np.abs(n.weight).max()) for n in unit_synapses(graph)]
    assert min(largest) < 127  # a layer sinabs' discretize=True would rescale
    mapping = map_onto_speck(write_nir(graph, tmp_path / "grid.nir"), python)
    assert mapping.ok and mapping.out_of_range == [], str(mapping)


def test_cli_export_for_speck_checks_in_sinabs_and_maps_onto_cores(tmp_path, capsys):
    """``nsm export --target speck --quantize-bits 8 --check``: exact in sinabs, mapped by its chip backend, exit 0;
    without an interpreter that has sinabs, the mapping is reported as not run and the exit status is 1."""
    from pipelines.checkpoint import save_checkpoint
    from pipelines.cli import main

    python = importer_python("sinabs")
    model = speck_graph()[0]
    ck = tmp_path / "speck.pt"
    save_checkpoint(ck, model, classes=[str(i) for i in range(11)], frame_spec={"n_time_bins": 6})
    argv = ["export", "--checkpoint", str(ck), "--out", str(tmp_path / "s.nir"), "--target", "speck"]
    argv += ["--quantize-bits", "8", "--check", "--check-samples", "40"]
    assert main(argv + ["--importer-python", python]) == 0
    out = capsys.readouterr().out
    assert "mapped onto cores by sinabs' chip backend (fits every rule checked)" in out
    assert "top class equal on 40/40" in out and "DYNAP-CNN mapping ok -> OK" in out
    if importers.toolchain_version("sinabs") is None:  # this environment has no sinabs of its own
        assert main(argv) == 1
        assert "DYNAP-CNN mapping NOT RUN: sinabs is not installed" in capsys.readouterr().out


def test_make_config_builds_the_chip_configuration_where_samna_is_installed(tmp_path):
    python = importer_python("sinabs")
    probe = "import sys; sys.path.insert(0, sys.argv[1]); import speck_mapping; print(speck_mapping.real_samna())"
    here = os.path.join(ROOT, "pipelines", "export")
    real = subprocess.run([python, "-c", probe, here], capture_output=True, text=True).stdout.strip()
    if real != "True":
        pytest.skip(
            "samna is not installed in the sinabs venv (its PyPI package is a stub that pip-installs the real one "
            "from an index this machine cannot reach); make_config needs it"
        )
    _, _, graph = speck_graph()
    mapping = map_onto_speck(write_nir(graph, tmp_path / "speck.nir"), python)
    assert mapping.ok and mapping.config == "made", str(mapping)
