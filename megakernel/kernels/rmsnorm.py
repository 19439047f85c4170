"""RMSNorm as one CUDA block: ``out = x * rsqrt(mean(x^2) + eps) * (1 + w)``.

Qwen3.5's model norms (input, post-attention, final, q_norm, k_norm) store the weight zero-centred and apply
``(1 + w)``; everything is fp32. The layered decoder fuses most norms into the matvec that follows them, so this
kernel is mainly a building block and the simplest complete example of the pattern the other kernels use:

* a kernel *factory* specialised on the sizes (``n``, ``eps`` and the block size are compile-time constants
  captured by the closure), cached per size tuple;
* a block reduction (``megakernel.device.block_sum``: warp shuffles, then one value per warp through shared
  memory);
* a wrapper that launches on torch's current stream with a precomputed launch configuration and never
  synchronises.

Grid: one block of ``T = min(256, n rounded up to 32)`` threads; thread ``t`` handles elements ``t, t+T, ...``.
Bytes: reads ``x`` twice (the second time from L1/L2) and ``w`` once, writes ``out``: ``12 n`` bytes.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import cuda
from numba.cuda import float32

from megakernel import device as D
from megakernel import launch

__all__ = ["rmsnorm", "rmsnorm_kernel", "PTX_SIGNATURES"]

MAX_THREADS = 256


def _threads_for(n: int) -> int:
    return min(MAX_THREADS, 32 * ((n + 31) // 32))


@functools.lru_cache(maxsize=None)
def rmsnorm_kernel(n: int, eps: float, threads: int):
    """The RMSNorm kernel for ``n`` elements, ``eps`` and a block of ``threads``; launch as ``[1, threads]``."""
    N = n
    T = threads
    EPS = np.float32(eps)
    N_F = np.float32(n)  # divide by n (as torch's mean), not multiply by a rounded 1/n

    @cuda.jit
    def rmsnorm_k(x, w, out):
        scratch = cuda.shared.array(32, float32)
        tid = cuda.threadIdx.x
        acc = float32(0)
        for i in range(tid, N, T):
            v = x[i]
            acc += v * v
        total = D.block_sum(acc, scratch)
        r = D.rsqrt(total / N_F + EPS)
        for i in range(tid, N, T):
            out[i] = x[i] * r * (float32(1) + w[i])

    return rmsnorm_k


# --------------------------------------------------------------------------------------------------------------
# Launching
# --------------------------------------------------------------------------------------------------------------

_LAUNCHERS: dict = {}


def _launcher(n: int, eps: float):
    key = (n, eps, launch.current_stream()[0])
    entry = _LAUNCHERS.get(key)
    if entry is None:
        if not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(
                f"rmsnorm: n (the normalised size, e.g. hidden_size) must be a positive integer, got {n!r}"
            )
        if not eps > 0:
            raise ValueError(f"rmsnorm: eps (rms_norm_eps) must be positive, got {eps!r}")
        threads = _threads_for(int(n))
        kernel = rmsnorm_kernel(int(n), float(eps), threads)
        entry = _LAUNCHERS[key] = launch.configured(kernel, 1, threads, launch.current_stream()[1])
    return entry


def rmsnorm(x, w, out, n: int, eps: float) -> None:
    """``out[:n] = x * rsqrt(mean(x^2) + eps) * (1 + w)``, one block, on torch's current stream (no sync).

    x, w, out: fp32 1-D kernel arrays (``launch.as_kernel_array``) of ``n`` elements (``w``: the zero-centred
    norm weight, an exact fp32 upcast of the bf16 checkpoint value); ``out`` may not alias ``x``.
    """
    _launcher(n, eps)(x, w, out)


# Compiled for sm_90 by tests/test_kernels_rmsnorm.py (megakernel.testing.ptx_check): the hidden-size norm of the 0.8B
# model and an awkward size whose last pass leaves threads idle.
rmsnorm_1024 = rmsnorm_kernel(1024, 1e-6, _threads_for(1024))
rmsnorm_37 = rmsnorm_kernel(37, 1e-6, _threads_for(37))
_SIG = "void(float32[::1], float32[::1], float32[::1])"
PTX_SIGNATURES = {"rmsnorm_1024": [_SIG], "rmsnorm_37": [_SIG]}
