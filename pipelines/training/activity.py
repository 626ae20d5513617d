"""Activity records taken during training, for ``nsm analyze`` (format in ``pipelines.analyze``).

Every ``record_every`` steps the trainer asks for one record: the 15th, 50th and 85th percentiles
of the last hidden layer's pre-activation over the current batch (for NSM units the firing logit
v, for the others w.z + b or the batch-normalized input), and the third weight layer's raw weight
values (percentiles and a histogram). The last hidden layer's input is captured by a forward hook
during the training step itself, so recording costs one extra layer evaluation, not a forward pass.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from events.errors import InputError
from nsm.moments import widened

MAX_VALUES = 1 << 20  # percentiles from at most this many values (an even stride through the batch)
HIST_BINS = 40


def weight_units(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The hidden units of ``model`` that have a pre-activation, in forward order."""
    return [(name, m) for name, m in model.named_modules() if hasattr(m, "preactivation")]


def _values(t: torch.Tensor) -> np.ndarray:
    flat = t.detach().float().flatten()
    stride = max(1, flat.numel() // MAX_VALUES)
    return flat[::stride].cpu().numpy().astype(np.float64)


class ActivityRecorder:
    """Writes ``activity.jsonl`` lines for one run (``path`` None: capture nothing, e.g. on ranks > 0)."""

    def __init__(self, model: nn.Module, neuron: str, path: Path | None):
        units = weight_units(model)
        if not units:
            raise InputError("the model has no hidden units to record")
        self.neuron, self.path = neuron, path
        (self.last_name, self.last), (self.third_name, self.third) = units[-1], units[min(2, len(units) - 1)]
        self._input: torch.Tensor | None = None
        self._armed = False
        self._hook = self.last.register_forward_hook(self._capture) if path is not None else None

    def _capture(self, module, inputs, output) -> None:
        if self._armed:
            self._input = inputs[0].detach()
            self._armed = False

    def arm(self) -> None:
        """Capture the last hidden layer's input on the next forward pass."""
        self._armed = self.path is not None

    def record(self, epoch: float, step: int) -> None:
        """Append one record built from the captured input. No-op when nothing was captured, and when the
        pre-activations or the weights hold a NaN or an infinity: the run is diverging, there are no
        percentiles to take, and the trainer's check of the next loss stops it with its own message."""
        if self._input is None or self.path is None:
            return
        with torch.no_grad():  # outside the step's autocast: an input it left in bfloat16 is widened to the weights'
            pre = _values(self.last.preactivation(widened(self._input)))
        self._input = None
        w = _values(self.third.weight)
        if not (np.isfinite(pre).all() and np.isfinite(w).all()):
            return
        counts, edges = np.histogram(w, bins=HIST_BINS)
        rec = {
            "epoch": round(float(epoch), 6),
            "step": int(step),
            "neuron": self.neuron,
            "last_hidden": {
                "layer": self.last_name,
                "percentiles": {str(q): float(v) for q, v in zip((15, 50, 85), np.percentile(pre, [15, 50, 85]))},
            },
            "third_layer": {
                "layer": self.third_name,
                "percentiles": {
                    str(q): float(v) for q, v in zip((5, 15, 50, 85, 95), np.percentile(w, [5, 15, 50, 85, 95]))
                },
                "hist_edges": edges.tolist(),
                "hist_counts": counts.tolist(),
            },
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def close(self) -> None:
        if self._hook is not None:
            self._hook.remove()
