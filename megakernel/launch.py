"""Where kernels run, and how torch tensors become kernel arguments.

Every stage keeps its buffers as torch tensors (so PyTorch code, the reference and the tests can read them) and
hands them to Numba kernels as views:

* on a GPU, a CUDA tensor is wrapped once with ``numba.cuda.as_cuda_array`` (zero copy, through
  ``__cuda_array_interface__``); launching with the wrapped arrays avoids re-typing torch tensors at every call;
* in Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), a CPU tensor is viewed as a NumPy array (zero copy),
  so a kernel that writes its output writes the torch tensor.

bf16 tensors cannot be passed as such (their array-interface type ``|V2`` is untyped): :func:`words` views a bf16
tensor as int32 words, two bf16 per word (element 2i in the low half), which kernels decode with
``megakernel.device.bf16_lo`` / ``bf16_hi``. :func:`halves` views it as int16 (one bf16 per element).
"""

from __future__ import annotations

import numba
import torch

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)


class NoGPUError(RuntimeError):
    """A GPU path was requested on a machine without a usable CUDA GPU."""


def gpu_available() -> bool:
    """True when kernels run on a real GPU (not the simulator) and one is present."""
    if SIMULATOR:
        return False
    from numba import cuda

    try:
        return bool(cuda.is_available()) and torch.cuda.is_available()
    except Exception:  # noqa: BLE001 (a broken driver counts as no GPU)
        return False


def timing_problem(tool: str, simulator_tests: str = "") -> str | None:
    """Why this machine cannot run ``tool``, a command that times the GPU, as one line; None if it can. In the
    simulator its times would be the CPU's; without a usable GPU it cannot run at all. ``simulator_tests``: the
    command that checks the tool's kernels on the CPU instead, named in both lines."""
    hint = f" (its kernels' correctness runs in the simulator: {simulator_tests})" if simulator_tests else ""
    if SIMULATOR:
        return (f"NUMBA_ENABLE_CUDASIM is set, so the kernels would run in the CPU simulator; unset it to run {tool} "
                f"on the GPU{hint}")
    if not gpu_available():
        return f"{tool} times the GPU and needs a CUDA GPU (none is usable here){hint}"
    return None


def kernel_device() -> torch.device:
    """The torch device whose tensors kernels can use: 'cuda' on a GPU, 'cpu' in the simulator."""
    if SIMULATOR:
        return torch.device("cpu")
    require_gpu()
    return torch.device("cuda")


def require_gpu(what: str = "the Numba CUDA kernels") -> None:
    if SIMULATOR or gpu_available():
        return
    raise NoGPUError(
        f"{what} need a CUDA GPU and none is usable here (numba.cuda.is_available() / torch.cuda.is_available() "
        "is False). On a CPU-only machine run them in Numba's CUDA simulator instead: set NUMBA_ENABLE_CUDASIM=1 "
        "before Python starts (as `make test` does) and use a tiny config (reference.Qwen35Config.tiny())."
    )


def words(t: torch.Tensor) -> torch.Tensor:
    """bf16 [..., K] -> int32 [..., K/2] (two bf16 per word; K must be even and the last dim contiguous)."""
    if t.dtype != torch.bfloat16:
        raise TypeError(f"expected a bf16 tensor, got {t.dtype}")
    if t.shape[-1] % 2:
        raise ValueError(f"last dim {t.shape[-1]} must be even to view bf16 pairs as 32-bit words")
    return t.contiguous().view(torch.int32)


def halves(t: torch.Tensor) -> torch.Tensor:
    """bf16 -> int16 view with the same shape (one bf16 bit pattern per element)."""
    if t.dtype != torch.bfloat16:
        raise TypeError(f"expected a bf16 tensor, got {t.dtype}")
    return t.view(torch.int16)


def as_kernel_array(t: torch.Tensor):
    """A zero-copy kernel argument for a torch tensor (see the module docstring). bf16 is refused: use
    :func:`words` or :func:`halves` first."""
    if t.dtype == torch.bfloat16:
        raise TypeError("bf16 tensors cannot be kernel arguments: pass words(t) or halves(t)")
    if SIMULATOR:
        if t.device.type != "cpu":
            raise ValueError("in the CUDA simulator kernel arguments must be CPU tensors")
        return t.detach().numpy()
    if t.device.type != "cuda":
        raise ValueError(f"kernel arguments must be CUDA tensors, got a tensor on {t.device}")
    from numba import cuda

    return cuda.as_cuda_array(t.detach())


def launch_stream():
    """The stream to launch on: torch's current CUDA stream (so kernels order with torch ops and can be captured
    into a CUDA graph), or 0 in the simulator (which has no external streams)."""
    if SIMULATOR:
        return 0
    from numba import cuda

    return cuda.external_stream(torch.cuda.current_stream().cuda_stream)


_STREAMS: dict = {}


def current_stream():
    """(key, stream) for torch's current CUDA stream: ``key`` identifies it (cache launch configurations by it)
    and ``stream`` is a Numba handle on it, made once per torch stream (``cuda.external_stream`` per launch costs
    more than the launch). Inside ``torch.cuda.graph(...)`` the current stream is the capture stream, so kernels
    launched on it are recorded into the graph. (0, 0) in the simulator."""
    if SIMULATOR:
        return 0, 0
    key = torch.cuda.current_stream().cuda_stream
    s = _STREAMS.get(key)
    if s is None:
        s = _STREAMS[key] = launch_stream()
    return key, s


def configured(kernel, grid, block, stream, shared_bytes: int = 0):
    """A reusable launcher ``run(*args)`` for ``kernel`` on ``grid`` x ``block``. On the GPU
    ``kernel[grid, block, stream]`` is an independent launch configuration, made once; the simulator's
    configures the kernel object itself (the last configuration wins), so there it is redone at every call."""
    if SIMULATOR:
        return lambda *args: kernel[grid, block, stream, shared_bytes](*args)
    return kernel[grid, block, stream, shared_bytes]


def allow_dynamic_shared(compiled_kernel, nbytes: int) -> None:
    """Let a compiled Numba kernel use ``nbytes`` of dynamic shared memory (a block gets 48 KB unless the kernel
    opts in, and Numba has no API for it), and prefer shared memory over L1 in the SM's split. GPU only."""
    if SIMULATOR or nbytes <= 48 * 1024:
        return
    from numba.cuda.cudadrv.driver import binding, driver

    cufunc = compiled_kernel._codelibrary.get_cufunc()
    attr = binding.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
    driver.cuKernelSetAttribute(attr, int(nbytes), cufunc.handle, cufunc.device.id)
    cufunc.set_shared_memory_carveout(100)


def synchronize() -> None:
    if not SIMULATOR and torch.cuda.is_available():
        torch.cuda.synchronize()


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill an output buffer with NaN (floats) or a sentinel (integers) so an element a kernel fails to write is
    caught by check(). Returns t."""
    if t.is_floating_point():
        return t.fill_(float("nan"))
    return t.fill_(-0x5A5A5A5A if t.dtype in (torch.int32, torch.int64) else -1)


__all__ = ["SIMULATOR", "NoGPUError", "gpu_available", "timing_problem", "kernel_device", "require_gpu", "words", "halves",
           "as_kernel_array", "launch_stream", "current_stream", "configured", "synchronize", "poison_",
           "allow_dynamic_shared"]
