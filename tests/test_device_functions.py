"""megakernel.device: every helper run inside small kernels, against NumPy/torch.

Output buffers start as NaN (or a junk pattern) so a slot a kernel forgot to write fails the
comparison; sizes are deliberately awkward (not multiples of the block size).

The same file checks the GPU implementations on a machine with a GPU:
``NUMBA_ENABLE_CUDASIM=0 pytest tests/test_device_functions.py`` runs these kernels on the
device (tests about simulator-only behaviour are skipped there).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numba import config

import megakernel  # noqa: F401  (installs the simulator layer when the simulator is on)
from megakernel import device as D
from numba import cuda
from numba.cuda import float32, int32, uint32

SIM = bool(config.ENABLE_CUDASIM)
if not SIM and not cuda.is_available():  # pragma: no cover
    pytest.skip("NUMBA_ENABLE_CUDASIM=0 but no GPU", allow_module_level=True)
sim_only = pytest.mark.skipif(not SIM, reason="simulator implementation detail")


def test_implementation_matches_target():
    assert D.SIMULATOR == SIM


def f32_bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def special_floats() -> np.ndarray:
    """Bit patterns that break naive bf16 rounding: ties, denormals, inf, NaN, overflow."""
    bits = [
        0x00000000, 0x80000000,  # +-0
        0x00000001, 0x80000001, 0x00007FFF, 0x00008000, 0x00018000, 0x0000FFFF,  # denormals
        0x007FFFFF, 0x00800000,  # largest denormal, smallest normal
        0x3F808000, 0x3F818000,  # exact ties: round down to even / up to even
        0x3F807FFF, 0x3F808001,  # just below / above a tie
        0x7F7FFFFF, 0x7F7F8000, 0x7F7F7FFF, 0xFF7FFFFF,  # near max: some round to inf
        0x7F800000, 0xFF800000,  # +-inf
        0x7F800001, 0x7FC00000, 0xFFC00000, 0x7FFFFFFF, 0xFF800001, 0x7FA12345,  # NaNs
    ]
    return np.array(bits, np.uint32)


def random_float_bits(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32)
    # a share of exact ties and near-ties on top of uniformly random bit patterns
    bits[: n // 4] = (bits[: n // 4] & 0xFFFF0000) | 0x8000
    bits[n // 4 : n // 2] = (bits[n // 4 : n // 2] & 0xFFFF0000) | rng.choice([0x7FFF, 0x8001], n // 4)
    return bits


def torch_bf16_bits(bits: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(bits.view(np.float32).copy()).to(torch.bfloat16)
    return t.view(torch.int16).numpy().view(np.uint16).astype(np.uint32)


# ----------------------------------------------------------------------------------------
# Bit casts and bf16
# ----------------------------------------------------------------------------------------


@cuda.jit
def bitcast_kernel(bits, f_out, bits_out):
    i = cuda.grid(1)
    if i < bits.shape[0]:
        f = D.bits_to_f32(bits[i])
        f_out[i] = f
        bits_out[i] = D.f32_to_bits(f)


def test_bit_casts_round_trip():
    bits = np.concatenate([special_floats(), random_float_bits(173, seed=1)])
    f_out = np.full(bits.size, np.nan, np.float32)
    bits_out = np.zeros(bits.size, np.uint32)
    bitcast_kernel[2, 128](bits, f_out, bits_out)
    np.testing.assert_array_equal(f32_bits(f_out), bits)  # NaN payloads included
    np.testing.assert_array_equal(bits_out, bits)


@cuda.jit
def decode_bf16_kernel(words, out):
    i = cuda.grid(1)
    if i < words.shape[0]:
        out[2 * i] = D.bf16_lo(words[i])
        out[2 * i + 1] = D.bf16_hi(words[i])


@pytest.mark.parametrize("view", [torch.int32, torch.uint32])
def test_bf16_decode_matches_torch(view):
    n = 2 * 157  # awkward: 157 words
    t = torch.randn(n) * torch.logspace(-30, 30, n)
    t[:8] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -3.0, 65504.0])
    tb = t.to(torch.bfloat16)
    words = tb.view(view).numpy()
    out = np.full(n, np.nan, np.float32)
    decode_bf16_kernel[2, 96](words, out)
    np.testing.assert_array_equal(f32_bits(out), f32_bits(tb.float().numpy()))


@cuda.jit
def decode_int16_kernel(h, out):
    i = cuda.grid(1)
    if i < h.shape[0]:
        out[i] = D.bf16_to_f32(h[i])


def test_bf16_to_f32_from_int16_view():
    tb = (torch.randn(45) * 100).to(torch.bfloat16)
    out = np.full(45, np.nan, np.float32)
    decode_int16_kernel[1, 64](tb.view(torch.int16).numpy(), out)
    np.testing.assert_array_equal(f32_bits(out), f32_bits(tb.float().numpy()))


@cuda.jit
def encode_bf16_kernel(bits, out):
    # each thread converts a strided share of the inputs
    for j in range(cuda.grid(1), bits.shape[0], cuda.gridsize(1)):
        out[j] = D.f32_to_bf16_bits(D.bits_to_f32(bits[j]))


def test_f32_to_bf16_matches_torch_in_kernel():
    bits = np.concatenate([special_floats(), random_float_bits(3000, seed=2)])
    out = np.full(bits.size, 0xDEADBEEF, np.uint32)
    encode_bf16_kernel[2, 64](bits, out)
    expect = torch_bf16_bits(bits)
    nan = np.isnan(bits.view(np.float32))
    np.testing.assert_array_equal(out[~nan], expect[~nan])
    assert (out[nan] == 0x7FFF).all()  # the GPU's canonical NaN (torch's CPU kernels: 0xFFFF)
    assert (out >> 16 == 0).all()


@sim_only
def test_f32_to_bf16_many_random_floats():
    """The same device function over 120k values (called directly: it is plain Python here)."""
    bits = np.concatenate([special_floats(), random_float_bits(120_000, seed=3)])
    fn = D.f32_to_bf16_bits.py_func
    vals = bits.view(np.float32)
    out = np.fromiter((fn(v) for v in vals), dtype=np.uint32, count=vals.size)
    expect = torch_bf16_bits(bits)
    nan = np.isnan(vals)
    np.testing.assert_array_equal(out[~nan], expect[~nan])
    assert (out[nan] == 0x7FFF).all()
    # denormal and tie coverage really was there
    assert ((bits & 0x7F800000) == 0).sum() > 0 and ((bits & 0xFFFF) == 0x8000).sum() > 1000


# ----------------------------------------------------------------------------------------
# Vector loads
# ----------------------------------------------------------------------------------------


@cuda.jit
def vector_load_kernel(w, x, out4, out2, outf):
    i = cuda.grid(1)
    if i < w.shape[0] // 4:
        a, b, c, d = D.load_u32x4(w, i)
        out4[4 * i] = a
        out4[4 * i + 1] = b
        out4[4 * i + 2] = c
        out4[4 * i + 3] = d
    if i < w.shape[0] // 2:
        a, b = D.load_u32x2(w, i)
        out2[2 * i] = a
        out2[2 * i + 1] = b
    if i < x.shape[0] // 4:
        p, q, r, s = D.load_f32x4(x, i)
        outf[4 * i] = p
        outf[4 * i + 1] = q
        outf[4 * i + 2] = r
        outf[4 * i + 3] = s


@pytest.mark.parametrize("dtype", [np.uint32, np.int32])
def test_vector_loads(dtype):
    rng = np.random.default_rng(4)
    w = rng.integers(0, 1 << 32, 4 * 37, dtype=np.uint64).astype(np.uint32).view(dtype)
    x = rng.standard_normal(4 * 29).astype(np.float32)
    out4 = np.full(w.size, 0x7BADBEEF, dtype)
    out2 = np.full(w.size, 0x7BADBEEF, dtype)
    outf = np.full(x.size, np.nan, np.float32)
    vector_load_kernel[3, 32](w, x, out4, out2, outf)
    np.testing.assert_array_equal(out4, w)
    np.testing.assert_array_equal(out2, w)
    np.testing.assert_array_equal(outf, x)


@cuda.jit
def misaligned_load(w, out):
    a, b, c, d = D.load_u32x4(w[1:], 0)  # base 4 bytes past a 16-byte boundary
    out[0] = a


@cuda.jit
def out_of_bounds_load(w, out):
    a, b, c, d = D.load_u32x4(w, 2)
    out[0] = a


@sim_only
def test_vector_load_misuse_is_caught():
    w = np.zeros(8, np.uint32)
    with pytest.raises(ValueError, match="aligned"):
        misaligned_load[1, 1](w, np.zeros(1, np.uint32))
    with pytest.raises(IndexError, match="out of bounds"):
        out_of_bounds_load[1, 1](w, np.zeros(1, np.uint32))


# ----------------------------------------------------------------------------------------
# Warp and block reductions
# ----------------------------------------------------------------------------------------


def butterfly(vals: np.ndarray, op) -> np.ndarray:
    """The GPU's xor butterfly over each warp of 32, per lane."""
    v = vals.reshape(-1, 32).copy()
    lanes = np.arange(32)
    for off in (16, 8, 4, 2, 1):
        v = op(v, v[:, lanes ^ off])
    return v.reshape(-1)


