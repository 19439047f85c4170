"""megakernel.kernels.attention (prepare, split decode, combine) against the reference ops, in the simulator.

Oracle: ``reference.ops`` in fp32 (``split_query_gate``, ``rms_norm``, ``rope_cos_sin`` + ``apply_partial_rope``,
``gqa_attention``, sigmoid gate) with a bf16 KV cache, as ``reference.load_model(dtype=float32,
cache_dtype=bfloat16)`` computes.

Tolerances and why:

* ``q_out``: 1e-5 relative (max|err| / max|ref|). fp32 on both sides; the sum of squares runs in another order
  and cos/sin come from the kernel's own fp32 ``sincos`` (within 1.2e-7 absolute of the exact values, as torch's
  are): a few ulp, ~1e-7.
* ``gate_out``: bit-identical (a copy).
* V cache: bit-identical to ``v.to(torch.bfloat16)`` (a copy rounded to nearest even; inputs include exact ties
  and near-ties). K cache: bit-identical to the reference's ``k.to(torch.bfloat16)`` except where the reference's
  fp32 ``k`` lies within 2^-18 (relative) of a bf16 rounding midpoint: there the kernel's fp32 value, a few ulp
  away, may round to the other neighbour, and either is accepted (about 0.2% of elements could qualify; the test
  reports how many did). Every other cache position must be untouched.
* attention output: 1e-5 relative against ``gqa_attention`` on the same bf16 cache contents: online softmax and
  split merging reorder the fp32 sums (~1e-7).

Caches start with random bits, positions at and beyond ``length`` with bf16 NaN where the decode must not read;
outputs and partial buffers start NaN.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numba import cuda

import megakernel  # noqa: F401  (installs the honest simulator)
from megakernel import launch
from megakernel.testing import ptx_check
from megakernel.kernels import attention as K
from reference import ops
from reference.check import check

TOL = 1e-5
EPS = 1e-6
A = launch.as_kernel_array
BF16_NAN = 0x7FC0

# name: (Hq, Hkv, Dh, R, rope theta)
CONFIGS = {
    "gqa4_dh32_r8": (8, 2, 32, 8, 1e7),  # the 0.8B ratios (GQA 4:1, R = Dh/4) at a tiny head dim
    "mha_dh24_r12": (2, 2, 24, 12, 1e4),  # GQA 1:1, head dim not a multiple of 32
    "gqa3_dh16_full_rope": (3, 1, 16, 16, 1e6),  # GQA 3:1, every dim rotated
    "gqa2_dh320_r32": (2, 1, 320, 32, 1e4),  # a head wider than a combine block (256 threads): two dims a thread
}


def config(name):
    Hq, Hkv, Dh, R, theta = CONFIGS[name]
    return (Hq, Hkv, Dh, R), theta


def make_weights(sizes, seed):
    Hq, Hkv, Dh, R = sizes
    g = torch.Generator().manual_seed(seed)
    qw = (torch.randn(Dh, generator=g) * 0.2).to(torch.bfloat16).float()
    kw = (torch.randn(Dh, generator=g) * 0.2).to(torch.bfloat16).float()
    return qw, kw, g


def new_proj(sizes, g, ties=True):
    """A q|gate / k / v projection output; the v part carries exact bf16 rounding ties and near-ties."""
    Hq, Hkv, Dh, R = sizes
    proj = torch.randn(Hq * 2 * Dh + 2 * Hkv * Dh, generator=g) * 2.0
    if ties:
        v = proj[Hq * 2 * Dh + Hkv * Dh :]
        bits = v.view(torch.int32)
        n = v.numel()
        bits[0::3] = (bits[0::3] & ~0xFFFF) | 0x8000  # exact ties: round to even
        bits[1::3] = (bits[1::3] & ~0xFFFF) | torch.where(torch.arange(len(bits[1::3])) % 2 == 0, 0x7FFF, 0x8001)
        assert n >= 3
    return proj


def reference_prepare(sizes, theta, proj, qw, kw, position):
    """(q [Hq, Dh], gate [Hq Dh], k [Hkv, Dh], v [Hkv, Dh]) in fp32."""
    Hq, Hkv, Dh, R = sizes
    query, gate = ops.split_query_gate(proj[: Hq * 2 * Dh][None], Hq, Dh)
    q = ops.rms_norm(query, qw, EPS)
    k = ops.rms_norm(proj[Hq * 2 * Dh : Hq * 2 * Dh + Hkv * Dh].view(1, Hkv, Dh), kw, EPS)
    v = proj[Hq * 2 * Dh + Hkv * Dh :].view(Hkv, Dh)
    cos, sin = ops.rope_cos_sin(torch.tensor([position]), R, theta)
    return ops.apply_partial_rope(q, cos, sin)[0], gate[0], ops.apply_partial_rope(k, cos, sin)[0], v


def reference_attention(sizes, q, gate, k_cache, v_cache, length):
    """softmax(q k^T / sqrt(Dh)) v * sigmoid(gate) over cache positions [0, length): [Hq Dh]."""
    Hq, Hkv, Dh, R = sizes
    keys = k_cache[:, :length].transpose(0, 1).float()
    values = v_cache[:, :length].transpose(0, 1).float()
    o = ops.gqa_attention(q[None], keys, values, Dh**-0.5, length - 1)
    return (o.reshape(Hq * Dh) * torch.sigmoid(gate)).reshape(-1)


def random_cache(sizes, capacity, g):
    Hq, Hkv, Dh, R = sizes
    return [(torch.randn(Hkv, capacity, Dh, generator=g) * 1.5).to(torch.bfloat16) for _ in range(2)]


def kernel_prepare(sizes, theta, proj, qw, kw, position, k_cache, v_cache):
    Hq, Hkv, Dh, R = sizes
    q_out, gate_out = launch.poison_(torch.empty(Hq, Dh)), launch.poison_(torch.empty(Hq * Dh))
    K.attn_prepare(A(proj), A(qw), A(kw), A(ops.rope_inv_freq(R, theta)), position, A(launch.halves(k_cache)),
                   A(launch.halves(v_cache)), A(q_out), A(gate_out), *sizes, eps=EPS)
    return q_out, gate_out


def kernel_attention(sizes, q, gate, k_cache, v_cache, length, n_splits, threads=None, capacity_splits=None):
    Hq, Hkv, Dh, R = sizes
    S = capacity_splits or n_splits + 2  # partial buffers larger than needed: only n_splits rows are used
    partial_ml = launch.poison_(torch.empty(Hq, S, 2))
    partial_o = launch.poison_(torch.empty(Hq, S, Dh))
    out = launch.poison_(torch.empty(Hq * Dh))
    K.attn_decode(A(q), A(launch.halves(k_cache)), A(launch.halves(v_cache)), length, A(partial_ml),
                  A(partial_o), n_splits, *sizes, threads=threads)
    K.attn_combine(A(partial_ml), A(partial_o), A(gate), A(out), n_splits, *sizes)
    return out


def check_bf16_cache_column(name, ref_f32, got, slack=2.0**-18):
    """``got`` (bf16) equals ``ref_f32.to(bf16)`` bit for bit, except where ``ref_f32`` is within ``slack``
    (relative) of a rounding midpoint and ``got`` is the other neighbour. Returns how many such elements."""
    expect = ref_f32.to(torch.bfloat16)
    differ = expect.view(torch.int16) != got.view(torch.int16)
    if not differ.any():
        return 0
    r, e, o = ref_f32[differ].double(), expect[differ].double(), got[differ].double()
    ulp = torch.maximum(e.abs(), o.abs()) * 2.0**-7  # bf16 spacing bound near these values
    neighbours = (e - o).abs() <= ulp
    near_midpoint = (r - (e + o) / 2).abs() <= slack * r.abs()
    bad = ~(neighbours & near_midpoint)
    assert not bad.any(), (
        f"{name}: {int(bad.sum())} bf16 values differ from the reference's rounding away from a midpoint: "
        f"ref {r[bad][:5].tolist()}, got {o[bad][:5].tolist()}"
    )
    return int(differ.sum())


# ----------------------------------------------------------------------------------------------------------------
# attn_prepare
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prepare_matches_reference(name):
    sizes, theta = config(name)
    Hq, Hkv, Dh, R = sizes
    qw, kw, g = make_weights(sizes, seed=1 + list(CONFIGS).index(name))
    capacity = 48
    k_cache, v_cache = random_cache(sizes, capacity, g)
    flips = 0
    for position in (0, 13, capacity - 1):
        proj = new_proj(sizes, g)
        k_before, v_before = k_cache.clone(), v_cache.clone()
        q_out, gate_out = kernel_prepare(sizes, theta, proj, qw, kw, position, k_cache, v_cache)
        q, gate, k, v = reference_prepare(sizes, theta, proj, qw, kw, position)
        check(f"{name} pos {position} q", q, q_out, TOL)
        check(f"{name} pos {position} gate", gate, gate_out, exact=True)
        assert torch.equal(v_cache[:, position].view(torch.int16), v.to(torch.bfloat16).view(torch.int16))
        flips += check_bf16_cache_column(f"{name} pos {position} k", k, k_cache[:, position])
        others = torch.arange(capacity) != position
        assert torch.equal(k_cache[:, others].view(torch.int16), k_before[:, others].view(torch.int16))
        assert torch.equal(v_cache[:, others].view(torch.int16), v_before[:, others].view(torch.int16))
    print(f"{name}: {flips} k values rounded to the other bf16 neighbour at a midpoint")


@cuda.jit
def sincos_kernel(angles, s, c):
    for i in range(cuda.grid(1), angles.shape[0], cuda.gridsize(1)):
        sn, cs = K.sincos(angles[i])
        s[i] = sn
        c[i] = cs


def test_sincos_accuracy():
    """The kernel's fp32 sin/cos over RoPE angles of the 0.8B model (R = 64, theta 1e7) at positions up to 262143
    and edge angles: within 1.2e-7 (about one float32 ulp of 1) of the exact values, as close as torch's fp32."""
    rng = np.random.default_rng(0)
    positions = np.concatenate([np.arange(64), rng.integers(0, 262144, 60), [105615, 105616, 262143]])
    inv = ops.rope_inv_freq(64, 1e7)
    angles = (torch.from_numpy(positions.astype(np.float32))[:, None] * inv[None, :]).reshape(-1)
    edges = torch.tensor([0.0, -0.0, 1.5707964, -1.5707964, 3.1415927, 4.712389, 0.7853982, 1e5, -1e5, 3.9e6])
    angles = torch.cat([angles, edges]).contiguous()
    s, c = launch.poison_(torch.empty_like(angles)), launch.poison_(torch.empty_like(angles))
    sincos_kernel[2, 64](A(angles), A(s), A(c))
    exact = angles.double()
    assert (s.double() - exact.sin()).abs().max() <= 1.2e-7
    assert (c.double() - exact.cos()).abs().max() <= 1.2e-7
    assert (angles.sin() - s).abs().max() <= 1.2e-7 and (angles.cos() - c).abs().max() <= 1.2e-7


