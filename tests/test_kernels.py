"""The fused CPU sampling kernel against an independent numpy re-derivation of its contract.

The kernel promises z_i = +1 iff u_i < 1/2 (1 + erf(v_i)), with u_i the 53-bit uniform of the
counter-based SplitMix64 stream of element i's block. Rebuilding u_i here and comparing with erf
directly must give the same states bit for bit: the kernel's erf approximation only decides where its
error bound makes it certain, and logits placed right at each element's decision boundary make it
hand over to erf itself.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import pytest
import torch

from nsm import kernels

GAMMA = np.uint64(0x9E3779B97F4A7C15)


def mix64(z):
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def reference_uniforms(n, seed):
    idx = np.arange(n, dtype=np.uint64)
    block = idx // np.uint64(kernels.BLOCK)
    with np.errstate(over="ignore"):
        origin = mix64(np.uint64(seed) ^ mix64(block * GAMMA + GAMMA))
        state = origin + (idx - block * np.uint64(kernels.BLOCK) + np.uint64(1)) * GAMMA
    return (mix64(state) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def boundary_logits(u):
    """v with 1/2 (1 + erf(v)) = u to float32 precision: the draw of each element sits on its decision
    boundary, inside the band where the kernel's approximation cannot decide."""
    return torch.erfinv(torch.from_numpy(2.0 * u - 1.0)).numpy().astype(np.float32)


