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
thread), capped by the config's ``max_position_embeddings``; pass ``max_context=`` for longer contexts. In the
simulator a kernel stage refuses a config above ``SIMULATOR_BUDGET`` (e.g. the 0.8B model: hours per token) before
reading any weights.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .launch import SIMULATOR, kernel_device

STAGES = ("reference", "layered", "persistent")
KERNEL_STAGES = ("layered", "persistent")
DEFAULT_MAX_CONTEXT = 4096
SIMULATOR_MAX_CONTEXT = 128
# In the simulator every CUDA thread is a Python thread: a tiny config decodes a token in seconds, the 0.8B model
# would take hours. A kernel stage refuses a config above these sizes at once (before any weights are read).
SIMULATOR_BUDGET = {
    "hidden_size": 256, "intermediate_size": 1024, "vocab_size": 8192, "num_hidden_layers": 16, "head_dim": 128,
    "num_attention_heads": 16, "linear_num_value_heads": 16, "linear_key_head_dim": 64, "linear_value_head_dim": 64,
}


class UnknownStageError(ValueError):
    """A stage name that is not one of ``STAGES``."""


def check_stage(stage: str) -> str:
    if stage not in STAGES:
        raise UnknownStageError(f"unknown stage {stage!r}: choose one of {', '.join(STAGES)}")
    return stage


def check_simulator_budget(config) -> None:
    """SimulatorLimitError naming the first field of ``config`` above ``SIMULATOR_BUDGET``."""
    from .testing.simulator import SimulatorLimitError

    for name, limit in SIMULATOR_BUDGET.items():
        value = getattr(config, name)
        if value > limit:
            raise SimulatorLimitError(
                f"{name} = {value} is too big for the kernel stages in Numba's CUDA simulator (at most {limit}: it "
                "runs one Python thread per CUDA thread, so this model would take hours per token); use a tiny "
                "config (reference.Qwen35Config.tiny(); python -m megakernel.compare --tiny), or a GPU without "
                "NUMBA_ENABLE_CUDASIM")


def default_max_context(config) -> int:
    cap = SIMULATOR_MAX_CONTEXT if SIMULATOR else DEFAULT_MAX_CONTEXT
    return min(cap, config.max_position_embeddings)


def load(path: str | Path, stage: str = "layered", *, max_context: int | None = None, version: int | None = None,
         keep_fp32: bool = True, prefill_mode: str | None = None, options: dict | None = None):
    """Load a checkpoint directory for one stage (see the module docstring). ``max_context``: KV-cache capacity
    of the kernel stages (default: ``default_max_context(config)``); ``version``: the persistent kernel's version
    (default: the fastest that passes its tests); ``keep_fp32``: keep the checkpoint's fp32 ``A_log`` and DeltaNet
    norm weight exact (transformers rounds them to bf16); ``prefill_mode``: how a kernel stage prefills ("bf16",
    the default: ``megakernel.prefill``; "fp32": the same in fp32; "reference": the reference model's prefill
    copied into the kernel layout); ``options``: the persistent kernel's build options on top of its version's
    (the measured variants, ``megakernel.persistent.v2.OPTIONS``; e.g. ``{"producer": True}``)."""
    from reference.model import load_model

    check_stage(stage)
    if version is not None and stage != "persistent":
        raise ValueError(f"version= applies to stage 'persistent' only, not {stage!r}")
    if options and stage != "persistent":
        raise ValueError(f"options= applies to stage 'persistent' only, not {stage!r}")
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
        if SIMULATOR:
            from reference.config import Qwen35Config

            check_simulator_budget(Qwen35Config.from_pretrained(path))
    ref = load_model(path, device=device, dtype=torch.float32, weights_dtype=torch.bfloat16,
                     cache_dtype=torch.bfloat16, keep_fp32=keep_fp32)
    if stage == "reference":
        return ref
    max_context = max_context or default_max_context(ref.config)
    if stage == "layered":
        from .layered import LayeredDecoder

        return LayeredDecoder(ref, max_context=max_context, **kernel_options)
    from .persistent import PersistentDecoder

    if options:
        kernel_options["options"] = dict(options)
    return PersistentDecoder(ref, max_context=max_context, version=version, **kernel_options)


__all__ = ["STAGES", "KERNEL_STAGES", "DEFAULT_MAX_CONTEXT", "SIMULATOR_MAX_CONTEXT", "SIMULATOR_BUDGET",
           "UnknownStageError", "check_stage", "check_simulator_budget", "default_max_context", "load"]