# ----------------------------------------------------------------------------------------------------------------
# attn_decode + attn_combine
# ----------------------------------------------------------------------------------------------------------------

DECODE_CASES = [
    # (config, length, n_splits or None for attention_splits(length, 16), threads)
    ("gqa4_dh32_r8", 1, None, None),  # one position, one split
    ("gqa4_dh32_r8", 37, None, 64),  # 3 splits of 12-13 positions, 2 warps
    ("gqa4_dh32_r8", 37, 5, 96),  # splits not dividing the length, 3 warps
    ("mha_dh24_r12", 3, 5, 64),  # more splits than positions: empty splits weigh 0
    ("mha_dh24_r12", 70, None, 32),  # 5 splits, one warp
    ("gqa3_dh16_full_rope", 29, 2, 64),
    ("gqa4_dh32_r8", 45, 37, 64),  # the combine's partials in three batches (16, 16, 5)
    ("gqa2_dh320_r32", 20, 18, 32),  # two batches, and a combine thread with two dims (the second batch-loaded)
]


@pytest.mark.parametrize("name,length,n_splits,threads", DECODE_CASES)
def test_decode_and_combine_match_reference(name, length, n_splits, threads):
    sizes, _ = config(name)
    Hq, Hkv, Dh, R = sizes
    g = torch.Generator().manual_seed(100 + length)
    capacity = length + 5
    k_cache, v_cache = random_cache(sizes, capacity, g)
    for cache in (k_cache, v_cache):  # positions the decode must not read
        cache.view(torch.int16)[:, length:] = BF16_NAN
    q = torch.randn(Hq, Dh, generator=g) * 1.5
    gate = torch.randn(Hq * Dh, generator=g) * 2.0
    n = n_splits or K.attention_splits(length, positions_per_split=16)
    out = kernel_attention(sizes, q, gate, k_cache, v_cache, length, n, threads)
    check(f"{name} L={length} splits={n} threads={threads}", reference_attention(sizes, q, gate, k_cache, v_cache,
                                                                               length), out, TOL)