@cuda.jit
def warp_reduce_kernel(x, idx, s, m, am_v, am_i):
    i = cuda.grid(1)
    v = x[i]
    s[i] = D.warp_sum(v)
    m[i] = D.warp_max(v)
    bv, bi = D.warp_argmax(v, idx[i])
    am_v[i] = bv
    am_i[i] = bi


def run_warp_reduce(x, idx):
    n = x.size
    s, m, am_v = (np.full(n, np.nan, np.float32) for _ in range(3))
    am_i = np.full(n, -1, np.int32)
    warp_reduce_kernel[2, 96](x, idx, s, m, am_v, am_i)  # 6 warps
    return s, m, am_v, am_i


@cuda.jit
def warp_sum2_kernel(a, b, pair, sa, sb):
    i = cuda.grid(1)
    pair[i] = D.warp_sum2(a[i], b[i])
    sa[i] = D.warp_sum(a[i])
    sb[i] = D.warp_sum(b[i])


def test_warp_sum2_gives_two_warp_sums_bits_on_the_two_half_warps():
    """``warp_sum2(a, b)``: lanes 0-15 end with ``warp_sum(a)``, lanes 16-31 with ``warp_sum(b)``, bit for bit (the
    split-sums consumer of persistent version 6 relies on it to keep version 3's bits)."""
    rng = np.random.default_rng(11)
    a, b = ((rng.standard_normal(128) * 1e3).astype(np.float32) for _ in range(2))
    pair, sa, sb = (np.full(128, np.nan, np.float32) for _ in range(3))
    warp_sum2_kernel[1, 128](a, b, pair, sa, sb)
    lower = (np.arange(128) % 32) < 16
    np.testing.assert_array_equal(pair[lower], sa[lower])
    np.testing.assert_array_equal(pair[~lower], sb[~lower])
    np.testing.assert_array_equal(sa, butterfly(a, np.add))


