"""megakernel.testing.races: the simulator's race detector, and the schedules that vary thread order.

For each kind of race a small kernel has a runtime flag that removes its barrier (or fence): with the flag the
kernel is race-free and must pass, without it the detector must raise ``SimulatorRace``, under every schedule,
every time (it checks happens-before, not the order the threads happened to run in). The last tests show that
the race-free patterns a megakernel uses (counter barriers, the last-block ticket, exited threads, atomics,
shared memory reused through views) raise nothing.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from numba import config

if not config.ENABLE_CUDASIM:  # pragma: no cover - the suite runs with the simulator
    pytest.skip("simulator tests need NUMBA_ENABLE_CUDASIM=1", allow_module_level=True)

import megakernel  # noqa: F401  (installs the layer)
from megakernel import device as D
from megakernel.testing import races, schedules, simulator
from megakernel.testing.races import SimulatorRace
from numba import cuda
from numba.cuda import float32, int32

SCHEDULES = ["forward", "reverse", "random:1", "random:2", "random:3"]
WARP = 32


@pytest.fixture(params=SCHEDULES)
def schedule(request):
    with schedules.use(request.param) as s:
        yield s


# ----------------------------------------------------------------------------------------------------------------
# Read-after-write across threads: thread t reads what thread t-1 wrote
# ----------------------------------------------------------------------------------------------------------------


@cuda.jit
def neighbour_in_shared(x, out, barrier):
    s = cuda.shared.array(64, float32)
    t = cuda.threadIdx.x
    s[t] = x[cuda.grid(1)]
    if barrier:
        cuda.syncthreads()
    out[cuda.grid(1)] = s[(t + cuda.blockDim.x - 1) % cuda.blockDim.x]


def test_read_after_write_across_threads(schedule):
    x = np.arange(128, dtype=np.float32)
    out = np.zeros(128, np.float32)
    neighbour_in_shared[2, 64](x, out, True)
    np.testing.assert_array_equal(out, np.roll(x.reshape(2, 64), 1, axis=1).reshape(-1))
    with pytest.raises(SimulatorRace, match=r"race in kernel neighbour_in_shared on shared array s\[\d+\] declared "
                                            r"at test_simulator_races\.py:\d+: thread blockIdx=\(\d, 0, 0\) "
                                            r"threadIdx=\(\d+, 0, 0\) (read|write)s it at test_simulator_races"):
        neighbour_in_shared[2, 64](x, out, False)


# ----------------------------------------------------------------------------------------------------------------
# Read-after-write across blocks: block b reads what block b-1 wrote (global memory)
# ----------------------------------------------------------------------------------------------------------------


@cuda.jit
def neighbour_block(buf, out, barrier):
    g = cuda.grid(1)
    n = cuda.gridsize(1)
    buf[g] = g + 1
    if barrier:
        cuda.cg.this_grid().sync()
    out[g] = buf[(g + n - cuda.blockDim.x) % n]


def test_read_after_write_across_blocks(schedule):
    n = 3 * 32
    buf, out = np.zeros(n, np.int64), np.zeros(n, np.int64)
    neighbour_block[3, 32](buf, out, True)
    np.testing.assert_array_equal(out, (np.arange(n) - 32) % n + 1)
    with pytest.raises(SimulatorRace, match=r"on global array buf\[\d+\]: thread blockIdx=\(\d, 0, 0\)"):
        neighbour_block[3, 32](buf, out, False)


# ----------------------------------------------------------------------------------------------------------------
# Write-after-read on a reused buffer: two block sums through one scratch array, the first one without the barrier
# that ends device.block_sum (the planted bug)
# ----------------------------------------------------------------------------------------------------------------


@cuda.jit(device=True)
def block_sum_with_optional_tail(x, scratch, trailing_barrier):
    lane = cuda.threadIdx.x % WARP
    warp = cuda.threadIdx.x // WARP
    s = D.warp_sum(x)
    if lane == 0:
        scratch[warp] = s
    cuda.syncthreads()
    v = scratch[lane] if lane < cuda.blockDim.x // WARP else float32(0)
    v = D.warp_sum(v)
    if trailing_barrier:
        cuda.syncthreads()  # nobody overwrites scratch before every warp has read it
    return v


@cuda.jit
def two_block_sums(x, out, trailing_barrier):
    scratch = cuda.shared.array(32, float32)
    v = x[cuda.grid(1)]
    a = block_sum_with_optional_tail(v, scratch, trailing_barrier)
    b = block_sum_with_optional_tail(v * float32(2), scratch, trailing_barrier)
    if cuda.threadIdx.x == 0:
        out[cuda.blockIdx.x, 0] = a
        out[cuda.blockIdx.x, 1] = b


def test_write_after_read_on_a_reused_buffer(schedule):
    x = np.arange(256, dtype=np.float32) / 7
    out = np.zeros((2, 2), np.float32)
    two_block_sums[2, 128](x, out, True)
    sums = x.reshape(2, 128).sum(1)
    np.testing.assert_allclose(out, np.stack([sums, 2 * sums], 1), rtol=1e-6)
    with pytest.raises(SimulatorRace, match=r"(write-after-read|read-after-write) race .* shared array scratch"):
        two_block_sums[2, 128](x, out, False)


# ----------------------------------------------------------------------------------------------------------------
# A missing barrier before a last-thread reduction
# ----------------------------------------------------------------------------------------------------------------


@cuda.jit
def last_thread_sums(x, out, barrier):
    partial = cuda.shared.array(64, float32)
    t = cuda.threadIdx.x
    partial[t] = x[cuda.grid(1)] * float32(2)
    if barrier:
        cuda.syncthreads()
    if t == cuda.blockDim.x - 1:
        acc = float32(0)
        for i in range(cuda.blockDim.x):
            acc += partial[i]
        out[cuda.blockIdx.x] = acc


def test_missing_barrier_before_a_last_thread_reduction(schedule):
    x = np.arange(128, dtype=np.float32)
    out = np.zeros(2, np.float32)
    last_thread_sums[2, 64](x, out, True)
    np.testing.assert_array_equal(out, 2 * x.reshape(2, 64).sum(1))
    with pytest.raises(SimulatorRace, match=r"race in kernel last_thread_sums on shared array partial\["):
        last_thread_sums[2, 64](x, out, False)


# ----------------------------------------------------------------------------------------------------------------
# A missing threadfence before an atomic: the "last block" ticket, and a hand-written grid barrier
# ----------------------------------------------------------------------------------------------------------------


@cuda.jit
def last_block_total(x, partials, ticket, out, fence):
    """Each block publishes its sum; the block that draws the last ticket adds the partial sums (the pattern of
    kernels/lm_head.py and kernels/deltanet.py)."""
    scratch = cuda.shared.array(32, float32)
    is_last = cuda.shared.array(1, int32)
    s = D.block_sum(x[cuda.grid(1)], scratch)
    if cuda.threadIdx.x == 0:
        partials[cuda.blockIdx.x] = s
        if fence:
            cuda.threadfence()  # the partial is visible before the ticket
        is_last[0] = 1 if cuda.atomic.add(ticket, 0, 1) == cuda.gridDim.x - 1 else 0
    cuda.syncthreads()
    if is_last[0] == 1 and cuda.threadIdx.x == 0:
        total = float32(0)
        for b in range(cuda.gridDim.x):
            total += partials[b]
        out[0] = total


def test_missing_fence_before_the_last_block_ticket(schedule):
    x = np.arange(4 * 64, dtype=np.float32)
    partials, out = np.zeros(4, np.float32), np.zeros(1, np.float32)
    last_block_total[4, 64](x, partials, np.zeros(1, np.int32), out, True)
    assert out[0] == x.sum()
    with pytest.raises(SimulatorRace, match=r"read-after-write race .* on global array partials\[\d\]"):
        last_block_total[4, 64](x, partials, np.zeros(1, np.int32), out, False)


@cuda.jit
def counter_barrier_exchange(buf, out, counter, fence):
    """A grid barrier by hand (the megakernel's dependency counters): thread 0 of each block fences, arrives on a
    counter and spins on it; then the block reads what the next block wrote."""
    g = cuda.grid(1)
    buf[g] = g + 1
    cuda.syncthreads()
    if cuda.threadIdx.x == 0:
        if fence:
            cuda.threadfence()
        cuda.atomic.add(counter, 0, 1)
        while cuda.atomic.add(counter, 0, 0) < cuda.gridDim.x:
            pass
        cuda.threadfence()
    cuda.syncthreads()
    out[g] = buf[(g + cuda.blockDim.x) % cuda.gridsize(1)]


def test_missing_fence_before_a_counter_barrier(schedule):
    n = 3 * 32
    buf, out = np.zeros(n, np.int64), np.zeros(n, np.int64)
    counter_barrier_exchange[3, 32](buf, out, np.zeros(1, np.int32), True)
    np.testing.assert_array_equal(out, (np.arange(n) + 32) % n + 1)
    with pytest.raises(SimulatorRace, match=r"read-after-write race .* on global array buf\["):
        counter_barrier_exchange[3, 32](buf, out, np.zeros(1, np.int32), False)


# ----------------------------------------------------------------------------------------------------------------
# Warps: a shuffle does not order memory, syncwarp does
# ----------------------------------------------------------------------------------------------------------------


@cuda.jit
def lanes_through_shared(x, out, sync):
    s = cuda.shared.array(32, float32)
    lane = cuda.threadIdx.x
    s[lane] = x[lane]
    total = D.warp_sum(x[lane])  # every lane meets here, but the compiler may move memory accesses across it
    if sync:
        cuda.syncwarp()
    out[lane] = s[lane ^ 1] + total


def test_shuffles_do_not_order_memory_syncwarp_does(schedule):
    x = np.arange(32, dtype=np.float32)
    out = np.zeros(32, np.float32)
    lanes_through_shared[1, 32](x, out, True)
    np.testing.assert_array_equal(out, x[np.arange(32) ^ 1] + x.sum())
    with pytest.raises(SimulatorRace, match="shared array s"):
        lanes_through_shared[1, 32](x, out, False)


# ----------------------------------------------------------------------------------------------------------------
# Shared memory reused across phases through views of the dynamic buffer
# ----------------------------------------------------------------------------------------------------------------


@cuda.jit
def phases_in_dynamic_shared(x, out, barrier):
    t = cuda.threadIdx.x
    n = cuda.blockDim.x
    floats = cuda.shared.array(0, float32)
    floats[t] = x[cuda.grid(1)]
    cuda.syncthreads()
    a = floats[(t + 1) % n]
    if barrier:
        cuda.syncthreads()  # phase 1's reads are done before phase 2 reuses the bytes
    ints = cuda.shared.array(0, int32)
    ints[t] = t * 3
    cuda.syncthreads()
    out[cuda.grid(1)] = a + ints[(t + 2) % n]


def test_dynamic_shared_memory_reused_across_phases(schedule):
    x = np.arange(64, dtype=np.float32)
    out = np.zeros(64, np.float32)
    phases_in_dynamic_shared[2, 32, 0, 32 * 4](x, out, True)
    t = np.arange(32)
    np.testing.assert_array_equal(out, (x.reshape(2, 32)[:, (t + 1) % 32] + 3 * ((t + 2) % 32)).reshape(-1))
    with pytest.raises(SimulatorRace, match=r"(write-after-read|read-after-write) race .* dynamic shared memory\[\d+\] "
                                            r"\(as (float32|int32)\)"):
        phases_in_dynamic_shared[2, 32, 0, 32 * 4](x, out, False)


# ----------------------------------------------------------------------------------------------------------------
# Race-free patterns raise nothing
# ----------------------------------------------------------------------------------------------------------------


@cuda.jit
def exited_writers(out):
    s = cuda.shared.array(64, int32)
    t = cuda.threadIdx.x
    s[t] = t
    if t >= 32:
        return  # these threads' writes are still ordered before the barrier below
    cuda.syncthreads()
    out[t] = s[t + 32]


@cuda.jit
def histogram(x, hist, total):
    v = x[cuda.grid(1)]
    cuda.atomic.add(hist, v % 4, 1)
    cuda.atomic.add(total, 0, v)


@cuda.jit
def aliased_arguments(a, shifted, out):
    """shifted is a[1:]: block 0 writes a, block 1 reads it through the other argument after a grid barrier."""
    g = cuda.grid(1)
    if cuda.blockIdx.x == 0:
        a[g + 1] = g * 10
    cuda.cg.this_grid().sync()
    if cuda.blockIdx.x == 1:
        out[g - 32] = shifted[g - 32]


def test_race_free_patterns_pass(schedule):
    out = np.zeros(32, np.int32)
    exited_writers[1, 64](out)
    np.testing.assert_array_equal(out, np.arange(32) + 32)

    x = np.arange(128, dtype=np.int64)
    hist, total = np.zeros(4, np.int64), np.zeros(1, np.int64)
    histogram[4, 32](x, hist, total)
    np.testing.assert_array_equal(hist, [32] * 4)
    assert total[0] == x.sum()

    a, out = np.zeros(33, np.int64), np.zeros(32, np.int64)
    aliased_arguments[2, 32](a, a[1:], out)
    np.testing.assert_array_equal(out, np.arange(32) * 10)


@cuda.jit
def aliased_race(a, shifted):
    g = cuda.grid(1)
    if cuda.blockIdx.x == 0:
        a[g + 1] = g
    else:
        shifted[g - 32] += 1


def test_arguments_that_overlap_share_one_shadow():
    a = np.zeros(33, np.int64)
    with pytest.raises(SimulatorRace, match=r"global array a\[\d+\] \(the same memory as shifted\)"):
        aliased_race[2, 32](a, a[1:])


# ----------------------------------------------------------------------------------------------------------------
# Modes
# ----------------------------------------------------------------------------------------------------------------


def test_modes_choose_what_is_checked():
    x = np.arange(128, dtype=np.float32)
    buf, out = np.zeros(96, np.int64), np.zeros(96, np.int64)
    with races.detection("shared"):
        with pytest.raises(SimulatorRace):
            neighbour_in_shared[2, 64](x, np.zeros(128, np.float32), False)
        neighbour_block[3, 32](buf, out, False)  # global memory is not checked
    with races.detection("off"):
        neighbour_in_shared[2, 64](x, np.zeros(128, np.float32), False)
    assert races.current_mode() == (os.environ.get(races.ENV_VAR) or races.DEFAULT_MODE)
    with pytest.raises(ValueError, match="detection='some'"):
        with races.detection("some"):
            pass


def test_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv(races.ENV_VAR, "off")
    assert races.current_mode() == "off"
    monkeypatch.setenv(races.ENV_VAR, "everything")
    with pytest.raises(ValueError, match=f"{races.ENV_VAR}='everything': expected one of off, shared, all"):
        races.current_mode()


# ----------------------------------------------------------------------------------------------------------------
# Schedules
# ----------------------------------------------------------------------------------------------------------------


def test_start_orders():
    assert schedules.parse("forward").start_order(2, 3) == [0, 1, 2, 3, 4, 5]
    assert schedules.parse("reverse").start_order(2, 3) == [5, 4, 3, 2, 1, 0]
    order = schedules.parse("random:5").start_order(4, 32)
    assert sorted(order) == list(range(128))
    assert order == schedules.parse("random:5").start_order(4, 32)  # a seed replays
    assert order != schedules.parse("random:6").start_order(4, 32)
    blocks = [order[i] // 32 for i in range(0, 128, 32)]
    assert all(order[i] // 32 == blocks[i // 32] for i in range(128)), "one block after another"
    assert sorted(blocks) != blocks or order[:32] != sorted(order[:32])


def test_schedule_parsing(monkeypatch):
    assert str(schedules.parse("random:42")) == "random:42"
    assert schedules.parse("random").seed is not None  # a fresh seed, printed with any failure
    for bad in ("sideways", "random:x", "forward:3"):
        with pytest.raises(ValueError, match=f"{schedules.ENV_VAR}="):
            schedules.parse(bad)
    monkeypatch.setenv(schedules.ENV_VAR, "reverse")
    assert str(schedules.for_test("any test")) == "reverse"  # the environment replays
    monkeypatch.delenv(schedules.ENV_VAR)
    kinds = {schedules.for_test(f"tests/test_x.py::test_{i}").kind for i in range(30)}
    assert kinds == {"forward", "reverse", "random"}
    assert schedules.for_test("a") == schedules.for_test("a")


def test_reverse_schedule_exposes_a_missing_grid_barrier_without_the_detector():
    """The issue's example: block b reads what block b-1 wrote, with no barrier. Started in block order, block
    b-1 has always written first; started in reverse, the last block reads before the others exist."""
    n = 3 * 32
    with races.detection("off"), schedules.use("reverse"):
        buf, out = np.zeros(n, np.int64), np.zeros(n, np.int64)
        neighbour_block[3, 32](buf, out, False)
    assert (out[-32:] == 0).any()  # read before block 1 wrote


@cuda.jit
def fails_in_block_1(a):
    if cuda.blockIdx.x == 1 and cuda.threadIdx.x == 3:
        raise ValueError("bad")
    a[cuda.grid(1)] = 1


def test_failure_names_the_schedule():
    with schedules.use("random:77"):
        with pytest.raises(ValueError, match=rf"bad \[schedule random:77: replay with {schedules.ENV_VAR}="
                                             r"random:77\]"):
            fails_in_block_1[2, 32](np.zeros(64, np.int32))


def test_a_schedule_from_the_environment_is_read_at_each_launch(monkeypatch):
    with schedules.use(None):  # no override (the suite sets one per test)
        monkeypatch.setenv(schedules.ENV_VAR, "random:9")
        with pytest.raises(ValueError, match=r"schedule random:9"):
            fails_in_block_1[2, 32](np.zeros(64, np.int32))
        monkeypatch.setenv(schedules.ENV_VAR, "reverse")
        with pytest.raises(ValueError, match=r"schedule reverse\b"):
            fails_in_block_1[2, 32](np.zeros(64, np.int32))
        monkeypatch.delenv(schedules.ENV_VAR)
        assert schedules.current() == schedules.FORWARD


def test_simulator_reexports_the_race_error():
    assert simulator.SimulatorRace is SimulatorRace
