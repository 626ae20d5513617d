"""Run an exported NIR spike graph without the checkpoint, deterministically or stochastically.

Executes the node types ``graph`` and ``forms`` write (Input, Conv2d, LIF, IF, SumPool2d, Flatten, Affine,
Output) on batches, in float64, as one time step with dt = tau from rest; a node with several inputs gets their
sum (NIR's rule; the split forms of ``forms``):

- ``Conv2d``/``Affine``/``Flatten``: as in PyTorch (Flatten's dims shifted past the batch dimension);
- ``SumPool2d``: the sum over each window (zero padding);
- ``LIF``: from v = v_leak, one Euler step with dt = tau gives v = v_leak + r I for input current I;
  the neuron spikes (1) when v > v_threshold (strict, NIR's and norse's rule), else 0;
- ``IF``: v = r I, spiking when v > v_threshold, or v >= v_threshold where the node's ``threshold_rule``
  metadata says "non-strict" (sinabs' and DYNAP-CNN's rule, ``forms``).

Stochastic mode (``mode="probability"``) rebuilds the Neural Sampling Machine from node metadata: a
LIF whose metadata has ``mode == "probability"`` is a sampling unit; its ±1-domain firing logit is

    v = (I + logit_offset) / logit_scale          (I = W_s s + c, the spike-domain pre-activation)

which equals v = W_eff z + b_eff of the PyTorch layer (docs/design.md section 6: 2W' s + b' - sum W' =
W' z + b' for z = 2s - 1), and the unit spikes with P = 1/2 (1 + erf(v)), the law of the layer's
``probability`` mode (exact for Gaussian noise, the central-limit form for Bernoulli noise). Units
of deterministic kinds (bn, bd, wbd) and the OR neurons of pools always use their threshold.

``NIRRuntime.mc_predict`` averages the softmax of K such passes, as ``nsm.mc_predict`` does, so an
exported file gives the same calibrated predictions as the checkpoint, up to sampling error.
"""

from __future__ import annotations

from pathlib import Path

import nir
import numpy as np
import torch
import torch.nn.functional as F

from events.errors import InputError
from nsm.sampling import MAX_BATCH, MCResult

from .metadata import decode_metadata, read_nir

RUNTIME_MODES = ("deterministic", "probability")


def _tuple(v, n=2):
    if isinstance(v, str):
        return v
    a = np.atleast_1d(np.asarray(v)).astype(int).tolist()
    return tuple(a * n if len(a) == 1 else a)


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