def tricky_logits(n, rng, u):
    """Logits on their elements' decision boundaries (a quarter), tails, zeros, non-finite values, random."""
    at_boundary = boundary_logits(u[: n // 4])
    special = np.array([0.0, -0.0, 6.0, -6.0, 6.001, -6.001, 9.0, -9.0, 1e30, -1e30, np.inf, -np.inf, np.nan])
    rest = rng.normal(scale=1.5, size=n - at_boundary.size - special.size)
    return np.concatenate([at_boundary, special, rest]).astype(np.float32)


def expected_states(v, u):
    p = np.array([0.5 * (1.0 + math.erf(x)) if not math.isnan(x) else np.nan for x in v.astype(np.float64)])
    return np.where(u < p, 1.0, -1.0).astype(np.float32)  # u < NaN is False: NaN never fires


def test_kernel_states_equal_direct_comparison_with_erf():
    seed = 0x1234_5678_9ABC
    n = 3 * kernels.BLOCK + 123
    u = reference_uniforms(n, seed)
    v = tricky_logits(n, np.random.default_rng(0), u)
    z = kernels.sample_sign_cpu(v, seed)
    expected = expected_states(v, u)
    assert np.array_equal(z, expected)
    # The boundary quarter really tested both outcomes of the exact comparison.
    assert 0.2 < (expected[: n // 4] > 0).mean() < 0.8


def test_erf_approximation_error_is_inside_the_kernel_margin():
    """|1/2 erfc(a) - 0.5 / t^16| stays far below MARGIN on a fine grid over [0, 7] (A&S 7.1.28 bounds the
    erf error by 3e-7, i.e. 1.5e-7 on the tail mass): the fast comparison can never be wrong."""
    a = np.linspace(0.0, 7.0, 2_000_001)
    q = torch.special.erfc(torch.from_numpy(a)).numpy() / 2
    assert np.abs(q - 0.5 / tail_factors(a)).max() < kernels.MARGIN / 5


@numba.njit
def tail_factors(a):
    out = np.empty_like(a)
    for i in range(a.size):
        out[i] = kernels.tail_factor(a[i])
    return out


def test_kernel_in_place_equals_out_of_place():
    """Writing the states over the logits (as inference does) must not change a single state."""
    n = 3 * kernels.BLOCK + 7
    v = tricky_logits(n, np.random.default_rng(3), reference_uniforms(n, 11))
    expected = kernels.sample_sign_cpu(v, 11)
    buf = v.copy()
    kernels.sample_sign_cpu(buf, 11, out=buf, threads=2)
    assert np.array_equal(buf, expected)
    buf = v.copy()
    kernels.sign_cpu(buf, out=buf, threads=2)
    assert np.array_equal(buf, kernels.sign_cpu(v))


def test_kernel_frequencies_follow_P():
    v = np.repeat(np.array([-2.0, -0.5, 0.0, 0.3, 1.2], dtype=np.float32), 200_000)
    z = kernels.sample_sign_cpu(v, 7).reshape(5, -1)
    p = np.array([0.5 * (1 + math.erf(x)) for x in (-2.0, -0.5, 0.0, 0.3, 1.2)])
    freq = (z > 0).mean(axis=1)
    sd = np.sqrt(p * (1 - p) / z.shape[1])
    assert np.all(np.abs(freq - p) <= 5 * sd)


def test_kernel_is_deterministic_and_independent_of_thread_count():
    v = np.random.default_rng(1).normal(size=7 * kernels.BLOCK + 5).astype(np.float32)
    one = kernels.sample_sign_cpu(v, 99, threads=1)
    for threads in (2, 3):
        assert np.array_equal(one, kernels.sample_sign_cpu(v, 99, threads=threads))
    assert not np.array_equal(one, kernels.sample_sign_cpu(v, 100))


@pytest.mark.parametrize("n", [0, 5, 3 * kernels.BLOCK, 4 * kernels.BLOCK + 17])
def test_sign_kernel(n):
    special = np.array([-1.5, -0.0, 0.0, 2.0, np.nan], dtype=np.float32)
    v = np.concatenate([special, np.random.default_rng(2).normal(size=n)]).astype(np.float32)
    for threads in (1, 2):
        z = kernels.sign_cpu(v, threads=threads)
        assert z[:5].tolist() == [-1.0, 1.0, 1.0, 1.0, -1.0]
        assert np.array_equal(z[5:], np.where(v[5:] >= 0, 1.0, -1.0))


@pytest.mark.parametrize("shape", [(0,), (3, 4, 5)])
def test_kernel_keeps_shape(shape):
    v = np.zeros(shape, dtype=np.float32)
    assert kernels.sample_sign_cpu(v, 1).shape == shape


def bf16_bits(values: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 values, rounded by torch (an independent conversion)."""
    return torch.from_numpy(values).bfloat16().view(torch.int16).numpy().view(np.uint16)


def bf16_values(bits: np.ndarray) -> np.ndarray:
    """float32 values of bfloat16 patterns, widened by torch."""
    return torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).float().numpy()


def lowbias32(h):
    """Wellons' lowbias32, in numpy uint64 arithmetic reduced mod 2^32 (independent of the kernel's numba code)."""
    m = np.uint64(0xFFFFFFFF)
    h = h & m
    h = ((h ^ (h >> np.uint64(16))) * np.uint64(0x7FEB352D)) & m
    h = ((h ^ (h >> np.uint64(15))) * np.uint64(0x846CA68B)) & m
    return h ^ (h >> np.uint64(16))


def reference_uniforms_bf16(n, seed):
    """The bfloat16 sampler's u of each element: (lowbias32(i 0x9E3779B9 + key_b) >> 8) 2^-24, key_b the low 32 bits
    of block b's SplitMix64 origin."""
    idx = np.arange(n, dtype=np.uint64)
    block = idx // np.uint64(kernels.BLOCK)
    with np.errstate(over="ignore"):
        key = mix64(np.uint64(seed) ^ mix64(block * GAMMA + GAMMA)) & np.uint64(0xFFFFFFFF)
        h = lowbias32((idx - block * np.uint64(kernels.BLOCK)) * np.uint64(0x9E3779B9) + key)
    return (h >> np.uint64(8)).astype(np.float64) * 2.0**-24


@pytest.mark.parametrize("threads", [1, 2])
def test_bfloat16_sampler_decides_as_u_below_P_outside_its_band(threads):
    """bfloat16 logits in, bfloat16 states out: z = +1 iff u < 1/2 (1 + erf(v)) for the sampler's u and the logit's
    value, except where |u - P| <= BF16_BAND; also in place."""
    n = 3 * kernels.BLOCK + 11
    u = reference_uniforms_bf16(n, 21)
    bits = bf16_bits(tricky_logits(n, np.random.default_rng(4), u))
    v = bf16_values(bits)
    z = kernels.sample_sign_cpu(bits, 21, threads=threads)
    assert z.dtype == np.uint16 and set(np.unique(z)) <= {0x3F80, 0xBF80}
    p = np.array([0.5 * (1.0 + math.erf(x)) if not math.isnan(x) else np.nan for x in v.astype(np.float64)])
    outside = ~(np.abs(u - p) <= kernels.BF16_BAND)  # NaN logits count as outside: they never fire
    assert np.array_equal(bf16_values(z)[outside], expected_states(v, u)[outside])
    assert outside[n // 4 :].sum() >= n - n // 4 - 5  # beyond the logits placed on their boundaries, almost all
    buf = bits.copy()
    kernels.sample_sign_cpu(buf, 21, out=buf, threads=threads)
    assert np.array_equal(buf, z)
    signs = bf16_values(kernels.sign_cpu(bits, threads=threads))
    assert np.array_equal(signs, np.where(v >= 0, 1.0, -1.0))  # -0.0 and 0.0 give +1, NaN -1


def test_bfloat16_sampler_frequencies_follow_P_and_neighbours_are_independent():
    values = np.array([-2.0, -0.5, 0.0, 0.3, 1.2], dtype=np.float32)
    bits = bf16_bits(np.repeat(values, 200_000))
    z = bf16_values(kernels.sample_sign_cpu(bits, 7)).reshape(5, -1) > 0
    p = np.array([0.5 * (1 + math.erf(x)) for x in bf16_values(bf16_bits(values)).astype(np.float64)])
    sd = np.sqrt(p * (1 - p) / z.shape[1])
    assert np.all(np.abs(z.mean(axis=1) - p) <= 5 * sd)
    fair = z[2].astype(float)  # P = 1/2: consecutive states uncorrelated within sampling error
    corr = np.corrcoef(fair[:-1], fair[1:])[0, 1]
    assert abs(corr) <= 5 / np.sqrt(fair.size)


def test_bfloat16_states_from_torch_tensors_keep_dtype_and_layout():
    from nsm import functional as nsmf

    v = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last).bfloat16()
    z = nsmf.draw_states(v, torch.Generator().manual_seed(3))
    assert z.dtype == torch.bfloat16 and z.is_contiguous(memory_format=torch.channels_last)
    assert bool(((z == 1) | (z == -1)).all())
    assert torch.equal(z, nsmf.draw_states(v, torch.Generator().manual_seed(3)))  # the generator fixes the draws
    assert torch.equal(nsmf.sign_states(v).float(), torch.where(v.float() >= 0, 1.0, -1.0))


def test_kernel_refuses_an_output_of_another_dtype():
    with pytest.raises(ValueError, match="out must be uint16"):
        kernels.sample_sign_cpu(np.zeros(4, np.uint16), 1, out=np.zeros(4, np.float32))


def _numba_target_in_child(env_extra: dict) -> dict:
    """In a fresh interpreter whose environment has no NUMBA_CPU_* variable but ``env_extra``: numba's CPU features
    setting after importing the sampling kernels, and whether a kernel compiled there uses 512-bit (zmm)
    registers."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json, os, numba, numpy as np\n"
        "from nsm import kernels\n"
        "f = numba.njit(nogil=True, error_model='numpy')(kernels._sample_block_bf16.py_func)\n"
        "f(np.zeros(64, np.float32), np.zeros(64, np.uint16), np.uint32(1), kernels.BF16_PLUS, kernels.BF16_MINUS)\n"
        "asm = f.inspect_asm(f.signatures[0])\n"
        "env = os.environ.get('NUMBA_CPU_FEATURES')\n"
        "print(json.dumps({'features': numba.config.CPU_FEATURES, 'zmm': 'zmm' in asm, 'env': env}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_CPU")} | env_extra
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kernels_compile_to_512_bit_vectors_where_the_cpu_has_avx512():
    import llvmlite.binding as llvm

    child = _numba_target_in_child({})
    if not llvm.get_host_cpu_features().get("avx512f"):
        assert child == {"features": None, "zmm": False, "env": None}
        pytest.skip("this CPU has no AVX-512F: the kernels keep numba's default target (checked)")
    assert child["features"].endswith(",-prefer-256-bit") and child["env"] is None  # the environment left alone
    assert child["zmm"], "the bfloat16 sampler's loop was not compiled to 512-bit vectors"


def test_a_numba_target_the_user_set_is_kept():
    child = _numba_target_in_child({"NUMBA_CPU_FEATURES": "+sse2,+sse4.2"})
    assert child == {"features": "+sse2,+sse4.2", "zmm": False, "env": "+sse2,+sse4.2"}
