"""One entry point for every stage: ``megakernel.load(path, stage=...)``.

Every stage has the reference model's API (``prefill`` / ``decode_step`` / ``generate``, ``config``), so a notebook,
a test or a CLI switches stages by name:

===============  =================================================================================================
``reference``    the pure-PyTorch model (``reference.Qwen35Model``) computing in fp32 from the bf16 weights with a
                 bf16 KV cache: the arithmetic the kernels do, so it is their oracle (on the GPU when there is one)
``layered``      stage 2: one Numba kernel launch per op (``megakernel.layered.LayeredDecoder``)
``persistent``   stage 3: the persistent megakernel, one launch per token or per N tokens
                 (``megakernel.persistent.PersistentDecoder``; ``version=`` picks a numbered kernel version)
===============  =================================================================================================

Defaults work both on a GPU and in Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``): the KV-cache capacity is
``DEFAULT_MAX_CONTEXT`` on a GPU and ``SIMULATOR_MAX_CONTEXT`` in the simulator (where every CUDA thread is a Python
thread), capped by the config's ``max_position_embeddings``; pass ``max_context=`` for longer contexts.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .launch import SIMULATOR, kernel_device

STAGES = ("reference", "layered", "persistent")
DEFAULT_MAX_CONTEXT = 4096
SIMULATOR_MAX_CONTEXT = 128


class UnknownStageError(ValueError):
    """A stage name that is not one of ``STAGES``."""


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise UnknownStageError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)}")
    return stage


def default_max_context(config) -> int:
    cap = SIMULATOR_MAX_CONTEXT if SIMULATOR else DEFAULT_MAX_CONTEXT
    return min(cap, config.max_position_embeddings)


def load(path: str | Path, stage: str = "layered", *, max_context: int | None = None, version: int | None = None,
         keep_fp32: bool = True, prefill_mode: str | None = None):
    """Load a checkpoint directory for one stage (see the module docstring). ``max_context``: KV-cache capacity
    of the kernel stages (default: ``default_max_context(config)``); ``version``: the persistent kernel's version
    (default: the fastest that passes its tests); ``keep_fp32``: keep the checkpoint's fp32 ``A_log`` and DeltaNet
    norm weight exact (transformers rounds them to bf16); ``prefill_mode``: how a kernel stage prefills ("bf16",
    the default: ``megakernel.prefill``; "fp32": the same in fp32; "reference": the reference model's prefill
    copied into the kernel layout)."""
    from reference.model import load_model

    check_stage(stage)
    if version is not None and stage != "persistent":
        raise ValueError(f"version= applies to stage 'persistent' only, not {stage!r}")
    if prefill_mode is not None and stage == "reference":
        raise ValueError("prefill_mode= applies to the kernel stages (layered, persistent), not 'reference'")
    kernel_options = {} if prefill_mode is None else {"prefill_mode": prefill_mode}
    if max_context is not None and (isinstance(max_context, bool) or not isinstance(max_context, int)
                                    or max_context < 1):
        raise ValueError(f"max_context must be a positive integer, got {max_context!r}")
    if stage == "reference":
        device = "cuda" if torch.cuda.is_available() and not SIMULATOR else "cpu"
    else:
        device = kernel_device()  # refuses a GPU stage on a machine without one, saying how to simulate
    ref = load_model(path, device=device, dtype=torch.float32, weights_dtype=torch.bfloat16,
                     cache_dtype=torch.bfloat16, keep_fp32=keep_fp32)
    if stage == "reference":
        return ref
    max_context = max_context or default_max_context(ref.config)
    if stage == "layered":
        from .layered import LayeredDecoder

        return LayeredDecoder(ref, max_context=max_context, **kernel_options)
    from .persistent import PersistentDecoder

    return PersistentDecoder(ref, max_context=max_context, version=version, **kernel_options)


__all__ = ["STAGES", "DEFAULT_MAX_CONTEXT", "SIMULATOR_MAX_CONTEXT", "UnknownStageError", "check_stage",
           "default_max_context", "load"]