class NIRRuntime:
    """Executes a chain-shaped NIR graph written by ``graph.to_nir`` (or ``quantize``).

    ``graph``: a ``nir.NIRGraph`` or the path of a NIR file. Raises ``ValueError`` naming the node for
    node types, shapes or topologies it does not run (branches, multiple inputs).
    """

    def __init__(self, graph):
        if isinstance(graph, (str, Path)):
            graph = read_nir(graph)
        self.graph = graph
        self.metadata = decode_metadata(graph.metadata or {})
        self.order = self._chain(graph)
        self.inputs = {k: [a for a, b in graph.edges if b == k] for k in self.order}
        first = graph.nodes[self.order[0]]
        self.input_shape = tuple(int(s) for s in first.input_type["input"])
        self.classes = self.metadata.get("classes") or []
        self.output_scale = 1.0
        self.steps = [self._compile(name, graph.nodes[name]) for name in self.order]

    @staticmethod
    def _chain(graph) -> list[str]:
        """The nodes in an order where each comes after its inputs (a chain, or the split forms of ``forms``)."""
        inputs = [k for k, n in graph.nodes.items() if isinstance(n, nir.Input)]
        if len(inputs) != 1:
            raise InputError(f"the runtime needs exactly one Input node (found {len(inputs)})")
        succ: dict[str, list[str]] = {k: [] for k in graph.nodes}
        preds: dict[str, int] = {k: 0 for k in graph.nodes}
        for a, b in graph.edges:
            if a not in succ or b not in preds:
                raise InputError(f"edge ({a!r}, {b!r}) names a node that is not in the graph")
            succ[a].append(b)
            preds[b] += 1
        order, ready = [], [inputs[0]]
        seen = set(ready)
        while ready:
            k = ready.pop(0)
            order.append(k)
            for b in succ[k]:
                preds[b] -= 1
                if preds[b] == 0 and b not in seen:
                    seen.add(b)
                    ready.append(b)
        if len(order) != len(graph.nodes):
            missing = sorted(set(graph.nodes) - set(order))
            raise InputError(f"nodes {missing} are not reached from the Input node, or lie on a cycle")
        return order

    def _compile(self, name: str, node):
        meta = decode_metadata(node.metadata or {})
        if isinstance(node, (nir.Input, nir.Output)):
            return None
        if meta.get("role") == "readout":  # an Affine, or a Conv2d over the whole map (``layout.dense_as_conv``)
            self.output_scale = float(meta.get("output_scale", 1.0))
        if isinstance(node, nir.Conv2d):
            w, b = _tensor(node.weight), _tensor(node.bias)
            stride, padding, dilation = _tuple(node.stride), _tuple(node.padding), _tuple(node.dilation)
            groups = int(node.groups)
            return lambda x, mode, g: F.conv2d(x, w, b, stride, padding, dilation, groups)
        if isinstance(node, nir.Affine):
            w = _tensor(node.weight)
            b = None if node.bias is None else _tensor(node.bias)
            return lambda x, mode, g: F.linear(x, w, b)
        if isinstance(node, nir.SumPool2d):
            k, s, p = _tuple(node.kernel_size), _tuple(node.stride), _tuple(node.padding)
            return lambda x, mode, g: F.avg_pool2d(x, k, s, p, divisor_override=1)
        if isinstance(node, nir.Flatten):
            start = int(node.start_dim)
            end = int(node.end_dim)
            start, end = (start + 1 if start >= 0 else start), (end + 1 if end >= 0 else end)
            return lambda x, mode, g: x.flatten(start, end)
        if isinstance(node, nir.LIF):
            return self._lif(name, node, meta)
        if isinstance(node, nir.IF):
            r, theta = _tensor(node.r), _tensor(node.v_threshold)
            strict = not str(meta.get("threshold_rule", "")).startswith("non-strict")
            return lambda x, mode, g: ((r * x > theta) if strict else (r * x >= theta)).to(x.dtype)
        raise InputError(f"node {name!r}: the runtime does not execute {type(node).__name__} nodes")

    @staticmethod
    def _lif(name, node, meta):
        r, v_leak, theta = _tensor(node.r), _tensor(node.v_leak), _tensor(node.v_threshold)
        sampling = meta.get("mode") == "probability"
        if sampling:
            shape = (-1,) + (1,) * (theta.dim() - 1)
            offset = _tensor(meta["logit_offset"]).reshape(shape)
            scale = _tensor(meta["logit_scale"]).reshape(shape)

        def step(x, mode, g):
            if sampling and mode == "probability":
                p = 0.5 * (1.0 + torch.erf((x + offset) / scale))
                return (torch.rand(x.shape, generator=g) < p).to(x.dtype)
            return ((v_leak + r * x) > theta).to(x.dtype)

        return step

    def spikes(self, x: torch.Tensor) -> torch.Tensor:
        """Input spikes: 1 where ``x`` (event counts or spikes, (B, C, H, W) or (B, T, P, H, W)) is > 0."""
        if x.dim() == len(self.input_shape) + 2:
            x = x.flatten(1, 2)
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(
                f"input of shape {tuple(x.shape)} does not match the graph's input "
                f"(batch, {', '.join(map(str, self.input_shape))})"
            )
        return (x > 0).double()

    def forward(
        self,
        x: torch.Tensor,
        mode: str = "deterministic",
        generator: torch.Generator | None = None,
        until: str | None = None,
    ) -> torch.Tensor:
        """The graph's raw output for a batch ``x`` (what an importer such as norse computes).

        ``until``: stop after the node of that name and return its output (e.g. a layer's spikes).
        """
        if mode not in RUNTIME_MODES:
            raise InputError(f"unknown mode {mode!r}; expected one of {RUNTIME_MODES}")
        if until is not None and until not in self.order:
            raise InputError(f"no node {until!r} in the graph (nodes: {', '.join(self.order)})")
        outs: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, step in zip(self.order, self.steps):
                sources = self.inputs[name]
                h = self.spikes(x) if not sources else outs[sources[0]]
                for extra in sources[1:]:  # a node's inputs are summed (NIR)
                    h = h + outs[extra]
                if step is not None:
                    h = step(h, mode, generator)
                outs[name] = h
                if name == until:
                    break
        return h

    __call__ = forward

    def outputs(self, x: torch.Tensor, max_batch: int = 256) -> torch.Tensor:
        """The deterministic raw output (:meth:`forward`) of every row of ``x``, ``max_batch`` rows at a time, so
        that memory holds one batch's node outputs (float64, every node's) rather than those of all of ``x``."""
        if x.shape[0] <= max_batch:
            return self.forward(x)
        return torch.cat([self.forward(x[i : i + max_batch]) for i in range(0, x.shape[0], max_batch)])

    def logits(
        self, x: torch.Tensor, mode: str = "deterministic", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Class logits: the raw output divided by the readout's ``output_scale`` (1 unless quantized)."""
        return self.forward(x, mode, generator) / self.output_scale

    def sample_probabilities(
        self, x: torch.Tensor, samples: int, generator: torch.Generator | None = None, max_batch: int = MAX_BATCH
    ) -> torch.Tensor:
        """softmax of ``samples`` stochastic passes per input, as a (samples, B, classes) tensor."""
        b = x.shape[0]
        rows = x.unsqueeze(0).expand(samples, *x.shape).reshape(samples * b, *x.shape[1:])
        outs = [
            torch.softmax(self.logits(rows[i : i + max_batch], "probability", generator), dim=1)
            for i in range(0, rows.shape[0], max_batch)
        ]
        return torch.cat(outs).reshape(samples, b, -1)

    def mc_predict(
        self, x: torch.Tensor, samples: int, generator: torch.Generator | None = None, max_batch: int = MAX_BATCH
    ) -> MCResult:
        """Monte Carlo prediction: the mean softmax of ``samples`` stochastic passes (``nsm.mc_predict``)."""
        if samples < 1:
            raise InputError(f"samples must be >= 1 (got {samples})")
        probs = self.sample_probabilities(x, samples, generator, max_batch).mean(dim=0)
        return MCResult(probs, torch.full((x.shape[0],), samples, dtype=torch.long))


def load(path) -> NIRRuntime:
    """A runtime for the NIR file at ``path``."""
    return NIRRuntime(path)