def test_cached_launchers_keep_their_own_grid():
    """One compiled decode kernel launched with 5, 1, then 5 splits again: each cached launcher must keep its own
    grid (the simulator's ``kernel[grid, block]`` reconfigures the kernel object itself, so a cached configuration
    there would launch the last grid set: splits beyond n_splits would read past ``length``)."""
    sizes, _ = config("gqa4_dh32_r8")
    Hq, Hkv, Dh, R = sizes
    g = torch.Generator().manual_seed(6)
    k_cache, v_cache = random_cache(sizes, 24, g)
    for cache in (k_cache, v_cache):
        cache.view(torch.int16)[:, 20:] = BF16_NAN
    q, gate = torch.randn(Hq, Dh, generator=g), torch.randn(Hq * Dh, generator=g)
    ref = reference_attention(sizes, q, gate, k_cache, v_cache, 20)
    for n in (5, 1, 5, 1):
        check(f"{n} splits", ref, kernel_attention(sizes, q, gate, k_cache, v_cache, 20, n, threads=32), TOL)


def test_large_scores_do_not_overflow():
    """Scores around 80 (exp would overflow without the running max) and one position dominating."""
    sizes, _ = config("gqa4_dh32_r8")
    Hq, Hkv, Dh, R = sizes
    g = torch.Generator().manual_seed(5)
    k_cache, v_cache = random_cache(sizes, 40, g)
    q = torch.randn(Hq, Dh, generator=g) * 12.0
    gate = torch.randn(Hq * Dh, generator=g)
    out = kernel_attention(sizes, q, gate, k_cache, v_cache, 40, 3, threads=64)
    check("large scores", reference_attention(sizes, q, gate, k_cache, v_cache, 40), out, TOL)


