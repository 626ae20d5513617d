"""Run an exported NIR file through a toolchain's own importer: norse, snnTorch, sinabs, SpikingJelly or Spyx.

This file imports only numpy, torch, nir and the toolchain, never the rest of the project, so that it also runs
as a script under another interpreter, e.g. a venv that holds sinabs (which pins nir <= 1.0.4 and so cannot live
beside the project):

    build/targets/sinabs/bin/python pipelines/export/importers.py sinabs model.nir spikes.npy out.npy

``spikes.npy``: (N, C, H, W) {0, 1} float array; ``out.npy``: (N, classes) float64 outputs; the toolchain's
version is printed on stdout as ``version: X``. Each importer is used as a user would (README, "Export"):

- norse: ``norse.torch.from_nir(graph, dt=graph's dt)``, float32 as imported, one unbatched sample per call
  from rest (a fresh state).
- snnTorch: ``snntorch.import_nir.import_from_nir(graph)``, float32, one unbatched sample per call; every
  ``snn.Leaky`` hidden state reset to zero first (its import sets ``init_hidden=True``).
- sinabs: ``sinabs.from_nir(graph, batch_size=N, num_timesteps=1)`` then ``spike_fn = SingleSpike`` on every
  ``IAFSqueeze`` (the default ``MultiSpike`` emits floor(v / threshold) spikes); the batch in one call.
- spikingjelly: ``spikingjelly.activation_based.nir_exchange.import_from_nir(graph, dt=graph's dt)`` (float32,
  single-step mode, its defaults), one step from rest (``state=None``) per batch of ``BATCH`` samples.
- spyx: ``spyx.nir.from_nir(graph, x, dt=graph's dt)`` on the first ``BATCH`` samples, then
  ``spyx.nn.run(model, x)`` on the others (float32, JAX's default); ``x`` time-major and channels-last,
  (steps, B, H, W, C), the same spikes at every step for the graph's ``steps`` (metadata) steps; the output is
  the last step's. The last batch is padded to ``BATCH`` so that JAX compiles one shape.

The spyx runner imports no torch (its venv holds JAX, not PyTorch).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

IMPORTER_TOOLCHAINS = ("norse", "snntorch", "sinabs", "spikingjelly", "spyx")
BATCH = 32
"""Samples per call for the spikingjelly and spyx importers (bounds their memory on full-size networks)."""


def toolchain_version(toolchain: str) -> str | None:
    """The installed version of ``toolchain``'s package, or None when it cannot be imported here."""
    try:
        if toolchain == "norse":
            import norse.torch  # noqa: F401  (norse.torch.models is never imported: it needs torchvision)
            from norse import __version__ as v
        elif toolchain == "snntorch":
            import snntorch
            import snntorch.import_nir  # noqa: F401

            v = snntorch.__version__
        elif toolchain == "sinabs":
            import sinabs
            import sinabs.nir  # noqa: F401

            v = getattr(sinabs, "__version__", "unknown")
        elif toolchain == "spikingjelly":
            from importlib.metadata import version

            import spikingjelly.activation_based.nir_exchange  # noqa: F401

            v = version("spikingjelly")
        elif toolchain == "spyx":
            from importlib.metadata import version

            import spyx.nir  # noqa: F401

            v = version("spyx")
        else:
            raise ValueError(f"no importer for toolchain {toolchain!r}; choose one of {IMPORTER_TOOLCHAINS}")
    except ImportError:
        return None
    return str(v)


def _dt(graph) -> float:
    meta = graph.metadata or {}
    dt = meta.get("dt", 2.0**-10)
    return float(np.asarray(dt).reshape(-1)[0])


def run_norse(graph, spikes: np.ndarray) -> np.ndarray:
    import torch
    from norse.torch import from_nir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # nirtorch.load's deprecation notice
        module = from_nir(graph, dt=_dt(graph))
    outs = []
    with torch.no_grad():
        for s in torch.as_tensor(spikes, dtype=torch.float32):
            out, _ = module(s)
            outs.append(out.reshape(-1).double().numpy())
    return np.stack(outs)


def run_snntorch(graph, spikes: np.ndarray) -> np.ndarray:
    import io
    from contextlib import redirect_stdout

    import snntorch as snn
    import torch
    from snntorch.import_nir import import_from_nir

    with redirect_stdout(io.StringIO()):  # it prints a warning per LIF whose dt/tau is not 1
        module = import_from_nir(graph)
    leaky = [m for m in module.modules() if isinstance(m, snn.Leaky)]
    outs = []
    with torch.no_grad():
        for s in torch.as_tensor(spikes, dtype=torch.float32):
            for m in leaky:
                m.mem = torch.zeros_like(m.mem)
            out = module(s)
            if isinstance(out, tuple):
                out = out[0]
            outs.append(out.reshape(-1).double().numpy())
    return np.stack(outs)


