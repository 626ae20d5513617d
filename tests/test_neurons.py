"""The neuron kinds' records (``nsm.neurons.KINDS``): the tables rendered from them, the units they build, and the
rule that code holding a unit asks the unit, never its class."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import nsm
from nsm.neurons import BENCH_REFERENCE, BINARY_KINDS, KINDS, NEURON_KINDS, kind_table, neuron_kind

ROOT = Path(__file__).resolve().parents[1]
UNIT_CLASSES = (
    r"NSMConv2d|NSMLinear|_NSMUnit|SignConv2d|SignLinear|_SignUnit|NoisyRectifier\w*|_NoisyRectifierUnit|"
    r"RealConv2d|RealLinear|_RealUnit|PlainConv2d|PlainLinear|_PlainUnit|NSM_UNITS|SIGN_UNITS|REAL_UNITS"
)


def test_design_document_shows_the_table_the_records_render():
    """docs/design.md section 4 holds ``kind_table()`` as it is: edit a record, then paste the table."""
    assert kind_table() in (ROOT / "docs" / "design.md").read_text(encoding="utf-8")


def test_module_docstring_ends_with_the_rendered_table():
    assert nsm.neurons.__doc__.rstrip().endswith(kind_table())


def test_kind_names_and_orders():
    """The seed's eight methods in its table's order, then the bench reference; the binary ones are those that
    export."""
    assert NEURON_KINDS == ("bnsm", "gnsm", "dcnn", "ste", "bd", "wbd", "sn", "bn")
    assert tuple(KINDS) == (*NEURON_KINDS, BENCH_REFERENCE)
    assert BINARY_KINDS == ("bnsm", "gnsm", "ste", "bd", "wbd", "bn")
    assert all(KINDS[name].name == name and KINDS[name].label for name in KINDS)


@pytest.mark.parametrize("name", list(KINDS))
def test_built_units_carry_what_the_record_says(name):
    """Each built unit is tagged with its kind, is binary iff the record says so, pads with the record's value, and
    is in the record's sampling mode when it has modes."""
    kind = KINDS[name]
    units = neuron_kind(name)
    conv, linear = units.conv(3, 4, 3, padding=1), units.linear(5, 2)
    assert units.kind is kind and units.name == name and units.binary == kind.binary
    for unit in (conv, linear):
        assert unit.neuron == name and unit.binary == kind.binary
        assert isinstance(unit, (kind.conv, kind.linear))
    assert conv.pad_value == kind.pad_value == (-1.0 if kind.binary else 0.0)
    if isinstance(conv, nsm.StochasticUnit):
        assert (conv.mode == "probability") == kind.samples
    assert kind.sampling_mode == ("probability" if kind.samples else "deterministic")


def test_unknown_kind_and_bad_noise_are_refused():
    with pytest.raises(ValueError, match="unknown neuron kind 'relu'"):
        neuron_kind("relu")
    with pytest.raises(ValueError, match="conv_noise_p"):
        neuron_kind("bnsm", conv_noise_p=1.5)


def test_gains_are_what_the_units_say():
    """``gain_parameters``: each NSM unit's beta, each wbd unit's g, nothing for bd or the real-valued kinds."""
    for name, expected in (("bnsm", "beta"), ("wbd", "g"), ("bd", None), ("dcnn", None)):
        unit = neuron_kind(name).linear(3, 2)
        gains = nsm.neurons.gain_parameters(torch.nn.Sequential(unit))
        assert gains == ([] if expected is None else [getattr(unit, expected)])


def test_no_library_module_asks_a_unit_for_its_class():
    """Consumers ask a unit (``nsm.affine.AffineUnit``) or a kind's record, never ``isinstance`` of a unit class."""
    pattern = re.compile(rf"isinstance\([^()]*\b({UNIT_CLASSES})\b")
    found = [
        f"{path.relative_to(ROOT)}:{i}"
        for package in ("nsm", "models", "pipelines")
        for path in sorted((ROOT / package).rglob("*.py"))
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert not found, found
