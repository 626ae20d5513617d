"""Export a checkpoint: its network as a NIR spike graph, optionally quantized, written, reported and checked
(what ``nsm export`` runs)."""

from __future__ import annotations

import torch

from events.atomic import check_output
from events.errors import InputError
from events.types import check_int

from .. import config as configs
from ..checkpoint import load_checkpoint
from ..evaluate import checked_test_set
from ..runs import DEFAULT_CACHE
from .check import (
    MAX_CHECK_SAMPLES,
    CheckResult,
    check_file,
    check_importer_python,
    check_inputs,
    check_samples_fit,
    deterministic_logits,
)
from .chip import map_onto_speck
from .forms import target_form
from .graph import spike_input, to_nir
from .metadata import write_nir
from .quantize import quantization_report, quantize
from .runtime import NIRRuntime
from .targets import SPECK_BIAS_LIMIT, target_report


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
    data=None,
    cache_dir=DEFAULT_CACHE,
    progress: bool = True,
) -> CheckResult | None:
    """Write ``checkpoint``'s deterministic binary network to the NIR file ``out`` (atomically) and print its
    target report. ``quantize_bits``: integer weights of that many bits (for ``speck`` with unit biases of at most
    ``targets.SPECK_BIAS_LIMIT``), with the accuracy change on
    ``check_samples`` seeded random inputs (labels: the float model's predictions). ``check``: read the file
    back, run it through ``target``'s own importer (``check.TARGET_TOOLCHAIN``; here, or under ``importer_python``)
    on those inputs and return how it agrees with the PyTorch model (or, when quantized, exactly with the
    quantized graph's reference runtime; for ``speck`` also map it onto DYNAP-CNN cores with sinabs' chip backend,
    ``chip.map_onto_speck``). ``target``: the form written (``forms.TARGETS``). ``data``: a data set folder whose
    test split's first ``check_samples`` clips (binned as the run was, through the frame cache ``cache_dir``) are
    the inputs instead of random frames, with their own labels (:func:`held_out_clips`).

    Refused before any work, with an error naming the option or file: ``check_samples`` outside
    1..``check.MAX_CHECK_SAMPLES``, ``data`` without ``check`` or ``quantize_bits``, or more inputs than fit in
    ``check.CHECK_INPUT_BYTES`` for this network's input (``check.check_samples_fit``, once the checkpoint is read,
    before they are allocated); an ``importer_python``
    that is missing or cannot be run (``check.check_importer_python``); an ``out`` that is the checkpoint (or the
    interpreter) itself, also through a link, or that exists and is not a regular file
    (``events.atomic.check_output``)."""
    check_samples = check_int("--check-samples", check_samples, 1, MAX_CHECK_SAMPLES)
    if importer_python is not None:
        check_importer_python(importer_python)
    if data is not None and not (check or quantize_bits is not None):
        raise InputError(f"--data {data}: the test clips are inputs for --check and --quantize-bits; give one of them")
    check_output(out, {"--checkpoint": checkpoint, "--importer-python": importer_python})
    ck = load_checkpoint(checkpoint)
    model = ck.model
    size = tuple(int(s) for s in model.spec["input_size"])
    count_shape = (int(model.spec["in_channels"]), *size)
    input_shape = (model[0].out_channels(count_shape[0]), *size)  # the spike map of Binarize's levels
    if check or quantize_bits is not None:
        check_samples_fit(check_samples, input_shape)  # before the graph is built and the inputs allocated
    graph = to_nir(model, input_shape, classes=ck.classes, frame_spec=ck.frame_spec)
    counts, labels, label_source = None, None, "float model predictions"
    if data is not None:
        counts, labels = held_out_clips(ck, checkpoint, data, cache_dir, check_samples, progress)
        label_source = f"the labels of {counts.shape[0]} test clips of {data}"
    elif check or quantize_bits is not None:
        counts = check_inputs(count_shape, check_samples, seed)
    inputs = spike_input(model, counts) if counts is not None else None  # what the graph reads
    if quantize_bits is not None:
        float_graph = graph
        graph = quantize(float_graph, quantize_bits, bias_limit=SPECK_BIAS_LIMIT if target == "speck" else None)
        if labels is None:
            labels = deterministic_logits(model, counts).argmax(dim=1)
        print(quantization_report(float_graph, graph, inputs, labels, label_source=label_source))
    if quantize_bits is not None:
        ref = NIRRuntime(graph).outputs(inputs) if check else None
    else:
        ref = deterministic_logits(model, counts) if check else None
    graph = target_form(graph, target)
    out = write_nir(graph, out)
    print(
        f"wrote {out} ({out.stat().st_size:,} bytes): model {model.spec['name']} ({model.spec['neuron']}), "
        f"input {input_shape}, {len(ck.classes)} classes, form {target}"
    )
    result = None
    if check:
        result = check_file(target, out, inputs, ref, exact=quantize_bits is not None, python=importer_python)
        if target == "speck":
            result.mapping = map_onto_speck(out, importer_python)
    print(target_report(graph, result))
    if result is not None:
        print(result)
    return result


def held_out_clips(ck, checkpoint, data_root, cache_dir, n: int, progress: bool = True):
    """(counts (m, C, H, W) float32, labels (m,)) of the first m = min(n, split size) clips of the test split under
    ``data_root``, binned with the run's frame settings (the frame cache ``cache_dir``); ``ValueError`` when the run
    holds no configuration, or ``evaluate.checked_test_set`` refuses the data (items the network cannot take, an empty
    split). Clips are read one at a time (``FrameSet``), and n is bounded by ``check.check_samples_fit``."""
    cfg = configs.from_dict(ck.config, str(checkpoint)) if ck.config else None
    if cfg is None:
        raise InputError(f"{checkpoint}: the checkpoint holds no run configuration, so --data cannot be binned like it")
    test = checked_test_set(ck, checkpoint, cfg, data_root, cache_dir, progress)
    m = min(int(n), len(test))
    first = test[0][0]
    counts = torch.empty((m, first.shape[0] * first.shape[1], *first.shape[2:]))
    labels = torch.empty(m, dtype=torch.long)
    for i in range(m):
        frames, label = test[i]
        counts[i] = frames.reshape(-1, *frames.shape[2:])
        labels[i] = label
    return counts, labels
