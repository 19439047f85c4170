"""megakernel.testing.simulator: proof that the simulator fixes are real.

Each fix is shown twice where possible: the right answer with the layer installed, and the
wrong answer (or a missing feature) with Numba's stock simulator.  Every launch that could
hang runs under a timeout.
"""

from __future__ import annotations

import math
import sys
import threading
import time

import numpy as np
import pytest
from numba import config

if not config.ENABLE_CUDASIM:  # pragma: no cover - the suite runs with the simulator
    pytest.skip("simulator tests need NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

import megakernel  # noqa: F401  (installs the layer)
from megakernel.testing import simulator
from numba import cuda
from numba.cuda import float32, int32, libdevice

FULL = 0xFFFFFFFF


def run_with_timeout(fn, timeout=60.0):
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it does not finish."""
    box = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001
            box["exc"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    assert not t.is_alive(), f"launch did not finish within {timeout} s (deadlock?)"
    if "exc" in box:
        raise box["exc"]
    return box.get("value")


def test_installed_by_importing_megakernel():
    assert simulator.is_installed()
    simulator.install()  # idempotent
    assert simulator.is_installed()


# ----------------------------------------------------------------------------------------
# Grid barrier
# ----------------------------------------------------------------------------------------


@cuda.jit
def exchange_across_blocks(buf, out):
    g = cuda.grid(1)
    n = cuda.gridsize(1)
    buf[g] = g + 1
    cuda.cg.this_grid().sync()
    out[g] = buf[(g + cuda.blockDim.x) % n]  # written by the next block


def test_grid_sync_multi_block_right_with_layer_wrong_without():
    blocks, threads = 3, 32
    n = blocks * threads
    expected = (np.arange(n) + threads) % n + 1

    buf, out = np.zeros(n, np.int64), np.full(n, -1, np.int64)
    run_with_timeout(lambda: exchange_across_blocks[blocks, threads](buf, out))
    np.testing.assert_array_equal(out, expected)

    with simulator.stock_simulator():
        assert not simulator.is_installed()
        buf, out = np.zeros(n, np.int64), np.full(n, -1, np.int64)
        exchange_across_blocks[blocks, threads](buf, out)
    assert simulator.is_installed()
    # Blocks ran one after another: the blocks before the last read a part nobody had written.
    assert not np.array_equal(out, expected)
    assert (out[: (blocks - 1) * threads] == 0).all()


@cuda.jit
def many_grid_syncs(a, out, nsync):
    g = cuda.grid(1)
    n = cuda.gridsize(1)
    grid = cuda.cg.this_grid()
    acc = 0
    for it in range(nsync):
        a[g] = it * 1000 + g
        grid.sync()
        acc += a[(g + cuda.blockDim.x) % n]  # must be this iteration's value
        grid.sync()  # nobody overwrites a[] before everybody has read it
    out[g] = acc


def test_many_successive_grid_syncs():
    blocks, threads, nsync = 2, 64, 50
    n = blocks * threads
    a, out = np.zeros(n, np.int64), np.zeros(n, np.int64)
    t0 = time.perf_counter()
    run_with_timeout(lambda: many_grid_syncs[blocks, threads](a, out, nsync))
    elapsed = time.perf_counter() - t0
    src = (np.arange(n) + threads) % n
    expected = sum(it * 1000 + src for it in range(nsync))
    np.testing.assert_array_equal(out, expected)
    print(f"\n{blocks}x{threads} threads, {2 * nsync} grid syncs: {elapsed:.2f} s")


# ----------------------------------------------------------------------------------------
# Warp primitives
# ----------------------------------------------------------------------------------------


@cuda.jit
def shfl_down_reduce(x, out):
    i = cuda.grid(1)
    v = x[i]
    off = 16
    while off > 0:
        v += cuda.shfl_down_sync(FULL, v, off)
        off //= 2
    if cuda.threadIdx.x % 32 == 0:
        out[i // 32] = v


def test_warp_shuffle_reduction_works_with_layer_missing_without():
    x = np.arange(128, dtype=np.float32)
    out = np.full(4, np.nan, np.float32)
    run_with_timeout(lambda: shfl_down_reduce[2, 64](x, out))
    np.testing.assert_array_equal(out, x.reshape(4, 32).sum(1))

    with simulator.stock_simulator():
        with pytest.raises(AttributeError, match="shfl_down_sync"):
            shfl_down_reduce[2, 64](x, np.zeros(4, np.float32))


@cuda.jit
def shuffles(x, down, up, xor, idx, rot, big):
    i = cuda.grid(1)
    lane = cuda.threadIdx.x % 32
    v = x[i]
    down[i] = cuda.shfl_down_sync(FULL, v, 5)
    up[i] = cuda.shfl_up_sync(FULL, v, 3)
    xor[i] = cuda.shfl_xor_sync(FULL, v, 6)
    idx[i] = cuda.shfl_sync(FULL, v, 7)
    rot[i] = cuda.shfl_sync(FULL, v, (lane + 33) % 64)  # src lane taken mod 32
    big[i] = cuda.shfl_xor_sync(FULL, v, 32)  # out of the 32-lane range: own value


def test_shuffle_semantics():
    nb, nt = 2, 64  # 4 warps: each warp only sees its own lanes
    n = nb * nt
    x = (np.arange(n, dtype=np.int32) * 7 + 3).astype(np.int32)
    outs = [np.full(n, -1, np.int32) for _ in range(6)]
    run_with_timeout(lambda: shuffles[nb, nt](x, *outs))
    down, up, xor, idx, rot, big = outs
    lane = np.arange(n) % 32
    base = np.arange(n) - lane
    np.testing.assert_array_equal(down, np.where(lane + 5 < 32, x[np.minimum(base + lane + 5, n - 1)], x))
    np.testing.assert_array_equal(up, np.where(lane >= 3, x[base + lane - 3], x))
    np.testing.assert_array_equal(xor, x[base + (lane ^ 6)])
    np.testing.assert_array_equal(idx, x[base + 7])
    np.testing.assert_array_equal(rot, x[base + ((lane + 33) % 64) % 32])
    np.testing.assert_array_equal(big, x)


@cuda.jit
def votes(x, res):
    i = cuda.grid(1)
    lane = cuda.threadIdx.x % 32
    v = x[i]
    cuda.syncwarp()
    cuda.syncwarp(FULL)
    res[i, 0] = 1 if cuda.all_sync(FULL, v > 0) else 0
    res[i, 1] = 1 if cuda.any_sync(FULL, v > 5) else 0
    res[i, 2] = cuda.ballot_sync(FULL, v % 2 == 1)
    res[i, 3] = cuda.activemask()
    res[i, 4] = cuda.lanemask_lt()
    res[i, 5] = cuda.match_any_sync(FULL, v // 10)
    m, same = cuda.match_all_sync(FULL, lane // 32)
    res[i, 6] = m if same else -7
    res[i, 7] = 1 if cuda.eq_sync(FULL, v > 0) else 0


def test_vote_and_match():
    x = np.zeros(64, np.int64)
    x[:32] = np.arange(1, 33)  # warp 0: all positive, any > 5, odd lanes alternate
    x[32:] = 0  # warp 1: nothing positive
    x[40] = 7  # one odd value in warp 1
    res = np.zeros((64, 8), np.int64)
    run_with_timeout(lambda: votes[1, 64](x, res))
    lane = np.arange(64) % 32
    w0, w1 = res[:32], res[32:]
    assert (w0[:, 0] == 1).all() and (w1[:, 0] == 0).all()
    assert (w0[:, 1] == 1).all() and (w1[:, 1] == 1).all()
    odd0 = sum(1 << k for k in range(32) if x[k] % 2 == 1)
    assert (w0[:, 2] == np.int64(np.uint32(odd0).view(np.int32))).all()  # int32, as on the GPU
    assert (w1[:, 2] == 1 << 8).all()
    assert (res[:, 3] == FULL).all()
    np.testing.assert_array_equal(res[:, 4], (1 << lane) - 1)
    for i in range(64):
        w = i // 32
        same = [k for k in range(32) if x[32 * w + k] // 10 == x[i] // 10]
        assert res[i, 5] == np.int64(np.uint32(sum(1 << k for k in same)).view(np.int32))
    assert (res[:, 6] == -1).all()  # full mask as int32
    assert (w0[:, 7] == 1).all() and (w1[:, 7] == 0).all()


@cuda.jit
def partial_mask(x):
    cuda.shfl_sync(0x0000FFFF, x[cuda.grid(1)], 0)


@cuda.jit
def lane_exits_early(x):
    i = cuda.grid(1)
    if cuda.threadIdx.x == 3:
        return
    x[i] = cuda.shfl_xor_sync(FULL, x[i], 1)


@cuda.jit
def shuffle_uint32(x):
    x[cuda.grid(1)] = cuda.shfl_xor_sync(FULL, x[cuda.grid(1)], 1)


@cuda.jit
def divergent_warp_ops(x):
    i = cuda.grid(1)
    if cuda.threadIdx.x < 16:
        x[i] = cuda.shfl_xor_sync(FULL, x[i], 1)
    else:
        x[i] = cuda.shfl_down_sync(FULL, x[i], 1)


def test_unsupported_warp_use_fails_clearly():
    with pytest.raises(NotImplementedError, match="mask 0x0000ffff"):
        run_with_timeout(lambda: partial_mask[1, 32](np.zeros(32, np.int32)))
    with pytest.raises(RuntimeError, match="exited"):
        run_with_timeout(lambda: lane_exits_early[1, 32](np.zeros(32, np.int32)))
    with pytest.raises(TypeError, match="uint32"):
        run_with_timeout(lambda: shuffle_uint32[1, 32](np.zeros(32, np.uint32)))
    with pytest.raises(RuntimeError, match="different warp primitives"):
        run_with_timeout(lambda: divergent_warp_ops[1, 32](np.zeros(32, np.int32)))


# ----------------------------------------------------------------------------------------
# Failures: no deadlock, clear messages
# ----------------------------------------------------------------------------------------


@cuda.jit
def one_thread_raises(a):
    g = cuda.grid(1)
    grid = cuda.cg.this_grid()
    if cuda.blockIdx.x == 1 and cuda.threadIdx.x == 5:
        raise ValueError("bad value")  # everybody else waits below
    a[g] = 1
    grid.sync()
    cuda.syncthreads()
    a[g] = cuda.shfl_xor_sync(FULL, a[g], 1)


def test_exception_in_one_thread_propagates_without_deadlock():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"threadIdx=\(5, 0, 0\) blockIdx=\(1, 0, 0\).*bad value"):
        run_with_timeout(lambda: one_thread_raises[3, 64](np.zeros(192, np.int32)), timeout=30)
    assert time.perf_counter() - t0 < 10
    # the simulator is usable again afterwards
    out = np.zeros(96, np.int64)
    run_with_timeout(lambda: exchange_across_blocks[3, 32](np.zeros(96, np.int64), out))
    assert (out > 0).all()


@cuda.jit(device=True)
def raises_in_device_function(v):
    if v == 7:
        raise ZeroDivisionError("seven")
    return v


@cuda.jit
def calls_device_function(a):
    i = cuda.grid(1)
    a[i] = raises_in_device_function(i)


def test_exception_in_device_function():
    with pytest.raises(ZeroDivisionError, match="seven"):
        run_with_timeout(lambda: calls_device_function[2, 32](np.zeros(64, np.int64)))


@cuda.jit
def divergent_syncthreads(a):
    if cuda.threadIdx.x < 16:
        cuda.syncthreads()
    else:
        cuda.shfl_xor_sync(FULL, a[0], 1)


@cuda.jit
def block_returns_before_grid_sync(a):
    if cuda.blockIdx.x == 0:
        return
    cuda.cg.this_grid().sync()
    a[cuda.grid(1)] = 1


def test_deadlocks_are_reported():
    with pytest.raises(simulator.SimulatorDeadlock, match="syncthreads of block"):
        run_with_timeout(lambda: divergent_syncthreads[1, 32](np.zeros(32, np.int32)), timeout=30)
    with pytest.raises(simulator.SimulatorDeadlock, match=r"block \(0, 0, 0\) finished"):
        run_with_timeout(
            lambda: block_returns_before_grid_sync[2, 32](np.zeros(64, np.int32)), timeout=30
        )


@cuda.jit
def noop(a):
    pass


def test_launch_limits():
    with pytest.raises(simulator.SimulatorLimitError, match="pick a tiny config"):
        noop[64, 256](np.zeros(1))
    with pytest.raises(simulator.SimulatorLimitError, match="1024"):
        noop[1, 2048](np.zeros(1))
    with pytest.raises(simulator.SimulatorLimitError, match="no thread"):
        noop[0, 32](np.zeros(1))
    blocks = noop.overloads["void(float64[::1])"].max_cooperative_grid_blocks(128)
    assert blocks == simulator.MAX_SIM_THREADS // 128


@cuda.jit
def flag_barrier(flag, data, out, nrounds):
    """A hand-made inter-block barrier (atomic counter + spin-wait), as megakernels use."""
    t = cuda.threadIdx.x
    g = cuda.grid(1)
    for r in range(nrounds):
        data[g] = r * 1000 + g
        cuda.syncthreads()
        if t == 0:
            cuda.threadfence()
            cuda.atomic.add(flag, 0, 1)
            while cuda.atomic.add(flag, 0, 0) < (r + 1) * cuda.gridDim.x:
                pass
        cuda.syncthreads()
        out[g] = data[(g + cuda.blockDim.x) % cuda.gridsize(1)]
        cuda.syncthreads()
        if t == 0:
            cuda.threadfence()  # orders this block's reads of data before the next round's writes
            cuda.atomic.add(flag, 1, 1)
            while cuda.atomic.add(flag, 1, 0) < (r + 1) * cuda.gridDim.x:
                pass
        cuda.syncthreads()


def test_spin_wait_between_blocks():
    # With blocks run one after another (stock simulator) block 0 would spin forever.
    nb, nt = 3, 32
    flag, data, out = np.zeros(2, np.int64), np.zeros(nb * nt, np.int64), np.zeros(nb * nt, np.int64)
    run_with_timeout(lambda: flag_barrier[nb, nt](flag, data, out, 5))
    g = np.arange(nb * nt)
    np.testing.assert_array_equal(out, 4000 + (g + nt) % (nb * nt))


@cuda.jit
def spin_forever(flag):
    while flag[0] == 0:
        pass


def test_endless_loop_hits_launch_timeout(monkeypatch):
    monkeypatch.setattr(simulator, "LAUNCH_TIMEOUT", 1.0)
    monkeypatch.setattr(simulator, "ABORT_GRACE", 0.5)
    with pytest.raises(simulator.SimulatorDeadlock, match="still running after"):
        run_with_timeout(lambda: spin_forever[1, 4](np.zeros(1, np.int32)), timeout=60)
    # the spinning threads were interrupted, not left running
    deadline = time.monotonic() + 10
    while any(t.name.startswith("cudasim") for t in threading.enumerate()):
        assert time.monotonic() < deadline, "simulated threads still alive"
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------
# What the stock simulator already did must still work
# ----------------------------------------------------------------------------------------


@cuda.jit
def atomics_across_blocks(counter, hist, mx):
    g = cuda.grid(1)
    for _ in range(3):
        cuda.atomic.add(counter, 0, 1)
    cuda.atomic.add(hist, g % 4, 1)
    cuda.atomic.max(mx, 0, g)


def test_atomics_across_concurrent_blocks():
    counter, hist, mx = np.zeros(1, np.int64), np.zeros(4, np.int64), np.zeros(1, np.int64)
    run_with_timeout(lambda: atomics_across_blocks[4, 64](counter, hist, mx))
    assert counter[0] == 3 * 256
    np.testing.assert_array_equal(hist, [64] * 4)
    assert mx[0] == 255


@cuda.jit
def shared_reverse(x, out, ids):
    s = cuda.shared.array(64, float32)
    who = cuda.shared.array(1, int32)
    t = cuda.threadIdx.x
    g = cuda.grid(1)
    if t == 0:
        who[0] = cuda.blockIdx.x
    s[t] = x[g]
    cuda.syncthreads()
    out[g] = s[cuda.blockDim.x - 1 - t]
    cuda.cg.this_grid().sync()  # all blocks have written their shared memory by now
    ids[g] = who[0]  # still this block's: shared memory is per block


def test_shared_memory_is_per_block_and_syncthreads_works():
    x = np.arange(256, dtype=np.float32)
    out, ids = np.full(256, np.nan, np.float32), np.full(256, -1, np.int32)
    run_with_timeout(lambda: shared_reverse[4, 64](x, out, ids))
    np.testing.assert_array_equal(out, x.reshape(4, 64)[:, ::-1].reshape(-1))
    np.testing.assert_array_equal(ids, np.repeat(np.arange(4), 64))


@cuda.jit
def dynamic_shared(out):
    s = cuda.shared.array(0, float32)
    t = cuda.threadIdx.x
    s[t] = cuda.blockIdx.x * 100 + t
    cuda.syncthreads()
    out[cuda.grid(1)] = s[(t + 1) % cuda.blockDim.x]


def test_dynamic_shared_memory_per_block():
    out = np.full(64, np.nan, np.float32)
    run_with_timeout(lambda: dynamic_shared[2, 32, 0, 32 * 4](out))
    t = np.arange(32)
    np.testing.assert_array_equal(out, np.concatenate([(t + 1) % 32, 100 + (t + 1) % 32]))


@cuda.jit
def uninitialised_reads(out, iout):
    s = cuda.shared.array(8, float32)
    loc = cuda.local.array(4, int32)
    out[cuda.threadIdx.x] = s[cuda.threadIdx.x]
    iout[cuda.threadIdx.x] = loc[cuda.threadIdx.x % 4]


def test_uninitialised_shared_and_local_memory_is_poisoned():
    out, iout = np.zeros(8, np.float32), np.zeros(8, np.int32)
    run_with_timeout(lambda: uninitialised_reads[1, 8](out, iout))
    assert np.isnan(out).all()
    assert (iout == -1).all()


@cuda.jit(device=True)
def stage_through_shared(value, write):
    s = cuda.shared.array(32, float32)
    t = cuda.threadIdx.x
    if write:
        s[t] = value
    cuda.syncthreads()
    res = s[t]
    cuda.syncthreads()
    return res


@cuda.jit
def two_calls_one_forgets_to_write(out):
    t = cuda.threadIdx.x
    out[0, t] = stage_through_shared(float32(1), True)
    out[1, t] = stage_through_shared(float32(2), False)  # on the GPU: whatever the first call left


def test_shared_arrays_are_fresh_poison_at_every_call():
    out = np.zeros((2, 32), np.float32)
    run_with_timeout(lambda: two_calls_one_forgets_to_write[1, 32](out))
    assert (out[0] == 1).all()
    assert np.isnan(out[1]).all()  # the read of memory this call never wrote shows up
    with simulator.stock_simulator():
        out = np.zeros((2, 32), np.float32)
        two_calls_one_forgets_to_write[1, 32](out)
    assert (out[1] == 1).all()  # one array per source line: the first call's values hid the bug


@cuda.jit
def block_votes(x, res):
    t = cuda.threadIdx.x
    b = cuda.blockIdx.x
    count = cuda.syncthreads_count(x[cuda.grid(1)] > 0)
    every = cuda.syncthreads_and(x[cuda.grid(1)] > 0)
    some = cuda.syncthreads_or(x[cuda.grid(1)] > 1)
    if t == 39:  # one writer per element (every thread writing the same value is still a race)
        res[b, 0] = count
        res[b, 1] = every
        res[b, 2] = some
    if t >= 40:
        return  # exited threads no longer count
    count = cuda.syncthreads_count(1)
    if t == 0:
        res[b, 3] = count


def test_syncthreads_count_and_or():
    x = np.ones(128, np.int32)
    x[5] = 0
    x[64 + 7] = 2
    res = np.zeros((2, 4), np.int64)
    run_with_timeout(lambda: block_votes[2, 64](x, res))
    np.testing.assert_array_equal(res, [[63, 0, 0, 40], [64, 1, 1, 40]])


# ----------------------------------------------------------------------------------------
# libdevice, jit options, torch arguments, speed knobs
# ----------------------------------------------------------------------------------------


@cuda.jit
def libdevice_calls(x, out):
    i = cuda.grid(1)
    v = x[i]
    out[i, 0] = libdevice.expf(v)
    out[i, 1] = libdevice.fast_expf(v)
    out[i, 2] = libdevice.logf(v)
    out[i, 3] = libdevice.rsqrtf(v)
    out[i, 4] = libdevice.log1pf(v)
    out[i, 5] = libdevice.tanhf(v)
    out[i, 6] = libdevice.fast_fdividef(float32(1), v)
    out[i, 7] = libdevice.int_as_float(libdevice.float_as_int(v))


def test_libdevice_fallbacks():
    x = np.array([0.5, 1.0, 2.0, 3.5], np.float32)
    out = np.full((4, 8), np.nan, np.float32)
    run_with_timeout(lambda: libdevice_calls[1, 4](x, out))
    ref = np.stack(
        [np.exp(x), np.exp(x), np.log(x), 1 / np.sqrt(x), np.log1p(x), np.tanh(x), 1 / x, x], 1
    )
    np.testing.assert_allclose(out, ref, rtol=2e-7)
    with simulator.stock_simulator():
        assert libdevice.expf(np.float32(1)) is None  # what kernels got before


def test_gpu_only_jit_options_are_accepted():
    @cuda.jit(lineinfo=True, launch_bounds=(64, 1))
    def k(a):
        a[cuda.grid(1)] = 2

    a = np.zeros(64, np.int32)
    k[1, 64](a)
    assert (a == 2).all()


def test_cpu_torch_tensors_are_written_in_place():
    torch = pytest.importorskip("torch")
    t = torch.zeros(64, dtype=torch.float32)

    @cuda.jit
    def fill(a):
        a[cuda.grid(1)] = cuda.grid(1) * float32(0.5)

    fill[2, 32](t)
    assert torch.equal(t, torch.arange(64, dtype=torch.float32) * 0.5)


def test_switch_interval_restored_after_launch():
    before = sys.getswitchinterval()
    noop[1, 32](np.zeros(1))
    assert sys.getswitchinterval() == before


def test_math_in_kernels_unchanged():
    @cuda.jit
    def k(x, out):
        i = cuda.grid(1)
        out[i] = math.exp(x[i]) + math.sqrt(x[i])

    x = np.linspace(0.1, 2, 32).astype(np.float32)
    out = np.zeros_like(x)
    k[1, 32](x, out)
    np.testing.assert_allclose(out, np.exp(x) + np.sqrt(x), rtol=1e-6)


def test_supported_numba_cuda_versions(monkeypatch):
    import importlib.metadata
    import re
    import tomllib

    from tests.conftest import ROOT

    for good in ("0.30.4", "0.30.12", "0.30.5rc1"):
        simulator.check_numba_cuda_version(good)
    for bad in ("0.31.0", "0.30.3", "1.0.0"):
        with pytest.raises(RuntimeError, match=re.escape(f"supports numba-cuda >=0.30.4,<0.31 (it patches "
                                                         f"private classes of Numba's CUDA simulator), found "
                                                         f"numba-cuda {bad}")):
            simulator.check_numba_cuda_version(bad)
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"numba-cuda[cu13]{simulator.SUPPORTED_NUMBA_CUDA}" in deps  # one range, in both places
    with simulator.stock_simulator():
        monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.32.1")
        with pytest.raises(RuntimeError, match="found numba-cuda 0.32.1"):
            simulator.install()
        monkeypatch.undo()
    assert simulator.is_installed()


# ---- the mbarriers of megakernel.persistent.tma: a wait blocks until the copy that completes its phase ------------
@cuda.jit
def mbarrier_hand_off(src, out, never):
    """Thread 0 of warp 1 copies src into shared memory (expecting its bytes on mbarrier 0); warp 0 waits on the
    mbarrier, then reads. With ``never``, the copy is never issued: every thread then waits forever."""
    from megakernel.persistent import tma

    buf = cuda.shared.array(8, int32)
    bars = cuda.shared.array(1, np.int64)
    if cuda.threadIdx.x == 0:
        tma.mbar_init(bars, 0, 1)
    cuda.syncthreads()
    if cuda.threadIdx.x == 32 and never[0] == 0:
        for _ in range(200):  # let the waiters start spinning first
            time.sleep(0)
        tma.mbar_expect(bars, 0, 32)
        tma.bulk_copy(buf, 0, src, 0, 8, bars, 0)
    if cuda.threadIdx.x < 32:
        tma.mbar_wait(bars, 0, 0)
        out[cuda.threadIdx.x] = buf[cuda.threadIdx.x % 8]


def test_an_mbarrier_wait_blocks_until_its_copy_and_a_copy_never_issued_is_a_deadlock():
    """The simulator's mbarrier model (``tma``): the waiters see the copied words (the copy's completion releases
    them to the waiters, so the race detector is satisfied), and a phase no copy completes is reported as a
    deadlock by the watchdog within seconds (not at the launch timeout)."""
    src = np.arange(1, 9, dtype=np.int32)
    out = np.zeros(32, np.int32)
    run_with_timeout(lambda: mbarrier_hand_off[1, 64](src, out, np.zeros(1, np.int32)), timeout=60)
    assert (out == np.tile(src, 4)).all()
    start = time.monotonic()
    with pytest.raises(simulator.SimulatorDeadlock, match="mbarrier"):
        run_with_timeout(lambda: mbarrier_hand_off[1, 64](src, out, np.ones(1, np.int32)), timeout=60)
    assert time.monotonic() - start < 30
