"""The last step of decode: logits = W_lm @ rms_norm(h), and the next token, without leaving the GPU.

``lm_head_argmax(h, norm_w, W, logits, n_vocab, k, eps, best)`` is the biggest matvec of the model (248320 x 1024
bf16 = 509 MB, a third of all weight bytes per token) with the final RMSNorm folded in (as
``fused_matvec.norm_matvec``) and the argmax done in the same launch:

1. every warp computes whole logits (grid-strided rows, matvec v5's loop), writes them (fp32, V floats: the
   host needs them for comparisons and for top-k/top-p sampling) and keeps the best (value, index) it has seen
   as one packed 64-bit key (below).  All 32 lanes hold the same dot product after the xor-butterfly
   ``warp_sum``, so the warp's best needs no shuffle;
2. the warps of a block meet in shared memory, thread 0 takes the block's best key and does **one**
   ``atomicMax`` on a global 64-bit word (~1,000 atomics for the LM head instead of one per warp or per row);
3. the last block to finish (a ``threadfence`` + counter ``atomicAdd`` ticket, the classic "last block" pattern)
   reads the winning key with an atomic exchange that also resets it, decodes the token id and writes it to
   device memory.  So the buffer is ready for the next launch without a reset kernel (which a CUDA graph would
   otherwise have to contain), and the token is on the device for the next step's embedding lookup.

**Version 7** (the default; ``version=5`` is the original above) runs the same three steps on matvec v7's
skeleton (:mod:`megakernel.kernels.matvec`): each block stages x = h * (1 + w) and rstd in shared memory once
(``fused_matvec.stage_norm``) instead of every warp redoing the norm for every row, and one resident wave of
8-warp blocks (528 on an H100) grid-strides over the rows with each row's loads issued before the previous row
is reduced.  H100: 170.8 us (2.98 TB/s, 99.4 % of the copy bandwidth; version 5: 201.6 us, torch's bare
F.linear: 178.7 us).

**The packed key** makes "larger value, and on ties the smaller index" a single signed 64-bit comparison, so
``atomicMax`` on one word is an argmax: high 32 bits = the float's bits made order-preserving as a signed
integer (``b`` for +x, ``2^31 - 1 - b`` for -x: more negative floats get smaller integers), low 32 bits =
``0xFFFFFFFF - index`` (the smaller index has the larger key).  Conventions, as ``torch.argmax``: -0.0 and +0.0
are equal (both map to 0); NaN counts as larger than everything (every NaN maps to ``0x7FFFFFFF``), so the first
NaN wins.  ``-inf`` everywhere gives index 0.

**The ``best`` buffer** (``new_best(device)``: a torch int64[4]; pass ``as_kernel_array(best)`` to kernels):

====  ===========================================================================================================
[0]   running key; ``INT64_MIN`` between launches (the last block resets it)
[1]   number of blocks finished; 0 between launches
[2]   the last launch's winning key
[3]   the last launch's token id; its low 32 bits, ``token_view(best)`` (an int32[1] view), are a device int32
      token the embedding lookup can read directly (CUDA-graph decode: no host round trip)
====  ===========================================================================================================

``read_token(best)`` reads [3] on the host (synchronizing).  ``reset_best(best)`` restores the between-launch
state (only needed after a launch that did not complete).  One ``best`` per stream: two launches in flight on
the same buffer would mix their keys.

**Sampling on the device**: ``sample_gumbel(logits, n_vocab, temperature, seed, step, best)`` draws a token from
``softmax(logits / temperature)`` by the Gumbel-max trick: ``argmax_i(logits_i / T + g_i)`` with
``g_i = -log(-log(u_i))`` and ``u_i`` uniform in (0, 1) is distributed exactly as the softmax (up to ``u``'s
24-bit resolution).  ``u_i`` comes from a counter-based hash of (seed, step, i): no RNG state to carry, the same
(seed, step) gives the same token and any step can be replayed.  (``seed`` and ``step`` are launch arguments:
a captured CUDA graph would replay the same step, so graph decode with sampling would need them in device
memory; not done here.)  The argmax is the same
packed-key atomic as above, into the same kind of ``best`` buffer.  Temperature 0 is refused (use the argmax).
top-k / top-p are not done on the device: the decoders filter on the host with
``reference.sampling.sample_next_token`` on the fp32 logits this kernel writes, which is also what makes their
sampled tokens comparable with the reference's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import cuda
from numba.cuda import float32, int64, uint64

from megakernel import device as D
from megakernel import launch

from .fused_matvec import dot_row_norm, stage_norm
from .matvec import (PARTS_LEN, SIM_MAX_BLOCKS, SIMULATOR, V6_BOUNDS, WARP, Launcher, RowsLauncher, cdiv, check_k,
                     combine_parts, dot_batch, load_batch, memo_kernel, plan_rows, row_limit, rows_setup, sm_count,
                     x_shared_bytes)

INT64_MIN = -(1 << 63)
_NO_KEY = np.int64(INT64_MIN)
_LOW32 = np.int64(0xFFFFFFFF)
_TWO32 = np.int64(1 << 32)
_NAN_KEY_HIGH = np.int64(0x7FFFFFFF)
_SIGN_BIT = np.int64(0x80000000)


# --------------------------------------------------------------------------------------------------------------
# Packed argmax keys
# --------------------------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def argmax_key(value, index):
    """Signed 64-bit key: larger value -> larger key; equal values -> smaller index has the larger key; NaN above
    everything; -0.0 == +0.0.  ``index`` in [0, 2^32)."""
    b = int64(D.f32_to_bits(value))
    if value != value:
        s = _NAN_KEY_HIGH
    elif value == float32(0):
        s = int64(0)
    elif b >= _SIGN_BIT:
        s = (_NAN_KEY_HIGH - b)  # 2^31 - 1 - b: negative, decreasing with the magnitude
    else:
        s = b
    return s * _TWO32 + (_LOW32 - int64(index))


@cuda.jit(device=True)
def key_index(key):
    return _LOW32 - (key & _LOW32)


def key_to_index(key: int) -> int:
    """Host decode of a packed key."""
    return 0xFFFFFFFF - (int(key) & 0xFFFFFFFF)


@cuda.jit(device=True)
def publish_block_best(key, best, nblocks, keys):
    """Block-wide max of the warps' keys, one atomicMax per block, and the last of ``nblocks`` blocks to finish
    publishes the token (best[2], best[3]) and resets best[0], best[1] for the next launch.  Every thread of every
    participating block must call this exactly once (lane values within a warp must agree).  ``keys``: an int64
    shared array of >= 32 (passed in: a shared array declared inside a device function would be one more global
    symbol per module, and two such modules cannot be linked into one kernel)."""
    if cuda.threadIdx.x % WARP == 0:
        keys[cuda.threadIdx.x // WARP] = key
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        m = keys[0]
        for i in range(1, cuda.blockDim.x // WARP):
            if keys[i] > m:
                m = keys[i]
        if m > _NO_KEY:
            cuda.atomic.max(best, 0, m)
        cuda.threadfence()  # our atomicMax is visible before our ticket
        ticket = cuda.atomic.add(best, 1, 1)
        if ticket == nblocks - 1:  # every other block has published: the max is final
            final = cuda.atomic.exch(best, 0, _NO_KEY)
            best[1] = 0
            best[2] = final
            best[3] = key_index(final)
    cuda.syncthreads()  # keys is free again


# --------------------------------------------------------------------------------------------------------------
# LM head + argmax
# --------------------------------------------------------------------------------------------------------------
@cuda.jit
def lm_head_argmax_kernel(h, norm_w, W, logits, n, k, eps, best):
    """logits[row] = rstd * (W[row] . (h * (1 + norm_w))); argmax of logits -> best (see the module docstring)."""
    lane = cuda.threadIdx.x % WARP
    nv = k // 8
    kf = float32(k)
    mine = _NO_KEY
    for row in range(cuda.grid(1) // WARP, n, cuda.gridsize(1) // WARP):
        acc, ss = dot_row_norm(W, row * nv, h, norm_w, nv, lane)
        acc = D.warp_sum(acc)
        ss = D.warp_sum(ss)
        y = acc * D.rsqrt(ss / kf + eps)
        if lane == 0:
            logits[row] = y
        key = argmax_key(y, row)
        if key > mine:
            mine = key
    publish_block_best(mine, best, cuda.gridDim.x, cuda.shared.array(32, int64))


def lm_head_argmax_rows(G: int):
    """body(h, norm_w, W, logits, n, k, eps, best, block, nblocks, xs, parts, scratch, keys): logits = W @ rms_norm(h)
    and their argmax into ``best``, on the matvec v7 skeleton over a work range (``matvec.matvec_rows``): the block
    stages x = h * (1 + w) and rstd in shared memory once, warps grid-stride over the rows with each row's loads
    issued before the previous row is reduced; G warps per row only for K > 1024.  The ``nblocks`` blocks meet
    in ``publish_block_best`` (``keys``: int64 shared, >= 32)."""

    def make():
        @cuda.jit(device=True)
        def lm_head_argmax_body(h, norm_w, W, logits, n, k, eps, best, block, nblocks, xs, parts, scratch, keys):
            lane, warp, slot, g, nv, v0, stride, step, row = rows_setup(k, G, block, nblocks)
            cur = load_batch(W, row, n, nv, v0, stride)
            r = D.rsqrt(stage_norm(h, norm_w, xs, nv, scratch) / float32(k) + eps)
            mine = _NO_KEY
            base = row - slot
            it = 0
            while base < n:
                acc = dot_batch(cur, xs, nv, v0, stride, row_limit(row, n, nv))
                cur = load_batch(W, row + step, n, nv, v0, stride)
                y = combine_parts(D.warp_sum(acc), parts, it, warp, slot, G) * r
                if g == 0 and row < n:
                    if lane == 0:
                        logits[row] = y
                    key = argmax_key(y, row)
                    if key > mine:
                        mine = key
                row += step
                base += step
                it += 1
            publish_block_best(mine, best, nblocks, keys)

        return lm_head_argmax_body

    return memo_kernel(("lm_head_argmax_rows", G), make)


def lm_head_argmax_kernel_v7(G: int):
    """``lm_head_argmax_rows`` over the whole grid."""

    def make():
        body = lm_head_argmax_rows(G)

        @cuda.jit(launch_bounds=V6_BOUNDS)
        def lm_head_argmax_v7(h, norm_w, W, logits, n, k, eps, best):
            xs = cuda.shared.array(0, float32)
            parts = cuda.shared.array(PARTS_LEN, float32)
            scratch = cuda.shared.array(WARP, float32)
            keys = cuda.shared.array(WARP, int64)
            body(h, norm_w, W, logits, n, k, eps, best, cuda.blockIdx.x, cuda.gridDim.x, xs, parts, scratch, keys)

        return lm_head_argmax_v7

    return memo_kernel(("lm_head_argmax", G), make)


lm_head_argmax_v7 = lm_head_argmax_kernel_v7(1)

_LAUNCHERS: dict = {}


def new_best(device=None) -> torch.Tensor:
    """A fresh int64[4] argmax/sample result buffer on ``device`` (default: where kernels run)."""
    device = device if device is not None else launch.kernel_device()
    t = torch.zeros(4, dtype=torch.int64, device=device)
    reset_best(t)
    return t


def reset_best(best) -> None:
    """Restore the between-launch state of a ``best`` buffer (torch tensor or kernel array): no key, no finished
    blocks, last token 0."""
    values = [INT64_MIN, 0, INT64_MIN, 0]
    if isinstance(best, torch.Tensor):
        best.copy_(torch.tensor(values, dtype=torch.int64))
    elif isinstance(best, np.ndarray):
        best[:4] = values
    else:  # a Numba device array
        launch.synchronize()
        best.copy_to_device(np.array(values, dtype=np.int64))


def token_view(best: torch.Tensor) -> torch.Tensor:
    """int32[1] view of the token in a ``best`` tensor (element 3's low half, little endian): feed it to the
    embedding lookup as its device token."""
    if best.dtype != torch.int64 or best.numel() < 4 or not best.is_contiguous():
        raise ValueError("token_view needs a contiguous int64[4] buffer from new_best()")
    return best.view(torch.int32)[6:7]


def read_token(best) -> int:
    """The token id the last completed launch wrote (host read: waits for the GPU)."""
    if isinstance(best, torch.Tensor):
        return int(best[3].item())
    if isinstance(best, np.ndarray):
        return int(best[3])
    launch.synchronize()  # kernels run on torch's stream; the copy below is on Numba's default stream
    return int(best.copy_to_host()[3])


def lm_head_argmax(h, norm_w, W, logits, n_vocab: int, k: int, eps: float, best, version: int = 7,
                   config=None) -> None:
    """logits[:n_vocab] = W @ rms_norm(h[:k], norm_w) and their argmax (ties: smallest index) into ``best``
    (an int64[4] kernel array from ``new_best``; ``read_token(best)`` or ``token_view``).  W [n_vocab, k] bf16
    as int32 words.  One launch on torch's current stream; no synchronization.  ``version`` 7 (default): on the
    matvec v7 skeleton; 5: the original.  ``config`` (v7): (warps per block, G or None) instead of the plan."""
    if version not in (5, 7):
        raise ValueError(f"lm_head_argmax: version {version}: choose 7 (the default) or 5 (the original)")
    key = ("lm_head", n_vocab, k, version, config)
    lau = _LAUNCHERS.get(key)
    if lau is None:
        check_k(k, 8, "lm_head_argmax", n_vocab)
        if n_vocab >= 1 << 31:
            raise ValueError(f"lm_head_argmax: vocabulary of {n_vocab} does not fit the 32-bit index")
        if version == 7:
            lau = RowsLauncher(lm_head_argmax_kernel_v7, n_vocab, k, x_shared_bytes(k, "lm_head_argmax"),
                               *(config or ()))
        else:
            grid, block = plan_rows(n_vocab)
            lau = Launcher(lm_head_argmax_kernel, grid, block)
        _LAUNCHERS[key] = lau
    if W.shape[0] < n_vocab * k // 2 or h.shape[0] < k or norm_w.shape[0] < k or logits.shape[0] < n_vocab \
            or best.shape[0] < 4:
        raise ValueError(f"lm_head_argmax [{n_vocab}, {k}]: W has {W.shape[0]} words, h {h.shape[0]}, norm_w "
                         f"{norm_w.shape[0]}, logits {logits.shape[0]}, best {best.shape[0]} (needs 4)")
    lau(h, norm_w, W, logits, n_vocab, k, np.float32(eps), best)


# --------------------------------------------------------------------------------------------------------------
# Gumbel-max sampling
# --------------------------------------------------------------------------------------------------------------
_M32 = np.uint64(0xFFFFFFFF)
_C1 = np.uint64(0x7FEB352D)
_C2 = np.uint64(0x846CA68B)
_S15 = np.uint64(15)
_S16 = np.uint64(16)
_S8 = np.uint64(8)
_GOLDEN = np.uint64(0x9E3779B9)
_SALT = np.uint64(0x632BE5AB)
_BIN = np.float32(1.0 / (1 << 24))
_HALF_BIN = np.float32(0.5 / (1 << 24))


@cuda.jit(device=True)
def mix32(x):
    """A 32-bit integer hash ("lowbias32": xor-shift-multiply, full avalanche) of x < 2^32, as uint64."""
    x = x ^ (x >> _S16)
    x = (x * _C1) & _M32
    x = x ^ (x >> _S15)
    x = (x * _C2) & _M32
    return x ^ (x >> _S16)


@cuda.jit(device=True)
def stream_key(seed_lo, seed_hi, step):
    """The per-draw part of the counter: hash of (seed, step)."""
    s = mix32(uint64(seed_lo) ^ _GOLDEN)
    s = mix32(s ^ uint64(seed_hi))
    return mix32(s ^ uint64(step))


@cuda.jit(device=True)
def uniform01(s, index):
    """u in (0, 1) from (stream key, index): 24 random bits, centred in their bin (never 0 or 1)."""
    r = mix32(mix32(s ^ uint64(index)) ^ _SALT)
    return float32(r >> _S8) * _BIN + _HALF_BIN


@cuda.jit(device=True)
def sample_gumbel_rows(logits, n, inv_t, seed_lo, seed_hi, step, best, block, nblocks, keys):
    """best <- argmax_i(logits[i] * inv_t + Gumbel noise(seed, step, i)), over a work range (``block`` of
    ``nblocks`` blocks grid-stride over i and meet in ``publish_block_best``; ``keys``: int64 shared, >= 32)."""
    s = stream_key(seed_lo, seed_hi, step)
    mine = _NO_KEY
    for i in range(block * cuda.blockDim.x + cuda.threadIdx.x, n, nblocks * cuda.blockDim.x):
        u = uniform01(s, i)
        g = -float32(math.log(-float32(math.log(u))))
        key = argmax_key(logits[i] * inv_t + g, i)
        if key > mine:
            mine = key
    publish_block_best(D.warp_max(mine), best, nblocks, keys)


@cuda.jit
def sample_gumbel_kernel(logits, n, inv_t, seed_lo, seed_hi, step, best):
    """``sample_gumbel_rows`` over the whole grid."""
    keys = cuda.shared.array(WARP, int64)
    sample_gumbel_rows(logits, n, inv_t, seed_lo, seed_hi, step, best, cuda.blockIdx.x, cuda.gridDim.x, keys)


SAMPLE_THREADS = 256


def _split_seed(seed: int) -> tuple[int, int]:
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    return seed & 0xFFFFFFFF, seed >> 32


def sample_gumbel(logits, n_vocab: int, temperature: float, seed: int, step: int, token_out) -> None:
    """Draw a token from softmax(logits[:n_vocab] / temperature) on the device into ``token_out`` (a ``best``
    buffer from ``new_best``: read it with ``read_token``, or feed ``token_view`` to the embedding lookup).

    ``seed`` (any int, 64 bits used) and ``step`` (32 bits used) select the random numbers: the same pair gives
    the same token.  Temperature must be > 0 (0 means greedy: use ``lm_head_argmax``'s argmax)."""
    if not temperature > 0:
        raise ValueError(f"sample_gumbel needs temperature > 0, got {temperature} (temperature 0 is greedy: use "
                         "the argmax that lm_head_argmax computes)")
    key = ("sample", n_vocab)
    lau = _LAUNCHERS.get(key)
    if lau is None:
        if n_vocab < 1 or n_vocab >= 1 << 31:
            raise ValueError(f"sample_gumbel: bad vocabulary size {n_vocab}")
        if SIMULATOR:  # a few small blocks: one Python thread per CUDA thread
            threads = min(128, WARP * cdiv(n_vocab, WARP))
            blocks = min(cdiv(n_vocab, threads), SIM_MAX_BLOCKS)
        else:
            threads = SAMPLE_THREADS
            blocks = min(cdiv(n_vocab, threads), 8 * sm_count())
        lau = _LAUNCHERS[key] = Launcher(sample_gumbel_kernel, blocks, threads)
    if logits.shape[0] < n_vocab or token_out.shape[0] < 4:
        raise ValueError(f"sample_gumbel: logits has {logits.shape[0]} elements (need {n_vocab}), token_out "
                         f"{token_out.shape[0]} (needs an int64[4] buffer from new_best)")
    lo, hi = _split_seed(seed)
    lau(logits, n_vocab, np.float32(1.0 / temperature), lo, hi, int(step) & 0xFFFFFFFF, token_out)


def gumbel_noise_host(seed: int, step: int, n: int) -> np.ndarray:
    """The kernel's Gumbel noise g_0..g_{n-1} for (seed, step), computed on the host with the same hash (for
    tests and for explaining a draw).  The logs here are float64 rounded to float32; the GPU's logf can differ
    in the last bit."""
    lo, hi = _split_seed(seed)
    m = 0xFFFFFFFF

    def mix(x):
        x = x ^ (x >> 16)
        x = (x * 0x7FEB352D) & m
        x = x ^ (x >> 15)
        x = (x * 0x846CA68B) & m
        return x ^ (x >> 16)

    s = mix(mix(mix(lo ^ 0x9E3779B9) ^ hi) ^ (int(step) & m))
    idx = np.arange(n, dtype=np.uint64)
    x = np.uint64(s) ^ idx
    for salt in (None, 0x632BE5AB):
        if salt is not None:
            x = x ^ np.uint64(salt)
        x = x ^ (x >> np.uint64(16))
        x = (x * np.uint64(0x7FEB352D)) & np.uint64(m)
        x = x ^ (x >> np.uint64(15))
        x = (x * np.uint64(0x846CA68B)) & np.uint64(m)
        x = x ^ (x >> np.uint64(16))
    u = (x >> np.uint64(8)).astype(np.float32) * np.float32(1.0 / (1 << 24)) + np.float32(0.5 / (1 << 24))
    inner = (-np.log(u.astype(np.float64))).astype(np.float32)
    return (-np.log(inner.astype(np.float64))).astype(np.float32)


_F = "float32[::1]"
_W = "int32[::1]"
PTX_SIGNATURES = {
    "lm_head_argmax_kernel": [f"void({_F}, {_F}, {_W}, {_F}, int64, int64, float32, int64[::1])"],
    "lm_head_argmax_v7": [f"void({_F}, {_F}, {_W}, {_F}, int64, int64, float32, int64[::1])"],
    "sample_gumbel_kernel": [f"void({_F}, int64, float32, int64, int64, int64, int64[::1])"],
}

PTX_CHECK_OPTIONS = {"lm_head_argmax_v7": {"launch_bounds": V6_BOUNDS}}

__all__ = ["lm_head_argmax", "sample_gumbel", "lm_head_argmax_rows", "sample_gumbel_rows", "publish_block_best", "new_best", "reset_best", "read_token", "token_view",
           "argmax_key", "key_to_index", "gumbel_noise_host", "INT64_MIN", "PTX_SIGNATURES"]
