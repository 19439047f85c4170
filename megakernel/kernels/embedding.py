"""Token embedding lookup: h = float32(embed[token]) for a token id held in device memory.

The token id is read from a 1-element int32 device buffer rather than passed as a launch argument, so the
decode step can be captured once in a CUDA graph and replayed for every token (the argmax of the previous step
writes the buffer). One block copies one row of D bf16 values (D/2 words) and widens them to fp32.
``advance`` ends a step: it records the chosen token and moves the device-held position on.
"""

from __future__ import annotations

from numba import cuda

from ..device import bf16_hi, bf16_lo
from .. import launch

THREADS = 128


@cuda.jit(device=True)
def embed_rows(embed, token, h, half_d, block, nblocks):
    """h = float32(embed[token]) over a work range: ``block`` of ``nblocks`` blocks share the D/2 words."""
    row = token * half_d
    for j in range(block * cuda.blockDim.x + cuda.threadIdx.x, half_d, nblocks * cuda.blockDim.x):
        w = embed[row + j]
        h[2 * j] = bf16_lo(w)
        h[2 * j + 1] = bf16_hi(w)


@cuda.jit
def embedding_kernel(embed, token, h, half_d):
    """embed: int32 words [V * D/2]; token: int32[1]; h: float32 [D]; half_d = D/2."""
    embed_rows(embed, token[0], h, half_d, 0, 1)


@cuda.jit
def advance_kernel(position, token, history):
    """End of a decode step: history[position] = the token just chosen; position += 1 (one thread)."""
    if cuda.threadIdx.x == 0:
        p = position[0]
        history[p] = token[0]
        position[0] = p + 1


_LAUNCHERS: dict = {}


def _launcher(kernel, threads: int):
    key, stream = launch.current_stream()
    run = _LAUNCHERS.get((kernel, key))
    if run is None:
        run = _LAUNCHERS[(kernel, key)] = launch.configured(kernel, 1, threads, stream)
    return run


def embed_lookup(embed, token, h, d: int) -> None:
    """h[:] = embed[token[0]] (embed as int32 words of a bf16 [V, d] matrix, flattened)."""
    _launcher(embedding_kernel, THREADS)(embed, token, h, d // 2)


def advance(position, token, history) -> None:
    """Record the chosen token at history[position] and move the device position on by one."""
    _launcher(advance_kernel, 32)(position, token, history)


PTX_SIGNATURES = {
    "embedding_kernel": ["(int32[::1], int32[::1], float32[::1], int64)"],
    "advance_kernel": ["(int32[::1], int32[::1], int32[::1])"],
}
