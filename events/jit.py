"""The machine code of the project's numba kernels: 512-bit vectors on CPUs with AVX-512.

numba compiles for the host CPU with LLVM's tuning for it, and LLVM tunes most AVX-512 CPUs (Skylake-X through
Sapphire and Emerald Rapids) to prefer 256-bit vectors. The samplers of ``nsm.kernels`` are arithmetic-bound loops
that run about 1.6 times faster in 512-bit vectors with fused multiply-adds on this project's machine (an Emerald
Rapids Xeon: docs/training-study.md, section 19). numba fixes its target once per process, when it first compiles
or loads a kernel, from ``numba.config.CPU_FEATURES``; so every module that defines kernels imports this one first,
and importing it sets that value to the host's features with the 256-bit preference turned off
(``-prefer-256-bit``), unless

- the user chose a target (``NUMBA_CPU_FEATURES`` or ``NUMBA_CPU_NAME`` in the environment, or
  ``numba.config.CPU_FEATURES`` / ``CPU_NAME`` set before this import): theirs wins;
- the CPU has no AVX-512F, or numba's AVX is turned off (``NUMBA_ENABLE_AVX=0``).

Only that one setting changes (the environment is left alone, so numba does not re-read its other settings). Where
numba compiled something in the process before this import, its target stays as it was: nothing breaks, the kernels
run in 256-bit vectors.
"""

from __future__ import annotations

import os

WIDE_VECTORS = "-prefer-256-bit"


def _prefer_wide_vectors() -> None:
    """Set ``numba.config.CPU_FEATURES`` as the module docstring says."""
    if "NUMBA_CPU_FEATURES" in os.environ or "NUMBA_CPU_NAME" in os.environ:
        return
    from numba.core import config

    if config.CPU_FEATURES is not None or config.CPU_NAME is not None or not config.ENABLE_AVX:
        return
    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot tell on this host: numba's default stays
        return
    if features.get("avx512f"):
        config.CPU_FEATURES = f"{features.flatten()},{WIDE_VECTORS}"


_prefer_wide_vectors()
