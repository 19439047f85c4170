"""megakernel.testing.ptx_check: proof that the checker catches float64, local memory and spills.

The kernels below are compiled for sm_90 in a subprocess with the simulator off (this test
run has it on), through the same ``PTX_SIGNATURES`` convention kernel modules use.  The
subprocess runs once for the whole file.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
from numba import config, cuda
from numba.cuda import float32, int32, uint32

from megakernel import device as D
from megakernel.testing import ptx_check

# ----------------------------------------------------------------------------------------
# Sample kernels: two dirty on purpose, the others must be clean
# ----------------------------------------------------------------------------------------


@cuda.jit
def f64_literal(x, out):
    i = cuda.grid(1)
    out[i] = x[i] * 0.5 + 1.0 / math.sqrt(x[i])  # Python floats: float64 arithmetic


@cuda.jit
def local_array(x, out, k):
    i = cuda.grid(1)
    tmp = cuda.local.array(16, float32)
    for j in range(16):
        tmp[j] = x[i] + float32(j)
    out[i] = tmp[k % 16]  # index known only at run time: the array lives in local memory


@cuda.jit
def matvec_bf16(w, x, y):
    """Warp per row: y = W x, W as bf16 pairs in uint32 words [rows, cols / 2]."""
    lane = cuda.threadIdx.x % 32
    row = cuda.grid(1) // 32
    if row >= y.shape[0]:
        return
    wrow = w[row]
    acc = float32(0)
    for v in range(lane, wrow.shape[0] // 4, 32):
        a, b, c, d = D.load_u32x4(wrow, v)
        x0, x1, x2, x3 = D.load_f32x4(x, 2 * v)
        x4, x5, x6, x7 = D.load_f32x4(x, 2 * v + 1)
        acc += D.bf16_lo(a) * x0 + D.bf16_hi(a) * x1 + D.bf16_lo(b) * x2 + D.bf16_hi(b) * x3
        acc += D.bf16_lo(c) * x4 + D.bf16_hi(c) * x5 + D.bf16_lo(d) * x6 + D.bf16_hi(d) * x7
    acc = D.warp_sum(acc)
    if lane == 0:
        y[row] = acc


@cuda.jit
def every_device_helper(x, w, out, idx):
    i = cuda.grid(1)
    v = x[i]
    scratch = cuda.shared.array(32, float32)
    s = D.silu(v) + D.sigmoid(v) + D.softplus(v) + D.rsqrt(v) + D.fast_sigmoid(v)
    s += D.fast_exp(v) + D.warp_max(v) + D.block_sum(v, scratch) + D.block_max(v, scratch)
    m, j = D.warp_argmax(v, int32(i))
    a, b = D.load_u32x2(w, i)
    s += D.bf16_to_f32(a) + D.bits_to_f32(D.f32_to_bf16_bits(v) << uint32(16)) + m
    out[i] = s
    idx[i] = j + int32(D.f32_to_bits(s) & uint32(1)) + int32(b & uint32(1))


@cuda.jit
def grid_barrier(a):
    grid = cuda.cg.this_grid()
    a[cuda.grid(1)] = 1
    grid.sync()
    a[0] += 1


@cuda.jit
def spiller(x, out):
    # 16 float64 accumulators live across a loop; launch bounds of 1024 threads x 2 blocks
    # per SM cap the kernel at 32 registers, so ptxas must spill.
    i = cuda.grid(1)
    n = x.shape[0]
    a0, a1, a2, a3 = x[i % n], x[(i + 1) % n], x[(i + 2) % n], x[(i + 3) % n]
    a4, a5, a6, a7 = x[(i + 4) % n], x[(i + 5) % n], x[(i + 6) % n], x[(i + 7) % n]
    a8, a9, a10, a11 = x[(i + 8) % n], x[(i + 9) % n], x[(i + 10) % n], x[(i + 11) % n]
    a12, a13, a14, a15 = x[(i + 12) % n], x[(i + 13) % n], x[(i + 14) % n], x[(i + 15) % n]
    for k in range(n):
        y = x[k]
        a0, a1, a2, a3 = a0 * y + a1, a1 * y + a2, a2 * y + a3, a3 * y + a4
        a4, a5, a6, a7 = a4 * y + a5, a5 * y + a6, a6 * y + a7, a7 * y + a8
        a8, a9, a10, a11 = a8 * y + a9, a9 * y + a10, a10 * y + a11, a11 * y + a12
        a12, a13, a14, a15 = a12 * y + a13, a13 * y + a14, a14 * y + a15, a15 * y + a0
    out[i] = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8 + a9 + a10 + a11 + a12 + a13 + a14 + a15


PTX_SIGNATURES = {
    "f64_literal": ["void(float32[::1], float32[::1])"],
    "local_array": ["void(float32[::1], float32[::1], int32)"],
    "matvec_bf16": ["void(uint32[:, ::1], float32[::1], float32[::1])"],
    "every_device_helper": ["void(float32[::1], int32[::1], float32[::1], int32[::1])"],
    "grid_barrier": ["void(int32[::1])"],
    "spiller": ["void(float64[::1], float64[::1])"],
}
PTX_CHECK_OPTIONS = {"spiller": {"launch_bounds": (1024, 2), "allow_f64": True}}


# ----------------------------------------------------------------------------------------
# One subprocess for the file
# ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checked():
    # In this (simulator) process the check runs in a subprocess with the simulator off.
    with pytest.raises(AssertionError) as err:
        ptx_check.check_module_kernels(__file__, print_table=False)
    reports = {r.name: r for r in err.value.reports}
    return reports, str(err.value)


def needs_assembler(rep):
    if rep.registers is None:
        pytest.skip(f"no PTX assembler here: {rep.assembler}")


def test_float64_literal_is_caught(checked):
    reports, message = checked
    rep = reports["f64_literal"]
    assert rep.f64_lines and any(".f64" in line for line in rep.f64_lines)
    assert "float64" in rep.problems[0]
    assert "kernel f64_literal[" in message and "cvt.f64.f32" in message


def test_runtime_indexed_local_array_is_caught(checked):
    reports, message = checked
    rep = reports["local_array"]
    assert any("ld.local" in line for line in rep.local_lines)
    assert not rep.f64_lines
    assert "kernel local_array[" in message and "local-memory" in message


def test_clean_matvec_passes_with_vector_loads_and_shuffles(checked):
    reports, message = checked
    rep = reports["matvec_bf16"]
    assert rep.problems == [], rep.problems
    ptx = rep.ptx
    assert "ld.global.v4.u32" in ptx or "ld.global.nc.v4.u32" in ptx
    assert "ld.global.v4.f32" in ptx or "ld.global.nc.v4.f32" in ptx
    assert "shfl.sync.bfly" in ptx
    assert "kernel matvec_bf16[" not in message
    needs_assembler(rep)
    assert rep.registers > 0 and rep.spill_store_bytes == 0 == rep.spill_load_bytes


def test_device_helpers_compile_without_float64_or_local_memory(checked):
    reports, _ = checked
    rep = reports["every_device_helper"]
    assert rep.problems == [], rep.problems
    assert "shfl.sync" in rep.ptx and "bar.sync" in rep.ptx
    assert "ld.global.v2.u32" in rep.ptx or "ld.global.nc.v2.u32" in rep.ptx


def test_grid_barrier_kernel_assembles(checked):
    reports, _ = checked
    rep = reports["grid_barrier"]
    assert rep.problems == [], rep.problems
    needs_assembler(rep)  # linked against the device runtime (cudadevrt)
    assert rep.registers > 0


def test_register_spills_are_caught(checked):
    reports, message = checked
    rep = reports["spiller"]
    needs_assembler(rep)
    assert rep.registers <= 32
    assert rep.spill_store_bytes > 0 and rep.spill_load_bytes > 0
    assert "register spills" in rep.problems[0] and "kernel spiller[" in message


def test_table_lists_every_kernel(checked):
    _, message = checked
    for name in PTX_SIGNATURES:
        assert name in message
    assert "regs" in message and "spill st/ld" in message


# ----------------------------------------------------------------------------------------
# The pieces, without compiling
# ----------------------------------------------------------------------------------------

SAMPLE_PTX = """
.visible .entry k(
\t.param .u64 k_param_0
)
{
\t.local .align 4 .b8 \t__local_depot0[8];
\t.reg .f64 \t%fd<3>;
\tmov.u64 \t%SPL, __local_depot0;
\tcvt.f64.f32 \t%fd1, %f1;  // comment .f64
\tadd.f32 \t%f2, %f1, %f1;
\tst.local.f32 \t[%rd1], %f2;
\tsetp.gt.f64 \t%p1, %fd1, 0d3FE0000000000000;
\tret;
}
"""

SAMPLE_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'k' for 'sm_90'
ptxas info    : Function properties for k
ptxas         .     24 bytes stack frame, 16 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers
info    : used 40 registers, 24 stack, 0 bytes lmem
"""