@pytest.mark.parametrize("name", ["gqa4_dh32_r8", "mha_dh24_r12"])
def test_five_step_chain(name):
    """prepare -> decode -> combine for five consecutive positions, appending to the cache each step; every
    prepare output, the cache and the attention output checked at every step."""
    sizes, theta = config(name)
    Hq, Hkv, Dh, R = sizes
    qw, kw, g = make_weights(sizes, seed=50)
    start, capacity = 20, 32
    k_cache, v_cache = random_cache(sizes, capacity, g)
    for cache in (k_cache, v_cache):
        cache.view(torch.int16)[:, start:] = BF16_NAN
    ref_k, ref_v = k_cache.clone(), v_cache.clone()
    for position in range(start, start + 5):
        length = position + 1
        proj = new_proj(sizes, g, ties=False)
        q_out, gate_out = kernel_prepare(sizes, theta, proj, qw, kw, position, k_cache, v_cache)
        q, gate, k, v = reference_prepare(sizes, theta, proj, qw, kw, position)
        ref_k[:, position], ref_v[:, position] = k.to(torch.bfloat16), v.to(torch.bfloat16)
        check(f"{name} pos {position} q", q, q_out, TOL)
        check(f"{name} pos {position} gate", gate, gate_out, exact=True)
        assert torch.equal(v_cache.view(torch.int16), ref_v.view(torch.int16))
        for p in range(capacity):
            if p == position:
                check_bf16_cache_column(f"{name} pos {position} k", k, k_cache[:, p])
            elif not torch.equal(k_cache[:, p].view(torch.int16), ref_k[:, p].view(torch.int16)):
                # an earlier position may hold the other neighbour of a midpoint (checked when written)
                assert p < position and p >= start, f"k cache position {p} changed"
        n = K.attention_splits(length, positions_per_split=8)
        out = kernel_attention(sizes, q_out, gate_out, k_cache, v_cache, length, n, threads=64)
        check(f"{name} pos {position} out ({n} splits)",
              reference_attention(sizes, q, gate, k_cache, v_cache, length), out, TOL)


def test_attention_splits_policy():
    assert K.attention_splits(1) == 1
    assert K.attention_splits(K.POSITIONS_PER_SPLIT) == 1
    assert K.attention_splits(K.POSITIONS_PER_SPLIT + 1) == 2
    assert K.attention_splits(4096) == 4096 // K.POSITIONS_PER_SPLIT
    assert K.attention_splits(10**6) == K.MAX_SPLITS
    assert K.attention_splits(37, positions_per_split=16) == 3
    with pytest.raises(ValueError, match="at least one"):
        K.attention_splits(0)


# ----------------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------------


