"""The machine code of the project's numba kernels: 512-bit vectors on CPUs with AVX-512.

numba compiles for the host CPU with LLVM's tuning for it, and LLVM tunes most AVX-512 CPUs (Skylake-X through
Sapphire and Emerald Rapids) to prefer 256-bit vectors. The samplers of ``nsm.kernels`` are arithmetic-bound
loops that run about 1.5 times faster in 512-bit vectors on this project's machine (an Emerald Rapids Xeon:
0.7 against 1.1 G states/s a thread, docs/design.md section 8). numba reads its target features once per process,
when it first compiles or loads a kernel, from ``NUMBA_CPU_FEATURES``; so every module that defines kernels imports
this one first, and importing it sets that variable to the host's features with the 256-bit preference turned off
(``-prefer-256-bit``), unless

- the user set ``NUMBA_CPU_FEATURES`` or ``NUMBA_CPU_NAME`` (theirs wins: set either to choose otherwise),
- the CPU has no AVX-512F, or numba's AVX is turned off (``NUMBA_ENABLE_AVX=0``).

Child processes inherit the variable, so their kernels compile the same way. Where numba compiled something in the
process before this import, its target stays as it was (nothing breaks; the kernels run in 256-bit vectors).
"""

from __future__ import annotations

import os

WIDE_VECTORS = "-prefer-256-bit"


def _prefer_wide_vectors() -> None:
    """Set ``NUMBA_CPU_FEATURES`` as the module docstring says."""
    if "NUMBA_CPU_FEATURES" in os.environ or "NUMBA_CPU_NAME" in os.environ:
        return
    if os.environ.get("NUMBA_ENABLE_AVX", "1").strip() in ("0", ""):
        return
    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot tell on this host: leave numba's default
        return
    if features.get("avx512f"):
        os.environ["NUMBA_CPU_FEATURES"] = f"{features.flatten()},{WIDE_VECTORS}"
        from numba.core import config

        config.reload_config()  # numba read its environment on import; its code generator starts from this


_prefer_wide_vectors()