def test_ptx_scanners():
    assert ptx_check.find_f64(SAMPLE_PTX) == [
        "cvt.f64.f32 \t%fd1, %f1;",
        "setp.gt.f64 \t%p1, %fd1, 0d3FE0000000000000;",
    ]
    local = ptx_check.find_local(SAMPLE_PTX)
    assert len(local) == 3 and local[2].startswith("st.local")
    expect = {
        "k": {"registers": 40, "stack_bytes": 24, "spill_store_bytes": 16, "spill_load_bytes": 12}
    }
    assert ptx_check.parse_ptxas_log(SAMPLE_LOG) == expect
    # the ptxas command line prints the frame line without the "ptxas" prefix
    cli_log = SAMPLE_LOG.replace("ptxas         .     24 bytes", "    24 bytes")
    assert ptx_check.parse_ptxas_log(cli_log) == expect


def test_check_ptx_messages_and_options():
    with pytest.raises(AssertionError, match=r"kernel mykernel\[\]: 2 float64"):
        ptx_check.check_ptx(SAMPLE_PTX, "mykernel", assemble_ptx=False)
    rep = ptx_check.check_ptx(
        SAMPLE_PTX, "mykernel", allow_f64=True, allow_local=True, assemble_ptx=False
    )
    assert rep.ok and rep.registers is None and len(rep.f64_lines) == 2
    table = ptx_check.format_table([rep])
    assert "mykernel" in table and "n/a" in table and "ok" in table


