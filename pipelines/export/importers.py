"""Run an exported NIR file through a toolchain's own importer: norse, snnTorch or sinabs.

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
"""

from __future__ import annotations

import sys
import warnings

import numpy as np

IMPORTER_TOOLCHAINS = ("norse", "snntorch", "sinabs")


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


RUNNERS = {"norse": run_norse, "snntorch": run_snntorch, "sinabs": run_sinabs}


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
        print("usage: importers.py {norse,snntorch,sinabs} GRAPH.nir SPIKES.npy OUT.npy", file=sys.stderr)
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
