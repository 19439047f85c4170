"""megakernel.persistent.mma: the tensor-core intrinsics (``ldmatrix_x4``, ``mma_bf16``) and version 11's page
consumer, inside small kernels, against NumPy in float64.

The same file checks the GPU's instructions on a machine with a GPU (``NUMBA_ENABLE_CUDASIM=0 pytest
tests/test_mma.py``; ``tests/gpu/test_gpu_mma.py`` runs it with the GPU tests): the simulator's models are
written from PTX's fragment layouts, and only the hardware can say they are the layouts it uses.

Oracles: a single tile product is exact in float64 up to the fp32 accumulation (tolerance 1e-6 relative); a page
row's sum takes x as bf16 hi + lo (16 of 24 mantissa bits: ~2^-17 relative per element), so it is held to 2e-5 of
the row's sum of |w x|. Outputs start as NaN; sizes are awkward (a page of 11 rows, 5 gate/up pairs, a hidden size
of 48 over two warps whose k-spans differ, 1,024 over 8 warps as in the 0.8B).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numba import config, cuda
from numba.cuda import float32, int32, uint32

import megakernel  # noqa: F401  (installs the simulator layer when the simulator is on)
from megakernel.persistent import mma as MM

SIM = bool(config.ENABLE_CUDASIM)
if not SIM and not cuda.is_available():  # pragma: no cover
    pytest.skip("NUMBA_ENABLE_CUDASIM=0 but no GPU", allow_module_level=True)


def bf16_words(values: np.ndarray) -> np.ndarray:
    """float values -> their bf16 (round to nearest even) packed two per int32 word, low half first; and the
    bf16 values back as float64."""
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).to(torch.bfloat16)
    return t.view(torch.int32).numpy().copy(), t.double().numpy()


@cuda.jit
def tile_kernel(a_words, bt_words, c, out):
    """One warp: A's fragments from global memory in PTX's m16n8k16 layout, B's by ``ldmatrix_x4`` from B^T (8 rows
    of 16 k, twice: two products) in shared memory, D = A B + C."""
    smem = cuda.shared.array(128, int32)
    lane = cuda.threadIdx.x
    for i in range(lane, 128, 32):
        smem[i] = bt_words[i]
    cuda.syncthreads()
    g = lane >> 2
    t = lane & 3
    a0 = uint32(a_words[g * 8 + t])            # A[g][2t..2t+1]
    a1 = uint32(a_words[(g + 8) * 8 + t])      # A[g+8][2t..]
    a2 = uint32(a_words[g * 8 + 4 + t])        # A[g][2t+8..]
    a3 = uint32(a_words[(g + 8) * 8 + 4 + t])  # A[g+8][2t+8..]
    q = lane >> 3
    r = lane & 7
    w0, w1, w2, w3 = MM.ldmatrix_x4(smem, (q >> 1) * 64 + r * 8 + (q & 1) * 4)
    d = MM.mma_bf16(a0, a1, a2, a3, w0, w1, c[g, 2 * t], c[g, 2 * t + 1], c[g + 8, 2 * t], c[g + 8, 2 * t + 1])
    e = MM.mma_bf16(a0, a1, a2, a3, w2, w3, float32(0), float32(0), float32(0), float32(0))
    out[0, g, 2 * t] = d[0]
    out[0, g, 2 * t + 1] = d[1]
    out[0, g + 8, 2 * t] = d[2]
    out[0, g + 8, 2 * t + 1] = d[3]
    out[1, g, 2 * t] = e[0]
    out[1, g, 2 * t + 1] = e[1]
    out[1, g + 8, 2 * t] = e[2]
    out[1, g + 8, 2 * t + 1] = e[3]


def test_a_tile_product_follows_ptx_fragment_layouts():
    rng = np.random.default_rng(3)
    a_words, A = bf16_words(rng.standard_normal((16, 16)))
    bt_words, BT = bf16_words(rng.standard_normal((2, 8, 16)))  # two products' B^T: rows n, 16 k each
    c = rng.standard_normal((16, 8)).astype(np.float32)
    out = np.full((2, 16, 8), np.nan, np.float32)
    tile_kernel[1, 32](a_words.reshape(-1), bt_words.reshape(-1), c, out)
    want = [A @ BT[0].T + c, A @ BT[1].T]
    for k in range(2):
        np.testing.assert_allclose(out[k], want[k], rtol=1e-6, atol=1e-6 * np.abs(want[k]).max())


make_page_kernel = MM.make_page_kernel
split_layout = MM.split_layout


@pytest.mark.parametrize("hidden,warps,nrows,gate_up,chains", [
    (48, 2, 3, False, 1), (48, 2, 2, True, 1), (1024, 8, 16, False, 1), (1024, 8, 11, False, 1),
    (1024, 8, 5, True, 1), (1024, 8, 8, True, 1), (160, 3, 7, False, 1), (1024, 8, 13, False, 4),
    (160, 3, 6, True, 3), (256, 16, 5, False, 1)])
def test_page_rows_match_float64(hidden, warps, nrows, gate_up, chains):
    """Every row of a page (``nrows`` rows, or ``nrows`` gate rows then as many up rows) against float64; x with
    a wide dynamic range (the lo half matters) and one exact zero; with one accumulator chain per row group, or
    several (3 over spans of 4 and 2 k-steps: chains left empty); and 16 warps (each row's partials over more warps
    than an 8-lane group has lanes)."""
    rng = np.random.default_rng(hidden + nrows)
    n = 2 * nrows if gate_up else nrows
    words, W = bf16_words(rng.standard_normal((n, hidden)))
    x = (rng.standard_normal(hidden) * np.exp(rng.uniform(-4, 4, hidden))).astype(np.float32)
    x[5] = 0.0
    kern = make_page_kernel(hidden, warps, max(16, n), chains)
    out = np.full(n, np.nan, np.float32)
    kern[1, warps * 32](words.reshape(-1), nrows, int(gate_up), nrows % 8, split_layout(x), out)
    want = W @ x.astype(np.float64)
    if gate_up:  # partial 2r is gate row r, 2r + 1 up row r
        want = np.stack([want[:nrows], want[nrows:]], 1).reshape(-1)
        scale = np.stack([np.abs(W[:nrows]) @ np.abs(x), np.abs(W[nrows:]) @ np.abs(x)], 1).reshape(-1)
    else:
        scale = np.abs(W) @ np.abs(x)
    assert np.all(np.abs(out - want) <= 2e-5 * scale), (out, want)


def test_support_limits():
    assert MM.mma_supported(1024, 8) and MM.mma_supported(48, 2)
    assert not MM.mma_supported(40, 2)      # not whole 16-k steps
    assert not MM.mma_supported(2048, 8)    # 16 k-steps a warp: 64 fragment words
    assert MM.mma_supported(2048, 16)


@pytest.mark.parametrize("gate_up,chains", [(False, 1), (True, 1), (False, 2)])
def test_a_rows_bits_do_not_depend_on_its_place_in_the_page(gate_up, chains):
    """The same matrix rows in two pages that start 3 rows apart (another grid's split): the same bits for every
    row both pages hold (a row's chunks are rotated by its index in the matrix, not its place in the page)."""
    rng = np.random.default_rng(7)
    hidden, warps = 1024, 8
    _, W = bf16_words(rng.standard_normal((2, 19, hidden)))
    x = (rng.standard_normal(hidden) * np.exp(rng.uniform(-4, 4, hidden))).astype(np.float32)
    kern = make_page_kernel(hidden, warps, 16, chains)
    sums = []
    for first, n in ((0, 8 if gate_up else 16), (3, 8 if gate_up else 16)):
        rows = W[:, first:first + n] if gate_up else W[0, first:first + n]
        words, _ = bf16_words(rows.reshape(-1, hidden))
        out = np.full(2 * n if gate_up else n, np.nan, np.float32)
        kern[1, warps * 32](words.reshape(-1), n, int(gate_up), first % 8, split_layout(x), out)
        sums.append(out.reshape(n, 2) if gate_up else out)
    np.testing.assert_array_equal(sums[0][3:], sums[1][:-3])