def test_compiling_needs_the_simulator_off():
    if not config.ENABLE_CUDASIM:
        pytest.skip("only meaningful in the simulator process")
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM=0"):
        ptx_check.compile_ptx_sm90(matvec_bf16, PTX_SIGNATURES["matvec_bf16"][0])


_SQUARES = """
mul.f32 %f9, %f5, %f5;
fma.rn.f32 %f10, %f6, %f6, %f9;
fma.rn.f32 %f11, %f7, %f7, %f10;
fma.rn.f32 %f12, %f8, %f8, %f11;
"""
_STAGING = "".join(f"add.f32 %f{21 + k}, %f{1 + k}, 0f3F800000;\nmul.f32 %f{31 + k}, %f{21 + k}, %f{5 + k};\n"
                   f"st.global.f32 [%rd9{'+' + str(4 * k) if k else ''}], %f{31 + k};\n" for k in range(4))


def test_square_order_reads_the_chain_by_the_staging_stores():
    """``norm_contexts.square_order``: h's values numbered by the store they feed; the chain read in fma order,
    whichever value the plain product squares; no chain is an error, not an empty answer."""
    from megakernel.testing.norm_contexts import square_order

    assert square_order(_STAGING + _SQUARES) == [0, 1, 2, 3]
    swapped = _SQUARES.replace("%f5, %f5", "%fA, %fA").replace("%f6, %f6", "%f5, %f5").replace("%fA, %fA", "%f6, %f6")
    assert square_order(_STAGING + swapped) == [1, 0, 2, 3]
    with pytest.raises(ValueError, match="no chain of four squares"):
        square_order(_STAGING)


@pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="checks from the simulator's test run, as CI has it")
def test_the_norm_staging_rounds_alike_in_every_context():
    """The RMSNorm staging (``fused_matvec.stage_norm4``) inlined into each of its callers and linked through LTO
    for sm_90a, as a launch on an H100 does: the squares' sum must be the same chain of fmas in every context
    (versions and build options that use different callers are held to each other's bits). Left as
    ``h0*h0 + h1*h1 + ...``, LTO contracted a different product beside ``ll_wait4``."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-m", "megakernel.testing.norm_contexts"], capture_output=True, text=True,
                       env=env, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-2000:]
    orders = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(orders) == 4 and len({tuple(o) for o in orders.values()}) == 1, orders
