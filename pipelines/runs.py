"""Run folders and their files, the default frame cache, and where and how a job computes (device, torchrun
process group, subnormal numbers): what ``nsm train`` writes and ``nsm evaluate``, ``compare``, ``analyze`` and
the demo read (docs/design.md section 2).

A run folder holds:

  config.toml     the resolved configuration (preset + --set overrides)
  checkpoint.pt   the latest completed epoch: model, optimizer, scheduler, RNG states, config; with
                  batch-normalized logits (``train.logit_norm``) the model is the plain NSM they fold into,
                  and the normalized parameters and running moments are kept beside it for --resume
  best.pt         the epoch with the best validation accuracy (without validation: the lowest training loss);
                  after the last epoch a sampling network's readout is refitted in it (``train.readout_fit``,
                  the figures under ``readout_fit``)
  metrics.jsonl   one line per epoch (loss, accuracy, lr, time, throughput, and ``health``: per hidden
                  layer its firing rate, saturated share and weight-gradient norm, per max-pool layer
                  its rate, each the mean over the epoch's recorded steps; see ``pipelines.training.health``)
  curves.png      loss, accuracy and learning rate against epoch
  health.png      the ``health`` records per layer against epoch
  activity.jsonl  the records ``nsm analyze`` draws from
  metrics.json    ``nsm evaluate``'s figures (written beside the checkpoint unless --out says otherwise)
  reliability.png ``nsm evaluate``'s reliability diagram
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from events.atomic import write_text_atomic
from events.errors import InputError, MissingInputError

CONFIG = "config.toml"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
ACTIVITY = "activity.jsonl"
CURVES = "curves.png"
HEALTH = "health.png"
EVALUATION = "metrics.json"
RELIABILITY = "reliability.png"

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nsm-events"
"""Where frame caches go unless ``--cache`` names a folder."""


def select_device(name: str) -> torch.device:
    """``"cpu"``, ``"cuda"`` (an error without one) or ``"auto"`` (CUDA when present); under torchrun the
    process's own GPU (``LOCAL_RANK``)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for but no CUDA device is available (use 'auto' or 'cpu')")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


@dataclass
class Process:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def start_process(device_name: str) -> Process:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    device = select_device(device_name)
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Process(device=device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return Process(rank=dist.get_rank(), world=dist.get_world_size(), device=device)


@contextmanager
def flushing_denormals():
    """CPU float arithmetic with subnormal numbers (below 2^-126 in float32) flushed to zero, then restored to
    torch's default. The expected pass makes many (erf's tails, the OR-pool's products of small factors), and
    the CPU is slow on them: a trained bNSM's expected step took 0.230 s instead of 0.305 s with them flushed
    (docs/training-study.md, section 7)."""
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX-BF16): there oneDNN's bf16 convolutions
    run several times faster than float32 ones; elsewhere they are emulated, slower than float32."""
    caps = torch.cpu.get_capabilities()
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def numbered_records(path, *, cut_tail: bool = False) -> list[tuple[int, dict]]:
    """(line number, JSON object) of each line of a ``.jsonl`` file (blank lines skipped).

    Raises ``FileNotFoundError`` if it is missing and ``ValueError`` naming the file and line for a line that
    is not a JSON object. ``cut_tail``: a last line without its newline that does not parse (a line cut short
    by a killed writer) is dropped instead."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path}: no such file (run folders are written by 'nsm train')")
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if cut_tail and lineno == len(lines):
                break
            raise InputError(f"{path}: line {lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict):
            raise InputError(f"{path}: line {lineno}: expected a JSON object, got {type(record).__name__}")
        records.append((lineno, record))
    return records


def read_records(path, *, cut_tail: bool = False) -> list[dict]:
    """The JSON objects of a ``.jsonl`` file (``numbered_records`` without the line numbers)."""
    return [record for _, record in numbered_records(path, cut_tail=cut_tail)]


def write_records(path, records: list[dict]) -> None:
    """``records`` as JSON lines, replacing ``path`` atomically."""
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in records))


class RunFolder:
    """The files of one run folder (``main``: this process writes them; under torchrun only rank 0 does)."""

    def __init__(self, out, main: bool = True):
        self.out, self.main = Path(out), main
        self.config, self.checkpoint, self.best = self.out / CONFIG, self.out / CHECKPOINT, self.out / BEST
        self.metrics, self.activity = self.out / METRICS, self.out / ACTIVITY
        self.curves, self.health = self.out / CURVES, self.out / HEALTH

    @property
    def files(self) -> tuple[Path, ...]:
        """Every file ``nsm train`` writes into the run folder."""
        return (self.config, self.checkpoint, self.best, self.metrics, self.activity, self.curves, self.health)

    def records(self, path: Path, epochs_done: int) -> list[dict]:
        """The records of ``path`` (``metrics`` or ``activity``) from the first ``epochs_done`` epochs; the file is
        rewritten without the lines a killed run wrote after its last checkpoint (including a line cut short by
        the kill). metrics.jsonl counts epochs from 1 (``epoch`` <= done); activity.jsonl from 0 (< done)."""
        if not path.is_file():
            return []
        last = (lambda e: e <= epochs_done) if path == self.metrics else (lambda e: e < epochs_done)
        kept = [r for r in read_records(path, cut_tail=True) if last(r["epoch"])]
        if self.main:
            write_records(path, kept)
        return kept