def test_warp_reductions_match_numpy():
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(192) * 1e3).astype(np.float32)
    x[40] = x[41] = x[60] = 5e4  # a tie in warp 1: smallest index (40) wins
    idx = np.arange(192, dtype=np.int32)
    s, m, am_v, am_i = run_warp_reduce(x, idx)
    np.testing.assert_array_equal(s, butterfly(x, np.add))  # same bits as the GPU order
    np.testing.assert_allclose(s, np.repeat(x.reshape(-1, 32).sum(1, dtype=np.float64), 32), rtol=1e-5)
    np.testing.assert_array_equal(m, np.repeat(x.reshape(-1, 32).max(1), 32))
    np.testing.assert_array_equal(am_v, np.repeat(x.reshape(-1, 32).max(1), 32))
    np.testing.assert_array_equal(am_i, np.repeat(x.reshape(-1, 32).argmax(1), 32) + np.repeat(np.arange(6) * 32, 32))
    assert am_i[32] == 40


def test_warp_argmax_nan_and_ties_like_torch():
    x = np.zeros(192, np.float32)
    x[5] = x[3] = 1.0  # warp 0: tie -> 3
    x[40] = np.nan  # warp 1: NaN is the maximum, like torch.argmax
    x[35] = 7.0
    x[70] = x[80] = np.nan  # warp 2: first NaN
    x[96:128] = -np.inf  # warp 3: all -inf -> lane 0
    idx = np.arange(192, dtype=np.int32)
    s, m, am_v, am_i = run_warp_reduce(x, idx)
    expect = torch.from_numpy(x).view(6, 32).argmax(1).numpy() + np.arange(6) * 32
    np.testing.assert_array_equal(am_i.reshape(6, 32)[:, 0], expect)
    assert (am_i.reshape(6, 32) == am_i.reshape(6, 32)[:, :1]).all()  # same on every lane
    assert np.isnan(m[32:96]).all() and np.isnan(am_v[32:96]).all()  # NaN propagates
    assert np.isnan(s[32:96]).all()


