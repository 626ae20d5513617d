"""Export a checkpoint: its network as a NIR spike graph, optionally quantized, written, reported and checked
(what ``nsm export`` runs)."""

from __future__ import annotations

from ..checkpoint import load_checkpoint
from .check import CheckResult, check_file, check_inputs, deterministic_logits
from .forms import target_form
from .graph import to_nir
from .metadata import write_nir
from .quantize import quantization_report, quantize
from .runtime import NIRRuntime
from .targets import target_report


def export_checkpoint(
    checkpoint,
    out,
    *,
    check: bool = False,
    check_samples: int = 200,
    quantize_bits: int | None = None,
    seed: int = 0,
    target: str = "generic",
    importer_python: str | None = None,
) -> CheckResult | None:
    """Write ``checkpoint``'s deterministic binary network to the NIR file ``out`` (atomically) and print its
    target report. ``quantize_bits``: integer weights of that many bits, with the accuracy change on
    ``check_samples`` seeded random inputs (labels: the float model's predictions). ``check``: read the file
    back, run it through ``target``'s own importer (``check.TARGET_TOOLCHAIN``; here, or under ``importer_python``)
    on those inputs and return how it agrees with the PyTorch model (or, when quantized, exactly with the
    quantized graph's reference runtime). ``target``: the form written (``forms.TARGETS``)."""
    if check_samples < 1:
        raise ValueError(f"--check-samples must be >= 1 (got {check_samples})")
    ck = load_checkpoint(checkpoint)
    model = ck.model
    input_shape = (int(model.spec["in_channels"]), *(int(s) for s in model.spec["input_size"]))
    graph = to_nir(model, input_shape, classes=ck.classes, frame_spec=ck.frame_spec)
    inputs = check_inputs(input_shape, check_samples, seed) if (check or quantize_bits) else None
    if quantize_bits is not None:
        float_graph = graph
        graph = quantize(float_graph, quantize_bits)
        labels = deterministic_logits(model, inputs).argmax(dim=1)
        print(quantization_report(float_graph, graph, inputs, labels, label_source="float model predictions"))
    if quantize_bits is not None:
        ref = NIRRuntime(graph).forward(inputs) if check else None
    else:
        ref = deterministic_logits(model, inputs) if check else None
    graph = target_form(graph, target)
    out = write_nir(graph, out)
    print(
        f"wrote {out} ({out.stat().st_size:,} bytes): model {model.spec['name']} ({model.spec['neuron']}), "
        f"input {input_shape}, {len(ck.classes)} classes, form {target}"
    )
    result = None
    if check:
        result = check_file(target, out, inputs, ref, exact=quantize_bits is not None, python=importer_python)
    print(target_report(graph, result))
    if result is not None:
        print(result)
    return result