def run_sinabs(graph, spikes: np.ndarray) -> np.ndarray:
    import sinabs
    import torch
    from sinabs.activation import SingleSpike

    n = int(spikes.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = sinabs.from_nir(graph, batch_size=n, num_timesteps=1)
    for m in module.modules():
        if isinstance(m, sinabs.layers.IAFSqueeze):
            m.spike_fn = SingleSpike
    sinabs.reset_states(module)
    with torch.no_grad():
        out = module(torch.as_tensor(spikes, dtype=torch.float32))
    if isinstance(out, tuple):
        out = out[0]
    return out.reshape(n, -1).double().numpy()


def run_spikingjelly(graph, spikes: np.ndarray) -> np.ndarray:
    import torch
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    module = import_from_nir(graph, dt=_dt(graph))
    outs = []
    with torch.no_grad():
        for i in range(0, spikes.shape[0], BATCH):
            out, _ = module(torch.as_tensor(spikes[i : i + BATCH], dtype=torch.float32), None)
            outs.append(out.reshape(out.shape[0], -1).double().numpy())
    return np.concatenate(outs)


def _steps(graph) -> int:
    """The graph's ``steps`` metadata (the spyx form's latency + 1), else its neuron nodes + 1."""
    import nir

    steps = (graph.metadata or {}).get("steps")
    if steps is not None:
        return int(np.asarray(steps).reshape(-1)[0])
    return 1 + sum(isinstance(n, (nir.LIF, nir.IF)) for n in graph.nodes.values())


def run_spyx(graph, spikes: np.ndarray) -> np.ndarray:
    import jax.numpy as jnp
    from spyx.nir import from_nir
    from spyx.nn import run as spyx_run

    steps, n = _steps(graph), int(spikes.shape[0])
    channels_last = np.ascontiguousarray(np.moveaxis(spikes, 1, -1))  # (N, C, H, W) -> (N, H, W, C)
    model, outs = None, []
    for i in range(0, n, BATCH):
        chunk = channels_last[i : i + BATCH]
        rows = chunk.shape[0]
        if rows < BATCH and i > 0:
            chunk = np.concatenate([chunk, np.zeros((BATCH - rows, *chunk.shape[1:]), chunk.dtype)])
        x = jnp.broadcast_to(jnp.asarray(chunk, dtype=jnp.float32), (steps, *chunk.shape))
        if model is None:
            model, out = from_nir(graph, x, dt=_dt(graph))
        else:
            out, _ = spyx_run(model, x)
        last = np.asarray(out[-1], dtype=np.float64)
        outs.append(last.reshape(last.shape[0], -1)[:rows])
    return np.concatenate(outs)


RUNNERS = {
    "norse": run_norse,
    "snntorch": run_snntorch,
    "sinabs": run_sinabs,
    "spikingjelly": run_spikingjelly,
    "spyx": run_spyx,
}


def run(toolchain: str, graph, spikes: np.ndarray) -> np.ndarray:
    """(N, outputs) float64: ``spikes`` (N, C, H, W) in {0, 1} through ``toolchain``'s import of ``graph``."""
    if toolchain not in RUNNERS:
        raise ValueError(f"no importer for toolchain {toolchain!r}; choose one of {IMPORTER_TOOLCHAINS}")
    return RUNNERS[toolchain](graph, np.asarray(spikes, dtype=np.float32))


def read_graph(path):
    """``nir.read``; under nir < 1.0.6 (sinabs pins nir <= 1.0.4), whose ``IF`` has no ``v_reset`` and whose
    nodes take no ``metadata``, a copy of the file without the IF nodes' ``v_reset`` (zero in every file the
    export writes) and without node metadata (descriptive only) is read instead."""
    import nir

    try:
        return nir.read(path)
    except TypeError as err:
        if "unexpected keyword argument" not in str(err):
            raise
    import shutil
    import tempfile

    import h5py

    with tempfile.TemporaryDirectory() as tmp:
        copy = f"{tmp}/graph.nir"
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:

            def strip(group):
                for key in list(group.keys()):
                    item = group[key]
                    if isinstance(item, h5py.Group):
                        if "type" in item and item["type"][()] != b"NIRGraph" and "metadata" in item:
                            del item["metadata"]
                        if "type" in item and item["type"][()] == b"IF" and "v_reset" in item:
                            del item["v_reset"]
                        strip(item)

            strip(f)
        return nir.read(copy)


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(f"usage: importers.py {{{','.join(IMPORTER_TOOLCHAINS)}}} GRAPH.nir SPIKES.npy OUT.npy", file=sys.stderr)
        return 2
    toolchain, graph_path, spikes_path, out_path = argv
    version = toolchain_version(toolchain)
    if version is None:
        print(f"{toolchain} is not installed for {sys.executable}", file=sys.stderr)
        return 3
    out = run(toolchain, read_graph(graph_path), np.load(spikes_path))
    np.save(out_path, out)
    print(f"version: {version}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