@cuda.jit
def block_reduce_kernel(x, s_out, m_out):
    scratch = cuda.shared.array(32, float32)
    i = cuda.grid(1)
    v = x[i] if i < x.shape[0] else float32(0)
    s = D.block_sum(v, scratch)
    v2 = x[i] if i < x.shape[0] else float32(-np.inf)
    m = D.block_max(v2, scratch)  # scratch reused right away
    if i < x.shape[0]:
        s_out[i] = s
        m_out[i] = m


def test_block_reductions():
    rng = np.random.default_rng(6)
    x = rng.standard_normal(150).astype(np.float32)  # 2 blocks of 96, the last partly idle
    s_out, m_out = np.full(150, np.nan, np.float32), np.full(150, np.nan, np.float32)
    block_reduce_kernel[2, 96](x, s_out, m_out)
    blocks = [x[:96], x[96:]]
    np.testing.assert_allclose(s_out, np.concatenate([np.full(b.size, b.sum()) for b in blocks]), rtol=1e-5)
    np.testing.assert_array_equal(m_out, np.concatenate([np.full(b.size, b.max()) for b in blocks]))


# ----------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------


@cuda.jit
def activation_kernel(x, out):
    i = cuda.grid(1)
    if i < x.shape[0]:
        v = x[i]
        out[i, 0] = D.sigmoid(v)
        out[i, 1] = D.silu(v)
        out[i, 2] = D.softplus(v)
        out[i, 3] = D.fast_sigmoid(v)
        out[i, 4] = D.fast_exp(v)
        out[i, 5] = D.rsqrt(abs(v) + float32(1e-3))


def test_activations_match_torch():
    x = np.concatenate(
        [np.linspace(-30, 30, 41), [-1000.0, -100.0, 0.0, 19.99, 20.0, 20.01, 100.0, 1000.0]]
    ).astype(np.float32)
    out = np.full((x.size, 6), np.nan, np.float32)
    activation_kernel[1, 64](x, out)
    t = torch.from_numpy(x)
    F = torch.nn.functional
    np.testing.assert_allclose(out[:, 0], torch.sigmoid(t).numpy(), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(out[:, 1], F.silu(t).numpy(), rtol=1e-6, atol=1e-30)
    np.testing.assert_allclose(out[:, 2], F.softplus(t).numpy(), rtol=1e-6, atol=1e-30)
    # __expf (ex2.approx) is off by up to 2 + 1.16|x| ulp on the GPU
    np.testing.assert_allclose(out[:, 3], torch.sigmoid(t).numpy(), rtol=3e-5, atol=1e-30)
    big = x < 80  # exp overflows float32 beyond ~88.7: inf, like the GPU
    np.testing.assert_allclose(out[big, 4], torch.exp(t[big]).numpy(), rtol=3e-5)
    assert np.isinf(out[x > 89, 4]).all()
    np.testing.assert_allclose(out[:, 5], torch.rsqrt(t.abs() + 1e-3).numpy(), rtol=1e-6)
    assert out.dtype == np.float32 and not np.isnan(out).any()


@sim_only
def test_scalar_helpers_return_float32_or_uint32():
    assert type(D.bits_to_f32(np.uint32(0x3F800000))) is np.float32
    assert D.bits_to_f32(0x3F800000) == 1.0
    assert type(D.f32_to_bits(np.float32(1))) is np.uint32
    assert type(D.bf16_lo(np.int32(-1))) is np.float32
    assert D.bf16_lo(np.int32(0x3F80_0000 | 0x4000)) == 2.0  # low half 0x4000 -> 2.0
    assert D.bf16_hi(np.int32(0x3F80_4000)) == 1.0
    assert D.f32_to_bf16_bits.py_func(np.float32(1.0)) == 0x3F80
    assert int(uint32(D.f32_to_bf16_bits.py_func(np.float32(-2.0)))) == 0xC000
    assert D.FULL_MASK == 0xFFFFFFFF and D.WARP_SIZE == 32 and int32(7) == 7
