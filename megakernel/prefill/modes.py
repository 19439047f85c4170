"""How a kernel stage (layered or persistent) fills its decode state from a prompt: ``PrefillModes``, one mixin
both stages use, so they prefill the same way.

``prefill_mode``: "bf16" (the default) runs :class:`megakernel.prefill.Prefill` with bf16 matrix products on tensor
cores and fp32 states, writing the kernel layout directly; "fp32" runs the same code in fp32 (its check twin);
"reference" runs the reference model on the stage's device and copies its states in (for comparisons of the
decode kernels, which then start from exactly the oracle's state).
"""

from __future__ import annotations

import torch

from reference.model import as_token_list
from reference.state import ContextTooLongError

from ..launch import kernel_device

PREFILL_MODES = ("bf16", "fp32", "reference")


def check_prefill_mode(mode: str) -> str:
    if mode not in PREFILL_MODES:
        raise ValueError(f"unknown prefill_mode {mode!r}: choose one of {', '.join(PREFILL_MODES)}")
    return mode


class PrefillModes:
    """The state a kernel stage decodes from, and how it is filled. Needs ``config``, ``device``, ``max_context``,
    ``reference``, ``weights`` (DeviceWeights), ``prefill_mode`` and a ``_prefills`` dict on the stage."""

    def _setup_stage(self, reference, max_context: int, prefill_mode: str) -> None:
        """What both kernel stages set up first: the config, the reference (the oracle in comparisons, and
        prefill_mode="reference"), the prefill mode, the kernel device and the KV-cache capacity."""
        self.config = reference.config
        self.reference = reference
        self.prefill_mode = check_prefill_mode(prefill_mode)
        self._prefills: dict = {}
        self.device = kernel_device()
        self.max_context = min(max_context, self.config.max_position_embeddings)

    def new_state(self, capacity: int | None = None):
        """An empty DeviceState of ``capacity`` positions (default: the stage's max_context)."""
        from ..layout import DeviceState

        capacity = capacity or self.max_context
        if capacity > self.max_context:
            raise ContextTooLongError(f"context too long: capacity {capacity} exceeds this decoder's max_context "
                                      f"{self.max_context}")
        return DeviceState(self.config, self.device, capacity)

    @torch.no_grad()
    def prefill(self, input_ids, state=None, last_only: bool = False, mode: str | None = None):
        """Fill ``state`` (replacing whatever it held) from the prompt. Returns (logits [T, V] fp32, or [1, V]
        with last_only, DeviceState). ``mode``: default ``self.prefill_mode`` (module docstring)."""
        mode = check_prefill_mode(mode or self.prefill_mode)
        ids = as_token_list(input_ids, self.config.vocab_size)
        state = state or self.new_state()
        if len(ids) > state.capacity:
            raise ContextTooLongError(f"context too long: a prompt of {len(ids)} tokens exceeds this decoder's "
                                      f"KV-cache capacity {state.capacity}")
        if mode == "reference":
            logits, ref_state = self.reference.prefill(ids, last_only=last_only)
            state.load_reference(ref_state)
            return logits, state
        logits = self.prefiller(mode)(ids, state, logits="last" if last_only else "all")
        return logits, state

    def prefiller(self, mode: str | None = None):
        """The :class:`megakernel.prefill.Prefill` behind ``prefill`` in mode "bf16" or "fp32" (made once)."""
        mode = check_prefill_mode(mode or self.prefill_mode)
        if mode == "reference":
            raise ValueError("prefill_mode 'reference' runs the reference model, not megakernel.prefill")
        if mode not in self._prefills:
            from .runner import Prefill

            self._prefills[mode] = Prefill(self.weights, dtype=torch.bfloat16 if mode == "bf16" else torch.float32)
        return self._prefills[mode]


__all__ = ["PREFILL_MODES", "PrefillModes", "check_prefill_mode"]
