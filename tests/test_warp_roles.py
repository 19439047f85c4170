"""The producer warp's mechanism (``megakernel.persistent.warp_roles``): the IR rewrite that narrows a kernel's
block barriers and block size to its consumer warps, the simulator's model of it, and the small probe kernel
(``megakernel.testing.warp_roles_probe``) that hands pages from a producer warp to consumer warps."""

import os
import subprocess
import sys

import numpy as np
import pytest
from numba import cuda

from megakernel.persistent import warp_roles

IR = """define void @k_consumers_64(i32* %a) {
  call void @"llvm.nvvm.barrier0"()
  %".7" = call i32 @"llvm.nvvm.read.ptx.sreg.ntid.x"(), !range !0
  call void @llvm.nvvm.barrier0()
  call void asm sideeffect "bar.sync 2;", ""()
  call void asm sideeffect "mbarrier.arrive.shared::cta.b64 _, [$0];", "r"(i32 %".7")
  %".8" = call i32 @"llvm.nvvm.read.ptx.sreg.nctaid.x"()
  ret void
}
declare void @"llvm.nvvm.barrier0"()
"""


def test_narrow_ir_rewrites_the_block_barriers_and_block_size():
    out = warp_roles.narrow_ir(IR, 64)
    body = out.split("\n", 1)[1]
    assert body.count('call void asm sideeffect "bar.sync 1, 64;", "~{memory}"() convergent nounwind') == 2
    assert "call void @" not in body.split("declare")[0]  # both spellings of the intrinsic's call
    assert '%".7" = add i32 64, 0' in body and "ntid.x" not in body
    assert '"bar.sync 2;"' in body and "mbarrier.arrive" in body and "nctaid.x" in body  # left as they are
    assert out.startswith("; megakernel.persistent.warp_roles")  # how the compiler hook knows it is done
    with pytest.raises(ValueError, match="does not narrow"):  # (so narrowing twice is refused)
        warp_roles.narrow_ir(out, 64)


def test_narrow_ir_refuses_what_it_cannot_narrow():
    with pytest.raises(ValueError, match="multiple of 32"):
        warp_roles.narrow_ir(IR, 48)
    with pytest.raises(ValueError, match="does not narrow"):
        warp_roles.narrow_ir(IR + '  call void asm sideeffect "bar.sync 1, 128;", ""()\n', 64)
    with pytest.raises(ValueError, match="does not narrow"):
        warp_roles.narrow_ir(IR + '  %".9" = call i32 @"llvm.nvvm.barrier0.popc"(i32 1)\n', 64)
    with pytest.raises(ValueError, match="does not narrow"):
        warp_roles.narrow_ir(IR + '  call void asm sideeffect "bar.arrive 0, 64;", ""()\n', 64)


def test_the_kernel_name_carries_the_consumer_count():
    name = warp_roles.consumer_name("persistent_v2", 256)
    assert warp_roles.consumers_of(name) == 256
    assert warp_roles.consumers_of(f"_ZN10megakernel10persistent2v227{name}B2v1E") == 256
    assert warp_roles.consumers_of("_ZN10megakernel10persistent2v213persistent_v2B2v1E") is None


@pytest.mark.parametrize("leave_out", [0, 1, 2])
def test_the_probe_hands_pages_from_the_producer_to_the_consumers(leave_out):
    """Two consumer warps sum 10 pages that the producer warp streams through 3 slots (with and without their
    per-page block barrier, with the producer's plain wait): every sum right, the consumers see a block of 64
    threads, and the race detector sees every refill ordered after the slot's last read."""
    from megakernel.testing import warp_roles_probe

    warp_roles_probe.run(threads=64, ring=3, page_words=128, pages=10, blocks=2, leave_out=leave_out)


def _every_thread_syncs(out):
    cuda.syncthreads()
    out[cuda.threadIdx.x] = cuda.blockDim.x


def test_a_producer_thread_may_not_call_syncthreads():
    """In the simulator a marked kernel's ``syncthreads`` belongs to its consumers: a producer thread calling it is
    an error (on the GPU it would wait for a barrier the consumers never fill)."""
    _every_thread_syncs.__name__ = _every_thread_syncs.__qualname__ = warp_roles.consumer_name("bad", 32)
    out = np.zeros(64, dtype=np.int32)
    with pytest.raises(RuntimeError, match="producer warp called syncthreads"):
        cuda.jit(_every_thread_syncs)[1, 64](out)


_PROBE_PTX = {  # how each of numba-cuda's paths makes the probe's PTX, as a launch on an H100 would
    "ptx": "from megakernel.testing.ptx_check import compile_ptx_sm90\n"
           "ptx = compile_ptx_sm90(w.build(256, 4, 1024), 'void(int32[::1], int32[:, ::1])')\n",
    "lto": "from megakernel.testing.ptx_check import compile_library_sm90a, CC_90A\n"
           "lib = compile_library_sm90a(w.build(256, 4, 1024), 'void(int32[::1], int32[:, ::1])')\n"
           "assert lib._lto and len(bytes(lib.get_cubin(CC_90A).code)) > 0\n"
           "ptx = lib.get_lto_ptx(CC_90A)\n",
}


@pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1", reason="checks the simulator's build")
@pytest.mark.parametrize("path", sorted(_PROBE_PTX))
def test_the_probe_builds_with_narrowed_barriers(path):
    """Without a GPU, through both of numba-cuda's paths to a cubin: Numba's PTX for sm_90, and LTO-IR linked for
    sm_90a (the default where nvJitLink is installed; the narrowing has to be in the IR both start from). The
    probe's PTX has the consumers' barrier (``bar.sync 1, 256``) and the block barrier of every thread
    (``bar.sync 2``), no ``bar.sync 0`` and no read of ``%ntid.x``."""
    code = ("import re\nfrom megakernel.testing import warp_roles_probe as w\n" + _PROBE_PTX[path]
            + "print(sorted(set(re.findall(r'bar\\.sync[^;]*;', ptx))), ptx.count('%ntid.x'))\n")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "['bar.sync 1, 256;', 'bar.sync 2;'] 0", r.stdout


def test_the_register_budgets_of_a_block_with_a_producer():
    """An SM hands out its 64 K registers in groups of 4 warps: 8 warps keep 255, 9 (8 consumers and a producer)
    get 168 like 12; with a producer warpgroup at 40 registers (``setmaxnreg``) 256 consumers can take 232."""
    assert warp_roles.block_registers(256) == 256 and warp_roles.block_registers(288) == 168
    assert warp_roles.block_registers(384) == 168
    assert warp_roles.register_split(256, 128, 40) == (168, 232)