def test_refuses_bad_sizes_and_arguments():
    sizes, theta = config("gqa4_dh32_r8")
    Hq, Hkv, Dh, R = sizes
    qw, kw, g = make_weights(sizes, seed=9)
    k_cache, v_cache = random_cache(sizes, 8, g)
    proj = new_proj(sizes, g)
    with pytest.raises(ValueError, match="num_attention_heads .* multiple of num_key_value_heads"):
        kernel_prepare((6, 4, Dh, R), theta, proj, qw, kw, 0, k_cache, v_cache)
    with pytest.raises(ValueError, match="rotary dims .* even"):
        kernel_prepare((Hq, Hkv, Dh, 7), theta, proj, qw, kw, 0, k_cache, v_cache)
    with pytest.raises(ValueError, match="position 8 outside the KV cache"):
        kernel_prepare(sizes, theta, proj, qw, kw, 8, k_cache, v_cache)
    with pytest.raises(ValueError, match="KV caches must be int16"):
        kernel_prepare(sizes, theta, proj, qw, kw, 0, k_cache[:1].contiguous(), v_cache[:1].contiguous())
    q, gate = torch.zeros(Hq, Dh), torch.zeros(Hq * Dh)
    with pytest.raises(ValueError, match="16 query heads per KV head"):
        kernel_attention((32, 2, Dh, R), torch.zeros(32, Dh), torch.zeros(32 * Dh), k_cache, v_cache, 4, 1)
    with pytest.raises(ValueError, match="length 9 must be in"):
        kernel_attention(sizes, q, gate, k_cache, v_cache, 9, 1)
    with pytest.raises(ValueError, match="n_splits"):
        kernel_attention(sizes, q, gate, k_cache, v_cache, 4, K.MAX_SPLITS + 1)
    with pytest.raises(ValueError, match="S >= n_splits"):
        kernel_attention(sizes, q, gate, k_cache, v_cache, 4, 3, capacity_splits=2)


# ----------------------------------------------------------------------------------------------------------------
# sm_90
# ----------------------------------------------------------------------------------------------------------------


def test_ptx_sm90_clean():
    """prepare, decode and combine at the 0.8B shapes and an awkward shape compile for sm_90 without float64 (no
    libdevice cosf), local memory (the per-lane query and accumulators stay in registers) or spills."""
    reports = ptx_check.check_in_subprocess("megakernel.kernels.attention")
    assert {r.name for r in reports} == set(K.PTX_SIGNATURES)
    for r in reports:
        assert r.ok, r.problems
        if "decode" in r.name:
            assert "shfl.sync.bfly" in r.ptx
        if "prepare" in r.name:
            assert "fma.rn.f32" in r.ptx  # the sincos reduction
        print(f"{r.name}: {r.registers} registers, spills {r.spill_store_bytes}/{r.spill_load_bytes} B")


@pytest.mark.parametrize("position", [0, 70, 129])
def test_device_held_position_gives_the_same_bits(position):
    """For CUDA-graph replay the position lives in device memory and the grid is sized for the cache capacity:
    prepare, decode and combine must produce exactly what the host-integer launches produce."""
    sizes, theta = config("gqa4_dh32_r8")
    Hq, Hkv, Dh, R = sizes
    qw, kw, g = make_weights(sizes, seed=11)
    proj = new_proj(sizes, g)
    capacity = 192
    caches = random_cache(sizes, capacity, g)
    results = []
    for on_device in (False, True):
        k_cache, v_cache = (c.clone() for c in caches)
        pos = torch.tensor([position], dtype=torch.int32)
        p = A(pos) if on_device else position
        q, gate = kernel_prepare(sizes, theta, proj, qw, kw, p, k_cache, v_cache)
        length = position + 1
        grid_splits = K.attention_splits(capacity) if on_device else K.attention_splits(length)
        partial_ml = launch.poison_(torch.empty(Hq, K.MAX_SPLITS, 2))
        partial_o = launch.poison_(torch.empty(Hq, K.MAX_SPLITS, Dh))
        out = launch.poison_(torch.empty(Hq * Dh))
        K.attn_decode(A(q), A(launch.halves(k_cache)), A(launch.halves(v_cache)), p if on_device else length,
                      A(partial_ml), A(partial_o), grid_splits, *sizes)
        K.attn_combine(A(partial_ml), A(partial_o), A(gate), A(out), grid_splits, *sizes,
                       length=p if on_device else None)
        results.append((q, gate, k_cache, v_cache, out))
    for name, a, b in zip(("q", "gate", "K cache", "V cache", "attention out"), *results):
        check(f"device-held position {position}: {name}", a.float(), b.float(), 0, exact=True)
    with pytest.raises(ValueError, match="int32\\[1\\] device array"):
        K.attn_prepare(A(proj), A(qw), A(kw), A(ops.rope_inv_freq(R, theta)), 1.5, A(launch.halves(caches[0])),
                       A(launch.halves(caches[1])), A(torch.empty(Hq, Dh)), A(torch.empty(Hq * Dh)), *sizes)
